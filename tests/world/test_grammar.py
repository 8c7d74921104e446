import itertools

import pytest

from vidpost.errors import CaptionError
from vidpost.world.grammar import caption, parse_caption
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


def all_single_objects():
    for colour, shape, size in itertools.product(COLOURS, SHAPES, SIZES):
        yield ObjectSpec(colour, shape, size, STILL)
        for direction, speed in itertools.product(DIRECTIONS, SPEEDS):
            yield ObjectSpec(colour, shape, size, direction, speed)


def test_every_full_single_object_caption_round_trips():
    n = 0
    for obj, background in itertools.product(all_single_objects(), BACKGROUNDS):
        spec = SceneSpec((obj,), background)
        text = caption(spec)
        assert parse_caption(text) == spec
        assert caption(parse_caption(text)) == text
        n += 1
    assert n == 6 * 3 * 2 * 9 * 3


def test_issue_example_parses_exactly():
    text = "a large red circle moving right quickly and a small blue triangle staying still on a black background"
    spec = parse_caption(text)
    assert spec == SceneSpec(
        (ObjectSpec("red", "circle", "large", "right", "quickly"), ObjectSpec("blue", "triangle", "small", STILL)),
        "black",
    )
    assert caption(spec) == text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a red circle", SceneSpec((ObjectSpec("red", "circle"),))),
        ("a red circle moving up", SceneSpec((ObjectSpec("red", "circle", motion="up"),))),
        ("a small cyan square on a gray background", SceneSpec((ObjectSpec("cyan", "square", "small"),), "gray")),
        (
            "a green triangle staying still and a yellow circle moving left slowly",
            SceneSpec(
                (ObjectSpec("green", "triangle", motion=STILL), ObjectSpec("yellow", "circle", None, "left", "slowly"))
            ),
        ),
    ],
)
def test_partial_captions_parse_to_partial_specs(text, expected):
    assert parse_caption(text) == expected
    assert caption(expected) == text
    assert not expected.is_complete


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("a huge red circle", "object 1 'a huge red circle'"),
        ("red circle", "object 1"),
        ("a red circle and a blue square moving sideways", "object 2"),
        ("a red circle and a red square", "distinct"),
        ("a red circle and a blue square and a green square and a cyan circle", "more than 3"),
        ("a red circle on a purple background", "object 1"),
        ("", "object 1"),
    ],
)
def test_unparsable_captions_name_the_caption(text, fragment):
    with pytest.raises(CaptionError) as info:
        parse_caption(text)
    message = str(info.value)
    assert repr(text) in message and fragment in message and "\n" not in message


def test_spec_validation_rejects_bad_values():
    with pytest.raises(ValueError, match="speed"):
        ObjectSpec("red", "circle", motion=STILL, speed="quickly")
    with pytest.raises(ValueError, match="colour"):
        ObjectSpec("purple", "circle")
    spec = SceneSpec((ObjectSpec("red", "circle", "small", "right", "slowly"),), "white")
    assert SceneSpec.from_dict(spec.to_dict()) == spec
