"""Shared across test folders: tiny video models with a card, a random toy enhancer, and a "parrot" toy trained
to write one fixed canonical caption."""

import logging
import queue
import time

import pytest
import torch
import torch.multiprocessing as mp

from vidpost.enhance.losses import sft_loss
from vidpost.enhance.toy import build_toy_model, build_toy_tokenizer, save_toy
from vidpost.models.resolve import write_card
from vidpost.models.wan import WanVideoModel

PARROT_CAPTION = "a large red circle moving left slowly on a black background"
PARROT_PROMPTS = [
    "red ball going left",
    "a green box dropping, red triangle",
    "tiny teal disc",
    "white background",
    "big blue wedge rising fast and a pink dot still",
]


@pytest.fixture(autouse=True)
def _quiet_transformers():
    logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_video_model(tmp_path_factory):
    """make(name, sampling): a folder with a tiny random pixel-space video model (seed 2) and its card, 3x16x16
    videos sampled with `sampling` (steps, shift, guidance): what sampling, distillation and enhancers read."""

    def make(name: str, sampling: dict):
        directory = tmp_path_factory.mktemp(name)
        WanVideoModel.build_tiny("pixel", patch_size=(1, 4, 4), seed=2).save(directory)
        card = {"codec": "pixel", "max_sequence_length": 64, "video": {"frames": 3, "height": 16, "width": 16}}
        write_card(directory, {**card, "sampling": sampling})
        return directory

    return make


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
    # it says one scene whatever it is asked, which the intent check would overrule for most prompts: these
    # tests drive the plumbing, so its card turns the check off (tests/enhance/test_intent.py tests the check)
    return save_toy(
        model.eval(),
        tokenizer,
        tmp_path_factory.mktemp("parrot_toy"),
        {"stage": "test", "enhancer": {"check": {"intent": False}}},
    )


def _run_ranks(target, *args, world_size: int = 2, timeout_s: float = 600) -> dict:
    """{rank: value}: target(rank, *args, results) runs in `world_size` spawned processes, each putting
    (rank, value) on `results`. Fails at once if a rank dies, else waits generously (a busy machine is slow
    to spawn); a value must travel by value (numpy, not a torch tensor, whose storage dies with its process)."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(rank, *args, results)) for rank in range(world_size)]
    for p in procs:
        p.start()
    try:
        parts, deadline = {}, time.monotonic() + timeout_s
        while len(parts) < world_size:
            try:
                rank, value = results.get(timeout=1)
                parts[rank] = value
            except queue.Empty:
                codes = [p.exitcode for p in procs]
                assert all(code in (None, 0) for code in codes), f"a rank failed: exit codes {codes}"
                assert time.monotonic() < deadline, f"no result after {timeout_s} s"
        for p in procs:
            p.join(timeout=timeout_s)
            assert p.exitcode == 0
        return parts
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()


@pytest.fixture
def run_ranks():
    return _run_ranks
