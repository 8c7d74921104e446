"""What an enhancer is trained on: (prompt, rewrite) pairs for SFT and user requests for GRPO, from ShapeWorld or
from a JSONL file.

    source = PairSource(PairsConfig())                          # ShapeWorld: terse prompt -> canonical caption
    source = PairSource(PairsConfig(pairs_file="pairs.jsonl"))  # {"prompt": ..., "rewrite": ...} per line
    source.pair(i)      # SFT pair i, a pure function of (seed, i): steps draw fresh pairs, a resume repeats none
    source.request(i)   # (what the user typed, what the video is scored against) for GRPO

ShapeWorld's pair i is clip i of the train split (its terse prompt and canonical caption), and its request i
is the same clip's terse prompt with the intent behind it. A file's last `eval_n` pairs are held out for
validation; the others are visited in a fresh seeded order every pass, and a request is a pair's prompt,
scored against itself (a file states no intent beyond the prompt).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
from pydantic import Field

from vidpost.config import Config
from vidpost.errors import VidpostError
from vidpost.evaluation import shapeworld_records
from vidpost.world.config import DatasetConfig, WorldConfig
from vidpost.world.dataset import prompt_record


class PairsConfig(Config):
    seed: int = Field(0, description="pair i is a pure function of (seed, i); steps draw fresh pairs, never repeated")
    pairs_file: str | None = Field(
        None, description="JSONL of {prompt, rewrite} pairs, the last eval_n held out; null: ShapeWorld's pairs"
    )
    max_prompt_tokens: int = Field(64, ge=4, description="terse prompts are cut to this many tokens")
    eval_n: int = Field(
        128, ge=1, description="eval-split terse prompts decoded at each validation (a file: pairs held out)"
    )
    eval_seed: int = Field(0, description="seed of the validation prompts")
    world: WorldConfig = Field(
        default_factory=WorldConfig, description="canvas and object count of the ShapeWorld scenes the prompts describe"
    )


def _record(seed: int, index: int, split: str, world: WorldConfig | None) -> dict:
    return prompt_record(DatasetConfig(n=index + 1, seed=seed, split=split, world=world or WorldConfig()), index)


def training_pair(seed: int, index: int, split: str = "train", world: WorldConfig | None = None) -> tuple[str, str]:
    """(terse prompt, canonical caption) of pair `index`: the texts of ShapeWorld clip `index` of that split."""
    record = _record(seed, index, split, world)
    return record["terse"], record["canonical"]


def user_prompt(seed: int, index: int, split: str = "train", world: WorldConfig | None = None) -> tuple[str, str]:
    """(terse prompt, intent caption) of ShapeWorld clip `index`: what a user types, and what they meant."""
    record = _record(seed, index, split, world)
    return record["terse"], record["intent"]


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """The (prompt, rewrite) pairs of a JSONL file; a line that is not such an object is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise VidpostError(f"data.pairs_file {path}: no such file")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise VidpostError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not all(
            isinstance(row.get(k), str) and row[k].strip() for k in ("prompt", "rewrite")
        ):
            raise VidpostError(f"{path}:{number}: expected an object with non-empty strings 'prompt' and 'rewrite'")
        pairs.append((row["prompt"], row["rewrite"]))
    return pairs


class PairSource:
    """SFT pairs, GRPO requests and the validation set of one `PairsConfig`."""

    def __init__(self, cfg: PairsConfig) -> None:
        self.cfg = cfg

    @property
    def shapeworld(self) -> bool:
        """Whether the pairs are ShapeWorld's: rewrites are canonical captions, requests carry intents."""
        return self.cfg.pairs_file is None

    @cached_property
    def _split(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        assert self.cfg.pairs_file is not None  # only file pairs are split (ShapeWorld's are drawn)
        pairs = read_pairs(self.cfg.pairs_file)
        if len(pairs) <= self.cfg.eval_n:
            raise VidpostError(
                f"data.pairs_file {self.cfg.pairs_file}: {len(pairs)} pairs leave none to train on "
                f"after the data.eval_n {self.cfg.eval_n} held out for validation"
            )
        return pairs[: -self.cfg.eval_n], pairs[-self.cfg.eval_n :]

    def _file_pair(self, index: int) -> tuple[str, str]:
        train = self._split[0]
        epoch, k = divmod(index, len(train))
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(train))
        return train[order[k]]

    def pair(self, index: int) -> tuple[str, str]:
        if self.shapeworld:
            return training_pair(self.cfg.seed, index, world=self.cfg.world)
        return self._file_pair(index)

    def request(self, index: int) -> tuple[str, str]:
        if self.shapeworld:
            return user_prompt(self.cfg.seed, index, world=self.cfg.world)
        prompt = self._file_pair(index)[0]
        return prompt, prompt

    def held_out(self) -> list[tuple[str, str]]:
        """Validation: ShapeWorld's eval-split (terse prompt, intent) pairs, or the file's held-out pairs."""
        if self.shapeworld:
            records = shapeworld_records("eval", self.cfg.eval_n, self.cfg.eval_seed, self.cfg.world)
            return [(r["terse"], r["intent"]) for r in records]
        return self._split[1]
