"""Shared across test folders: a random toy enhancer, and a "parrot" toy trained to write one fixed canonical caption."""

import logging

import pytest
import torch

from vidpost.enhance.toy import build_toy_model, build_toy_tokenizer, save_toy
from vidpost.recipes.enhance import sft_loss

PARROT_CAPTION = "a large red circle moving left slowly on a black background"
PARROT_PROMPTS = ["red ball going left", "a green box dropping, red triangle", "tiny teal disc", "white background",
                  "big blue wedge rising fast and a pink dot still"]


@pytest.fixture(autouse=True)
def _quiet_transformers():
    logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def parrot_caption():
    return PARROT_CAPTION


@pytest.fixture(scope="session")
def random_toy(tmp_path_factory):
    """An untrained toy enhancer folder: its rewrites are noise."""
    tokenizer = build_toy_tokenizer()
    return save_toy(build_toy_model(len(tokenizer), seed=1), tokenizer, tmp_path_factory.mktemp("random_toy"), {})


@pytest.fixture(scope="session")
def parrot_toy(tmp_path_factory):
    """A toy enhancer overfitted to answer every prompt with PARROT_CAPTION (a few seconds of SFT)."""
    tokenizer = build_toy_tokenizer()
    model = build_toy_model(len(tokenizer), hidden_size=32, num_layers=1, intermediate_size=64, seed=0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pairs = [(p, PARROT_CAPTION) for p in PARROT_PROMPTS]
    for _ in range(60):
        loss, _ = sft_loss(model, tokenizer, pairs, 64)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return save_toy(model.eval(), tokenizer, tmp_path_factory.mktemp("parrot_toy"), {"stage": "test"})
