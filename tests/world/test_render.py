import numpy as np
import pytest
from scipy import ndimage

from vidpost.errors import VidpostError
from vidpost.world.grammar import parse_caption
from vidpost.world.render import layout, render, render_scene, shape_mask
from vidpost.world.sampling import random_spec
from vidpost.world.spec import BACKGROUNDS, COLOURS, SIZES


@pytest.mark.parametrize("shape, side, area", [("square", 5, 25), ("square", 9, 81), ("circle", 5, 21),
                                               ("circle", 9, 69), ("triangle", 5, 13), ("triangle", 9, 41)])
def test_shape_masks_fill_their_box_and_are_symmetric(shape, side, area):
    mask = shape_mask(shape, side)
    assert mask.shape == (side, side) and mask.sum() == area
    assert mask.any(0).all() and mask.any(1).all()  # the bounding box is exactly side x side
    assert (mask == mask[:, ::-1]).all()


def _object_pixels(video, spec):
    return [(np.abs(video - COLOURS[o.colour]).max(-1) == 0) for o in spec.objects]


def test_random_scenes_respect_canvas_gap_and_palette():
    rng = np.random.default_rng(0)
    for _ in range(150):
        spec = random_spec(rng)
        try:
            video = render_scene(spec, rng, frames=10, height=32, width=32)
        except VidpostError:
            continue  # infeasible (e.g. a quick large mover on a crowded canvas); tested below
        palette = np.array([BACKGROUNDS[spec.background], *(COLOURS[o.colour] for o in spec.objects)])
        # no anti-aliasing: every pixel is exactly a palette colour
        assert (np.abs(video[..., None, :] - palette).max(-1).min(-1) == 0).all()
        masks = _object_pixels(video, spec)
        for obj, mask in zip(spec.objects, masks, strict=True):
            side = SIZES[obj.size]
            assert (mask.sum((1, 2)) == shape_mask(obj.shape, side).sum()).all()  # whole object in every frame
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                # dilating one object by 1 px (8-neighbourhood) must not reach within 1 px of the other
                near = ndimage.binary_dilation(masks[i], structure=np.ones((1, 5, 5), bool))
                assert not (near & masks[j]).any()


def test_moving_object_moves_at_its_speed():
    spec = parse_caption("a small red square moving down quickly on a black background")
    video = render_scene(spec, np.random.default_rng(1))
    ys = [np.argwhere(video[t, ..., 0] == 1)[:, 0].min() for t in range(10)]
    assert np.diff(ys).tolist() == [2] * 9


def test_same_seed_same_video_other_seed_other_layout():
    spec = parse_caption("a large blue circle moving left slowly and a small yellow triangle staying still "
                         "on a gray background")
    a = render_scene(spec, np.random.default_rng(7))
    b = render_scene(spec, np.random.default_rng(7))
    c = render_scene(spec, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_tight_scene_finds_its_layout():
    spec = parse_caption(" and ".join(f"a large {c} square moving right quickly" for c in ("red", "green", "blue"))
                         + " on a white background")
    placements = layout(spec, np.random.default_rng(0), frames=10, height=32, width=32)
    assert sorted(p.y for p in placements) in ([0, 11, 22], [0, 11, 23], [0, 12, 23], [1, 12, 23])
    assert render(spec, placements, 10, 32, 32).shape == (10, 32, 32, 3)


def test_infeasible_scene_is_a_clear_error():
    spec = parse_caption("a large red square moving right quickly on a black background")
    with pytest.raises(VidpostError, match="no layout fits"):
        render_scene(spec, np.random.default_rng(0), frames=16)  # 9 + 2 * 15 px > 32 px
