"""The enhancer interface, and the check every rewrite passes before anyone uses it.

    enhancer = load_enhancer("shapeworld-enhancer")
    rewrites = enhancer.rewrite(["red ball going right fast"])   # same length and order as the prompts
    enhancer.counts.as_metrics()                                 # {"enhance/fallback_empty": 0, ...}

A backend only implements `generate`: raw texts, or None where it could not produce one (a server that is
down, a timeout). `rewrite` then falls back to the original prompt for every missing, empty, over-long or (for
ShapeWorld) unparsable rewrite, and (check.intent) for one that changes, adds to or drops what the prompt states
or whose prompt has words the check cannot read, and counts why, so that a run logs how often its enhancer
was overruled.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, fields

from vidpost.enhance.config import EnhancerConfig
from vidpost.enhance.intent import keeps_prompt
from vidpost.errors import CaptionError
from vidpost.world.grammar import parse_caption

log = logging.getLogger("vidpost")

FALLBACK_REASONS = ("failed", "empty", "too_long", "unparsable", "unsure", "contradicts")


@dataclass
class RewriteCounts:
    """How many prompts were rewritten, and how many fell back to the original prompt, by reason."""

    prompts: int = 0
    rewritten: int = 0
    failed: int = 0  # the backend produced nothing (server down, timeout, error)
    empty: int = 0  # only whitespace
    too_long: int = 0  # more words than check.max_words
    unparsable: int = 0  # not a canonical ShapeWorld caption (when check.shapeworld is on)
    unsure: int = 0  # the prompt has words the check cannot read, so it cannot tell what they state (check.intent)
    contradicts: int = 0  # an object added or missing, or a stated attribute changed (check.intent)

    @property
    def fallbacks(self) -> int:
        return sum(getattr(self, reason) for reason in FALLBACK_REASONS)

    def add(self, other: RewriteCounts) -> None:
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def as_metrics(self, prefix: str = "enhance/") -> dict[str, int]:
        """Counters for a run log: prompts, rewritten, fallbacks and one fallback_<reason> each."""
        return {
            f"{prefix}prompts": self.prompts,
            f"{prefix}rewritten": self.rewritten,
            f"{prefix}fallbacks": self.fallbacks,
            **{f"{prefix}fallback_{reason}": getattr(self, reason) for reason in FALLBACK_REASONS},
        }

    def summary(self) -> str:
        """'3 of 8 rewrites fell back to the prompt (2 unparsable, 1 empty)', or '8 prompts rewritten'."""
        if not self.fallbacks:
            return f"{self.rewritten} prompt{'s' * (self.rewritten != 1)} rewritten"
        reasons = ", ".join(f"{getattr(self, r)} {r.replace('_', ' ')}" for r in FALLBACK_REASONS if getattr(self, r))
        return f"{self.fallbacks} of {self.prompts} rewrites fell back to the prompt ({reasons})"


def normalise(text: str) -> str:
    """One line, single spaces: how a rewrite is compared, counted and written."""
    return " ".join(text.split())


def check_rewrite(rewrite: str | None, max_words: int, shapeworld: bool) -> str | None:
    """None if `rewrite` is usable, else why not: one of FALLBACK_REASONS."""
    if rewrite is None:
        return "failed"
    text = normalise(rewrite)
    if not text:
        return "empty"
    if len(text.split()) > max_words:
        return "too_long"
    if shapeworld:
        try:
            parse_caption(text)
        except CaptionError:
            return "unparsable"
    return None


class Enhancer(ABC):
    """Rewrites prompts for the video model. Subclasses implement `generate`; callers use `rewrite`."""

    def __init__(self, cfg: EnhancerConfig, name: str) -> None:
        self.cfg, self.name = cfg, name
        self.counts = RewriteCounts()

    @abstractmethod
    def generate(self, prompts: list[str]) -> list[str | None]:
        """One raw rewrite per prompt, in order; None where the backend could not produce one."""

    def rewrite(self, prompts: Sequence[str]) -> list[str]:
        """Validated rewrites, one per prompt in order; a rewrite that fails the check is the prompt itself."""
        prompts = list(prompts)
        if not prompts:
            return []
        raw = self.generate(prompts)
        if len(raw) != len(prompts):
            raise RuntimeError(f"enhancer {self.name} returned {len(raw)} rewrites for {len(prompts)} prompts")
        batch = RewriteCounts(prompts=len(prompts))
        out = []
        for prompt, text in zip(prompts, raw, strict=True):
            reason = check_rewrite(text, self.cfg.check.max_words, self.cfg.checks_shapeworld)
            if reason is None:
                assert text is not None  # check_rewrite fails a missing rewrite
                rewrite = normalise(text)
                if self.cfg.checks_intent:
                    reason = keeps_prompt(prompt, rewrite)
                if reason is None:
                    batch.rewritten += 1
                    out.append(rewrite)
                    continue
            setattr(batch, reason, getattr(batch, reason) + 1)
            log.debug("enhancer %s: %s rewrite of %r; keeping the prompt", self.name, reason, prompt)
            out.append(prompt)
        if batch.fallbacks:
            log.warning("enhancer %s: %s", self.name, batch.summary())
        self.counts.add(batch)
        return out
