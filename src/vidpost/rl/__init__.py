"""Reinforcement learning pieces of GRPO: step strategies, rollouts, advantages and the policy loss."""
