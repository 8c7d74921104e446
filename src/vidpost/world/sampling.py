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
from dataclasses import dataclass

import numpy as np

from vidpost.errors import VidpostError
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
MAX_DRAWS = 10_000  # a split that no draw in this many reaches is taken to be empty in the vocabulary


@dataclass(frozen=True)
class Vocabulary:
    """The values a random scene draws each attribute from; the defaults are the whole world, in the order that
    keeps every seed's scenes what they were before vocabularies existed."""

    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    sizes: tuple[str, ...] = tuple(SIZES)
    directions: tuple[str, ...] = tuple(DIRECTIONS)
    speeds: tuple[str, ...] = tuple(SPEEDS)
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)


WHOLE_WORLD = Vocabulary()


def split_of(spec: SceneSpec) -> str:
    if any((o.colour, o.shape) in HELDOUT_PAIRS for o in spec.objects):
        return "heldout"
    digest = hashlib.sha256(caption(spec).encode()).digest()
    return "eval" if int.from_bytes(digest[:4], "little") % EVAL_BUCKETS == 0 else "train"


def pick(rng: np.random.Generator, options) -> str:
    """One of `options` (a sequence or a dict's keys), uniformly."""
    options = list(options)
    return options[int(rng.integers(len(options)))]


def random_spec(
    rng: np.random.Generator,
    max_objects: int = MAX_OBJECTS,
    p_still: float = 0.2,
    vocabulary: Vocabulary = WHOLE_WORLD,
) -> SceneSpec:
    """A complete scene: 1..max_objects objects, distinct colours, every attribute uniform over `vocabulary`."""
    n = int(rng.integers(1, max_objects + 1))
    colours = rng.choice(list(vocabulary.colours), size=n, replace=False)
    objects = []
    for colour in colours:
        shape, size = pick(rng, vocabulary.shapes), pick(rng, vocabulary.sizes)
        if rng.random() < p_still:
            motion, speed = STILL, None
        else:
            motion, speed = pick(rng, vocabulary.directions), pick(rng, vocabulary.speeds)
        objects.append(ObjectSpec(str(colour), shape, size, motion, speed))
    return SceneSpec(tuple(objects), pick(rng, vocabulary.backgrounds))


def random_spec_in_split(
    rng: np.random.Generator,
    split: str,
    max_objects: int = MAX_OBJECTS,
    p_still: float = 0.2,
    vocabulary: Vocabulary = WHOLE_WORLD,
) -> SceneSpec:
    """Rejection-sample a scene until it belongs to `split` (acceptance >= ~10% in the whole world, so this is
    cheap); a clear error where a smaller vocabulary has no scene in the split (a red-square world has no
    held-out pair)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    for _ in range(MAX_DRAWS):
        spec = random_spec(rng, max_objects, p_still, vocabulary)
        if split_of(spec) == split:
            return spec
    raise VidpostError(
        f"no {split} scene in {MAX_DRAWS} draws from this world's vocabulary: widen it or use another split"
    )
