"""The canonical caption grammar: spec -> caption -> spec, exactly.

    caption := object (" and " object)* [" on a " background " background"]
    object  := "a " [size " "] colour " " shape [" moving " direction [" " speed] | " staying still"]

A full spec gives the full canonical caption, e.g.
`a large red circle moving right quickly and a small blue triangle staying still on a black background`.
Omitted parts are unstated attributes of a partial spec (what a terse prompt means).
"""

from __future__ import annotations

import re
from functools import lru_cache

from vidpost.errors import CaptionError
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


def _alternatives(words) -> str:
    return "|".join(words)


_OBJECT_RE = re.compile(
    rf"a (?:(?P<size>{_alternatives(SIZES)}) )?(?P<colour>{_alternatives(COLOURS)}) "
    rf"(?P<shape>{_alternatives(SHAPES)})"
    rf"(?: moving (?P<direction>{_alternatives(DIRECTIONS)})(?: (?P<speed>{_alternatives(SPEEDS)}))?"
    rf"| (?P<still>staying still))?"
)
_BACKGROUND_RE = re.compile(rf" on a (?P<background>{_alternatives(BACKGROUNDS)}) background$")


def object_phrase(obj: ObjectSpec) -> str:
    words = ["a"]
    if obj.size is not None:
        words.append(obj.size)
    words += [obj.colour, obj.shape]
    if obj.motion == STILL:
        words.append("staying still")
    elif obj.motion is not None:
        words += ["moving", obj.motion]
        if obj.speed is not None:
            words.append(obj.speed)
    return " ".join(words)


def caption(spec: SceneSpec) -> str:
    text = " and ".join(object_phrase(o) for o in spec.objects)
    if spec.background is not None:
        text += f" on a {spec.background} background"
    return text


@lru_cache(maxsize=65536)
def parse_caption(text: str) -> SceneSpec:
    """The spec a canonical (possibly partial) caption states; CaptionError names the caption otherwise."""
    body, background = text, None
    match = _BACKGROUND_RE.search(text)
    if match:
        body, background = text[: match.start()], match["background"]
    phrases = body.split(" and ")
    if len(phrases) > MAX_OBJECTS:
        raise CaptionError(f"cannot parse caption {text!r}: more than {MAX_OBJECTS} objects")
    objects = []
    for i, phrase in enumerate(phrases, 1):
        m = _OBJECT_RE.fullmatch(phrase)
        if m is None:
            raise CaptionError(
                f"cannot parse caption {text!r}: object {i} {phrase!r} is not "
                "'a [size] colour shape [moving direction [speed] | staying still]'"
            )
        motion = STILL if m["still"] else m["direction"]
        objects.append(ObjectSpec(m["colour"], m["shape"], m["size"], motion, m["speed"]))
    try:
        return SceneSpec(tuple(objects), background)
    except ValueError as err:
        raise CaptionError(f"cannot parse caption {text!r}: {err}") from None
