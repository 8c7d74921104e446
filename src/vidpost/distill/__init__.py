"""Distillation maths: targets that make a few-step, one-pass student land where a guided teacher lands."""
