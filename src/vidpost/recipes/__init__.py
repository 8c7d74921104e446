"""Recipes own the control flow of a stage (pretrain, sft, ...); components own the maths."""
