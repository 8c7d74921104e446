"""The prompts recipes train and validate on: files or ShapeWorld splits, and an enhancer's rewrites."""

import pytest

from vidpost.errors import VidpostError
from vidpost.evaluation import shapeworld_records
from vidpost.recipes.common import ValidationConfig
from vidpost.recipes.prompts import rewrite_prompts, validation_prompts


def test_rewrite_prompts_uses_the_enhancer_and_falls_back_per_prompt(parrot_toy, parrot_caption):
    prompts = ["red ball going left", "tiny teal disc"]
    assert rewrite_prompts(prompts, None) == (prompts, {})
    texts, metrics = rewrite_prompts(prompts, str(parrot_toy), "enhance/val/")
    assert texts == [parrot_caption] * 2
    assert metrics == {
        "enhance/val/prompts": 2,
        "enhance/val/rewritten": 2,
        "enhance/val/fallbacks": 0,
        "enhance/val/fallback_failed": 0,
        "enhance/val/fallback_empty": 0,
        "enhance/val/fallback_too_long": 0,
        "enhance/val/fallback_unparsable": 0,
        "enhance/val/fallback_contradicts": 0,
        "enhance/val/fallback_unsure": 0,
    }


def test_validation_prompts_come_from_a_file_or_a_shapeworld_split(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\na dog\na bird\n")
    assert validation_prompts(ValidationConfig(prompts_file=str(tmp_path / "p.txt"), n=2)) == (
        ["a cat", "a dog"],
        ["a cat", "a dog"],
        False,
    )
    asked, prompts, scorable = validation_prompts(ValidationConfig(n=3))
    assert scorable and asked == prompts and len(prompts) == 3 and all(p.endswith("background") for p in prompts)
    terse, intents, scorable = validation_prompts(ValidationConfig(n=3, wording="terse"))
    records = shapeworld_records("eval", 3)
    assert scorable and terse == [r["terse"] for r in records] and intents == [r["intent"] for r in records]
    assert all(len(t.split()) < len(c.split()) for t, c in zip(terse, prompts, strict=True))  # the same scenes, terser
    with pytest.raises(VidpostError, match="prompts file not found"):
        validation_prompts(ValidationConfig(prompts_file=str(tmp_path / "missing.txt")))
