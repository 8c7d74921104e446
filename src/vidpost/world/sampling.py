"""Random scenes and the prompt splits.

Splits (deterministic functions of the spec, so any spec's split can be checked):
- `heldout`: compositional; the scene has at least one object whose (colour, shape) pair is in
  HELDOUT_PAIRS. Those pairs never appear in `train` or `eval`, so a model is tested on attribute
  combinations it has never seen together.
- `eval`: no held-out pair, and the full canonical caption hashes into the eval bucket (1 in 10).
  Eval captions are therefore never train captions.
- `train`: everything else.
"""

from __future__ import annotations

import hashlib

import numpy as np

from vidpost.world.grammar import caption
from vidpost.world.spec import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    MAX_OBJECTS,
    SHAPES,
    SIZES,
    SPEEDS,
    STILL,
    ObjectSpec,
    SceneSpec,
)

SPLITS = ("train", "eval", "heldout")
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("green", "square"), ("blue", "circle"), ("cyan", "triangle")}
)
EVAL_BUCKETS = 10  # 1 in EVAL_BUCKETS non-held-out captions is an eval caption


def split_of(spec: SceneSpec) -> str:
    if any((o.colour, o.shape) in HELDOUT_PAIRS for o in spec.objects):
        return "heldout"
    digest = hashlib.sha256(caption(spec).encode()).digest()
    return "eval" if int.from_bytes(digest[:4], "little") % EVAL_BUCKETS == 0 else "train"


def pick(rng: np.random.Generator, options) -> str:
    """One of `options` (a sequence or a dict's keys), uniformly."""
    options = list(options)
    return options[int(rng.integers(len(options)))]


def random_spec(rng: np.random.Generator, max_objects: int = MAX_OBJECTS, p_still: float = 0.2) -> SceneSpec:
    """A complete scene: 1..max_objects objects, distinct colours, every attribute uniform."""
    n = int(rng.integers(1, max_objects + 1))
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    objects = []
    for colour in colours:
        shape, size = pick(rng, SHAPES), pick(rng, SIZES)
        if rng.random() < p_still:
            motion, speed = STILL, None
        else:
            motion, speed = pick(rng, DIRECTIONS), pick(rng, SPEEDS)
        objects.append(ObjectSpec(str(colour), shape, size, motion, speed))
    return SceneSpec(tuple(objects), pick(rng, BACKGROUNDS))


def random_spec_in_split(
    rng: np.random.Generator, split: str, max_objects: int = MAX_OBJECTS, p_still: float = 0.2
) -> SceneSpec:
    """Rejection-sample a scene until it belongs to `split` (acceptance >= ~10%, so this is cheap)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    while True:
        spec = random_spec(rng, max_objects, p_still)
        if split_of(spec) == split:
            return spec
