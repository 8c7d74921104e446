"""The names of the logged series that recipes write and `vidpost report` plots, in one place.

A series is `group/name`. Recipes log the series the report plots under these constants, and CURVES lists,
per recipe, the ones its stage's report shows: a renamed series is renamed for both, and the pipeline test
checks that a tiny run of every stage logs each of its curves and that the report shows them.
"""

from __future__ import annotations

from typing import Final

TRAIN: Final = "train"  # a training step of sft, grpo and distill
VAL: Final = "val"  # sft's and distill's validation videos, scored
EVAL: Final = "eval"  # grpo's held-out evaluation videos, scored
REWARD: Final = "reward"  # grpo's rollouts: each reward's mean, and the weighted sum the advantages use
ENHANCE_SFT: Final = "sft"  # the enhancer's stage 1 (its validation too: sft/val_*)
ENHANCE_GRPO: Final = "grpo"  # the enhancer's stage 2 (grpo/val_*)


def series(group: str, name: str) -> str:
    return f"{group}/{name}"


TRAIN_LOSS: Final = series(TRAIN, "loss")
TRAIN_APPROX_KL: Final = series(TRAIN, "approx_kl")
REWARD_WEIGHTED: Final = series(REWARD, "weighted")
VAL_TOTAL: Final = series(VAL, "total")  # validation scores are `score_videos`' names under VAL or EVAL
VAL_QUALITY: Final = series(VAL, "quality")
VAL_MSE_TO_TEACHER: Final = series(VAL, "mse_to_teacher")
EVAL_TOTAL: Final = series(EVAL, "total")
EVAL_QUALITY: Final = series(EVAL, "quality")
ENHANCE_SFT_LOSS: Final = series(ENHANCE_SFT, "loss")
ENHANCE_SFT_VAL_INTENT: Final = series(ENHANCE_SFT, "val_intent")  # `rewrite_metrics`' intent, validated
ENHANCE_GRPO_REWARD: Final = series(ENHANCE_GRPO, "reward")
ENHANCE_GRPO_VAL_REWARD: Final = series(ENHANCE_GRPO, "val_reward")  # weighted as reward.weights, whatever they name

CURVES: Final[dict[str, tuple[str, ...]]] = {
    "sft": (TRAIN_LOSS, VAL_TOTAL, VAL_QUALITY),
    "grpo": (REWARD_WEIGHTED, EVAL_TOTAL, EVAL_QUALITY, TRAIN_APPROX_KL, TRAIN_LOSS),
    "enhance": (ENHANCE_SFT_LOSS, ENHANCE_SFT_VAL_INTENT, ENHANCE_GRPO_REWARD, ENHANCE_GRPO_VAL_REWARD),
    "distill": (TRAIN_LOSS, VAL_TOTAL, VAL_MSE_TO_TEACHER),
}
