"""What a ShapeWorld prompt states, and whether a rewrite keeps it: the check that keeps an enhancer from changing,
adding to or dropping anything the user said.

    read_prompt("crimson orb drifting left sluggishly")   # Reading(intent=<red circle, left, slowly>, unknown=())
    keeps_prompt("red ball going left", "a large red circle moving right slowly on a black background")
    # -> "contradicts": the user said left

`read_prompt` reads a terse prompt word by word with the words ShapeWorld's terse prompts use (world/prompts.py)
and a list of everyday synonyms of them (crimson, orb, sluggishly, motionless, ...): the intent it states,
and the words it could not read. `keeps_prompt` compares a rewrite (a canonical caption) with that reading: a
rewrite of a prompt with unread words is `unsure` (an unread word may state what the rewrite changed), one that
misses an object, adds one or changes a stated attribute `contradicts`. `normalised_prompt` writes a fully read
prompt back in the training words, so an enhancer that never saw a synonym still reads what it says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from vidpost.errors import CaptionError
from vidpost.world.grammar import parse_caption
from vidpost.world.prompts import (
    COLOUR_WORDS,
    SHAPE_WORDS,
    SIZE_WORDS,
    SPEED_WORDS,
    terse_text,
)
from vidpost.world.spec import BACKGROUNDS, DIRECTIONS, STILL, ObjectSpec, SceneSpec

# Everyday words for ShapeWorld's attributes beyond those its terse prompts use (colours by nearest hue).
SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "colour": {
        "red": ("crimson", "scarlet", "ruby", "cherry"),
        "green": ("lime", "emerald", "grassy"),
        "blue": ("azure", "cobalt", "sapphire"),
        "yellow": ("golden", "lemon", "amber"),
        "magenta": ("fuchsia", "purple", "violet", "rose"),
        "cyan": ("turquoise", "aquamarine"),
    },
    "shape": {
        "circle": ("orb", "sphere", "round", "ring", "blob"),
        "square": ("cube", "tile", "rectangle"),
        "triangle": ("pyramid", "arrowhead", "cone"),
    },
    "size": {
        "small": ("mini", "teeny", "minuscule", "petite", "smaller"),
        "large": ("giant", "massive", "enormous", "bigger", "jumbo"),
    },
    "motion": {
        "left": ("leftward", "leftwards", "westward"),
        "right": ("rightward", "rightwards", "eastward"),
        "up": ("ascending", "climbing", "upward", "upwards", "rises", "lifting"),
        "down": ("descending", "plunging", "downward", "downwards", "falls", "tumbling"),
        STILL: ("motionless", "stationary", "frozen", "resting", "idle", "unmoving"),
    },
    "speed": {
        "slowly": ("sluggishly", "sluggish", "leisurely", "lazily", "unhurried", "crawling"),
        "quickly": ("rapidly", "swiftly", "speedily", "briskly", "rapid", "swift", "zooming"),
    },
    "background": {"gray": ("grey",)},
}
# Words that state nothing about a scene.
FILLERS = frozenset(
    "a an the and with of on in to at is are its their both all them none moving going heading "
    "drifting floating not standing background backdrop please make show me video clip scene "
    "cute nice one".split()
)


def _lexicon() -> dict[str, tuple[str, str]]:
    """word -> (attribute, value): the terse prompts' words, the canonical words and SYNONYMS."""
    words: dict[str, tuple[str, str]] = {}
    tables = {"colour": COLOUR_WORDS, "shape": SHAPE_WORDS, "size": SIZE_WORDS, "speed": SPEED_WORDS}
    for attribute, table in tables.items():
        for value, said in table.items():
            for word in (value, *said):
                words[word] = (attribute, value)
    for direction in DIRECTIONS:
        words[direction] = ("motion", direction)
    words.update(
        {
            "rising": ("motion", "up"),
            "falling": ("motion", "down"),
            "dropping": ("motion", "down"),
            "sinking": ("motion", "down"),
            "still": ("motion", STILL),
            "static": ("motion", STILL),
        }
    )
    for background in BACKGROUNDS:
        words[background] = ("background", background)
    for attribute, synonyms in SYNONYMS.items():
        for value, synonyms_of_value in synonyms.items():
            for word in synonyms_of_value:
                words[word] = (attribute, value)
    return words


LEXICON = _lexicon()
_ALL_STILL = re.compile(r"\b(both|all|none of them)\b")


@dataclass(frozen=True)
class Reading:
    """What a prompt states (as far as its words were read) and the words that could not be read."""

    intent: SceneSpec
    unknown: tuple[str, ...]


def _object(words: list[tuple[str, str]]) -> ObjectSpec | None:
    found: dict[str, str] = {}
    for attribute, value in words:
        if found.get(attribute, value) != value:
            return None  # two values of one attribute: not one object
        found[attribute] = value
    if "colour" not in found or "shape" not in found:
        return None
    motion = found.get("motion")
    return ObjectSpec(
        found["colour"],
        found["shape"],
        found.get("size"),
        motion,
        found.get("speed") if motion not in (None, STILL) else None,
    )


def read_prompt(text: str) -> Reading | None:
    """The intent a terse prompt states, read word by word; None if its words do not make ShapeWorld objects
    (a phrase without a colour and a shape, or two values of one attribute in one phrase)."""
    text = " ".join(text.lower().replace(".", " ").split())
    text = re.sub(r"\bnone of them moving\b", "all still", re.sub(r"\bnot moving\b", "still", text))
    background = None
    objects: list[ObjectSpec] = []
    unknown: list[str] = []
    all_still = False
    for phrase in re.split(r",| and ", text):
        words = phrase.split()
        read = [LEXICON[w] for w in words if w in LEXICON]
        unknown += [w for w in words if w not in LEXICON and w not in FILLERS]
        backgrounds = [v for a, v in read if a == "background"]
        if backgrounds:  # "on gray", "gray background", "on a gray background": the rest of the phrase is an object
            if len(backgrounds) > 1 or background is not None:
                return None
            background = backgrounds[0]
            read = [(a, v) for a, v in read if a != "background"]
        if not read:
            continue
        if all(r == ("motion", STILL) for r in read) and _ALL_STILL.search(phrase):
            all_still = True
            continue
        obj = _object(read)
        if obj is None:
            return None
        objects.append(obj)
    if not objects or len({o.colour for o in objects}) != len(objects):
        return None
    if all_still:
        objects = [replace(o, motion=STILL, speed=None) for o in objects]
    return Reading(SceneSpec(tuple(objects), background), tuple(unknown))


def states_intent(rewrite: SceneSpec, intent: SceneSpec) -> bool:
    """Whether `rewrite` says everything `intent` says: the same objects (by colour) and every stated attribute."""
    if len(rewrite.objects) != len(intent.objects):
        return False
    if intent.background is not None and rewrite.background != intent.background:
        return False
    by_colour = {o.colour: o for o in rewrite.objects}
    for wanted in intent.objects:
        got = by_colour.get(wanted.colour)
        if got is None or got.shape != wanted.shape:
            return False
        for attribute in ("size", "motion", "speed"):
            if getattr(wanted, attribute) is not None and getattr(got, attribute) != getattr(wanted, attribute):
                return False
    return True


def rewrite_metrics(rewrites: list[str], intents: list[str]) -> dict[str, float]:
    """Fractions of rewrites that parse as canonical captions, are complete, and state their prompt's intent."""
    parsed, complete, stated = 0, 0, 0
    for text, intent in zip(rewrites, intents, strict=True):
        try:
            spec = parse_caption(text)
        except CaptionError:
            continue
        parsed += 1
        complete += spec.is_complete
        stated += states_intent(spec, parse_caption(intent))
    n = len(rewrites)
    return {"parse": parsed / n, "complete": complete / n, "intent": stated / n}


def keeps_prompt(prompt: str, rewrite: str) -> str | None:
    """None if the canonical caption `rewrite` keeps everything `prompt` states, else why not: `unsure` (the
    prompt is not fully read, so the rewrite cannot be checked) or `contradicts` (an object added or missing, or
    a stated attribute changed). A rewrite that does not parse is `contradicts` too."""
    reading = read_prompt(prompt)
    if reading is None or reading.unknown:
        return "unsure"
    try:
        spec = parse_caption(rewrite)
    except CaptionError:
        return "contradicts"
    return None if states_intent(spec, reading.intent) else "contradicts"


def normalised_prompt(prompt: str) -> str:
    """A fully read prompt written again in the words ShapeWorld's terse prompts use (the same intent), so an
    enhancer trained on them reads it; any other prompt as it is."""
    reading = read_prompt(prompt)
    if reading is None or reading.unknown:
        return prompt
    return terse_text(reading.intent, np.random.default_rng(0))
