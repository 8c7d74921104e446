"""Non-canonical text about a scene: terse user prompts and scraped-style ("web") captions.

- A terse prompt is what a person types: synonyms, omissions, varied order ("red ball going right
  fast"). It comes with its *intent*: the partial spec of what it actually states. Prompt
  enhancement learns to map the text back to a canonical caption that satisfies the intent.
- A web caption mimics scraped pre-training text: attributes dropped, sometimes a wrong attribute,
  and free word order. It is never parsed; the base model learns from it as it is.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from vidpost.world.sampling import pick
from vidpost.world.spec import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SIZES,
    SPEEDS,
    STILL,
    ObjectSpec,
    SceneSpec,
)

SHAPE_WORDS = {
    "circle": ["circle", "ball", "dot", "disc"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle", "wedge"],
}
COLOUR_WORDS = {
    "red": ["red"],
    "green": ["green"],
    "blue": ["blue"],
    "yellow": ["yellow"],
    "magenta": ["magenta", "pink"],
    "cyan": ["cyan", "teal", "aqua"],
}
SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["big", "large", "huge"]}
DIRECTION_WORDS = {d: [f"going {d}", f"moving {d}", f"heading {d}", f"drifting {d}", f"to the {d}"] for d in DIRECTIONS}
DIRECTION_WORDS["up"] = ["going up", "moving up", "rising", "heading up", "floating up"]
DIRECTION_WORDS["down"] = ["going down", "moving down", "falling", "dropping", "sinking"]
SPEED_WORDS = {"slowly": ["slow", "slowly", "gently"], "quickly": ["fast", "quickly", "quick"]}
STILL_WORDS = ["still", "not moving", "static", "standing still"]
ALL_STILL_WORDS = {2: ["both still", "both not moving"], 3: ["all still", "none of them moving"]}


def _keep(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def terse_intent(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """What a person would bother to say about a complete scene: colour and shape, some of the rest."""
    objects = []
    for obj in spec.objects:
        motion = obj.motion if _keep(rng, 0.7) else None
        speed = obj.speed if motion is not None and motion != STILL and _keep(rng, 0.6) else None
        objects.append(replace(obj, size=obj.size if _keep(rng, 0.4) else None, motion=motion, speed=speed))
    background = spec.background if _keep(rng, 0.3) else None
    return SceneSpec(tuple(objects), background)


def terse_text(intent: SceneSpec, rng: np.random.Generator) -> str:
    """Render an intent as casual text that states exactly what the intent states."""
    all_still = len(intent.objects) > 1 and all(o.motion == STILL for o in intent.objects)
    phrases = []
    for obj in intent.objects:
        words = []
        if obj.size is not None:
            words.append(pick(rng, SIZE_WORDS[obj.size]))
        words += [pick(rng, COLOUR_WORDS[obj.colour]), pick(rng, SHAPE_WORDS[obj.shape])]
        if obj.motion == STILL and not all_still:
            words.append(pick(rng, STILL_WORDS))
        elif obj.motion in DIRECTIONS:
            words.append(pick(rng, DIRECTION_WORDS[obj.motion]))
            if obj.speed is not None:
                words.append(pick(rng, SPEED_WORDS[obj.speed]))
        if _keep(rng, 0.3):
            words.insert(0, "a")
        phrases.append(" ".join(words))
    text = pick(rng, [" and ", ", "]).join(phrases)
    if all_still:
        text += ", " + pick(rng, ALL_STILL_WORDS[len(intent.objects)])
    if intent.background is not None:
        text += pick(
            rng,
            [f" on {intent.background}", f", {intent.background} background", f" on a {intent.background} background"],
        )
    return text


def terse_prompt(spec: SceneSpec, rng: np.random.Generator) -> tuple[str, SceneSpec]:
    """(text, intent) for a complete scene."""
    intent = terse_intent(spec, rng)
    return terse_text(intent, rng), intent


def _corrupt_one_attribute(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """Swap one attribute of one object (or the background) for a wrong value, keeping the spec valid."""
    index = int(rng.integers(len(spec.objects)))
    obj = spec.objects[index]
    taken = {o.colour for o in spec.objects}
    options = {
        "colour": [c for c in COLOURS if c not in taken],
        "shape": [s for s in SHAPES if s != obj.shape],
        "size": [s for s in SIZES if s != obj.size],
    }
    if obj.motion in DIRECTIONS:
        options["motion"] = [d for d in DIRECTIONS if d != obj.motion]
        options["speed"] = [s for s in SPEEDS if s != obj.speed]
    if _keep(rng, 0.2):
        wrong_bg = pick(rng, [b for b in BACKGROUNDS if b != spec.background])
        return replace(spec, background=wrong_bg)
    field = pick(rng, list(options))
    objects = list(spec.objects)
    objects[index] = replace(obj, **{field: pick(rng, options[field])})
    return replace(spec, objects=tuple(objects))


def _web_object_phrase(obj: ObjectSpec, rng: np.random.Generator) -> str:
    size = obj.size if _keep(rng, 0.6) else None
    motion = None
    if _keep(rng, 0.7):
        if obj.motion == STILL:
            motion = pick(rng, ["staying still", "not moving", "that does not move"])
        else:
            motion = f"moving {obj.motion}"
            if _keep(rng, 0.6):
                assert obj.speed is not None  # a direction always has a speed in a complete object
                motion += " " + obj.speed
    noun = f"{obj.colour} {obj.shape}"
    template = int(rng.integers(4))
    if template == 0:
        head = " ".join(w for w in ["a", size, obj.colour, obj.shape] if w)
        return f"{head} {motion}" if motion else head
    if template == 1:
        head = " ".join(w for w in ["a", obj.colour, size, obj.shape] if w)
        return f"{motion}, {head}" if motion else head
    if template == 2:
        extra = f" of {size} size" if size else ""
        return f"a {noun}{extra}" + (f", {motion}" if motion else "")
    adjectives = " and ".join(w for w in [size, obj.colour] if w)
    return f"a {obj.shape} that is {adjectives}" + (f" {motion}" if motion else "")


def web_caption(spec: SceneSpec, rng: np.random.Generator, p_wrong: float = 0.1) -> tuple[str, bool]:
    """(caption, has_wrong_attribute) in the style of scraped alt-text."""
    wrong = _keep(rng, p_wrong)
    if wrong:
        spec = _corrupt_one_attribute(spec, rng)
    order = rng.permutation(len(spec.objects))
    phrases = [_web_object_phrase(spec.objects[i], rng) for i in order]
    text = pick(rng, [" and ", ", ", " with "]).join(phrases)
    if _keep(rng, 0.6):
        background = pick(
            rng, [f"{spec.background} background", f"against {spec.background}", f"on a {spec.background} background"]
        )
        text = f"{background}: {text}" if _keep(rng, 0.3) else f"{text}, {background}"
    return text, wrong
