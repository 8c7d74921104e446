"""The model-diagnostics bench's caption sensitivity: which caption words a model's denoising uses."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from vidpost.world.grammar import caption, parse_caption
from vidpost.world.render import render_scene

BENCH = Path(__file__).resolve().parents[2] / "bench"
CAPTIONS = [
    "a large red square moving right slowly on a black background",
    "a small green circle moving left quickly and a large blue triangle staying still on a white background",
]


@pytest.fixture
def diagnostics(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("model_diagnostics")


@pytest.mark.parametrize("attribute", ["colour", "shape", "size", "direction", "speed", "background"])
def test_each_attribute_is_stated_otherwise_and_nothing_else(diagnostics, attribute):
    spec = parse_caption(CAPTIONS[1])
    changed = diagnostics.stated_otherwise(spec, attribute)
    field = "motion" if attribute == "direction" else attribute
    if attribute == "background":
        assert changed.background != spec.background and changed.objects == spec.objects
        return
    assert changed.background == spec.background
    for before, after in zip(spec.objects, changed.objects, strict=True):
        kept = {f.name for f in dataclasses.fields(before)} - {field}
        assert all(getattr(before, f) == getattr(after, f) for f in kept)
        if getattr(before, field) in (None, "still"):  # unstated, or still: nothing to state otherwise
            assert getattr(after, field) == getattr(before, field)
        else:
            assert getattr(after, field) != getattr(before, field)
    assert len({o.colour for o in changed.objects}) == len(changed.objects)  # colours stay distinct
    assert parse_caption(caption(changed)) == changed  # a caption the grammar reads back


def test_an_attribute_the_caption_does_not_state_is_skipped(diagnostics):
    spec = parse_caption("a red square staying still")
    assert [a for a in diagnostics.ATTRIBUTES if diagnostics.stated_otherwise(spec, a) is not None] == [
        "colour",
        "shape",
    ]


class WordReader:
    """A stand-in model whose one-step x0 estimate is x_σ (1 - k), k = how often its caption says `word`:
    its denoising reads that word and no other."""

    def __init__(self, word: str | None):
        self.word = word

    def encode_prompts(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[float(t.split().count(self.word)) if self.word else 0.0] for t in texts])

    def velocity(self, x_s: torch.Tensor, sigma: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        scale = embeds[:, 0].reshape(-1, *[1] * (x_s.ndim - 1))
        return x_s * scale / sigma.reshape(-1, *[1] * (x_s.ndim - 1))


def test_sensitivity_is_zero_for_every_word_the_model_does_not_read(diagnostics):
    x0 = torch.from_numpy(np.stack([render_scene(parse_caption(c), np.random.default_rng(0)) for c in CAPTIONS]))
    x0 = x0.permute(0, 4, 1, 2, 3).float()  # (B, C, T, H, W), as the pixel codec gives it
    reader = WordReader("right")
    reads_direction = diagnostics.caption_sensitivity(reader, CAPTIONS, x0, reader.encode_prompts(CAPTIONS))
    for attribute in ("colour", "shape", "size", "speed", "background"):
        assert all(v == pytest.approx(0, abs=1e-6) for v in reads_direction[attribute].values()), attribute
    assert all(abs(v) > 0.01 for v in reads_direction["direction"].values())
    assert all(abs(v) > 0.01 for v in reads_direction["caption"].values())  # an empty caption says no "right" either
    deaf = WordReader(None)
    reads_nothing = diagnostics.caption_sensitivity(deaf, CAPTIONS, x0, deaf.encode_prompts(CAPTIONS))
    assert all(v == pytest.approx(0, abs=1e-6) for by_sigma in reads_nothing.values() for v in by_sigma.values())
