import numpy as np
import pytest

from vidpost.errors import VidpostError
from vidpost.world.config import DatasetConfig, WorldConfig
from vidpost.world.dataset import make_clip, prompt_record, scene
from vidpost.world.grammar import caption, parse_caption
from vidpost.world.prompts import COLOUR_WORDS, SHAPE_WORDS, terse_prompt, web_caption
from vidpost.world.sampling import HELDOUT_PAIRS, random_spec, split_of
from vidpost.world.spec import SceneSpec


def _states_no_more_than(intent: SceneSpec, spec: SceneSpec) -> bool:
    for stated, truth in zip(intent.objects, spec.objects, strict=True):
        for field in ("colour", "shape", "size", "motion", "speed"):
            value = getattr(stated, field)
            if value is not None and value != getattr(truth, field):
                return False
    return intent.background in (None, spec.background)


def test_terse_prompts_state_a_true_subset_with_colour_and_shape_words():
    rng = np.random.default_rng(0)
    lengths = []
    for _ in range(300):
        spec = random_spec(rng)
        text, intent = terse_prompt(spec, rng)
        assert _states_no_more_than(intent, spec)
        assert parse_caption(caption(intent)) == intent
        for obj in spec.objects:
            assert any(w in text for w in COLOUR_WORDS[obj.colour]) and any(w in text for w in SHAPE_WORDS[obj.shape])
        lengths.append(len(text) < len(caption(spec)))
    assert np.mean(lengths) > 0.9  # terse really is shorter


def test_web_captions_have_about_ten_percent_wrong_attributes_and_rarely_parse():
    rng = np.random.default_rng(0)
    wrong, parsable = 0, 0
    for _ in range(1000):
        text, is_wrong = web_caption(random_spec(rng), rng, p_wrong=0.1)
        wrong += is_wrong
        try:
            parse_caption(text)
            parsable += 1
        except Exception:
            pass
    assert 70 <= wrong <= 130
    assert parsable < 500  # free word order: most are not canonical


def test_splits_are_disjoint_and_heldout_pairs_never_leave_heldout():
    cfg = DatasetConfig(n=1)
    seen = {}
    for split in ("train", "eval", "heldout"):
        captions = set()
        for i in range(150):
            spec, _ = scene(cfg.model_copy(update={"split": split}), i)
            assert split_of(spec) == split
            has_pair = any((o.colour, o.shape) in HELDOUT_PAIRS for o in spec.objects)
            assert has_pair == (split == "heldout")
            captions.add(caption(spec))
        seen[split] = captions
    assert not seen["train"] & seen["eval"] and not seen["train"] & seen["heldout"]


def test_curated_and_web_share_scenes_and_clips_are_deterministic():
    curated = DatasetConfig(seed=4, style="curated")
    web = DatasetConfig(seed=4, style="web")
    for i in range(20):
        video_c, meta_c = make_clip(curated, i)
        video_w, meta_w = make_clip(web, i)
        assert meta_c["spec"] == meta_w["spec"] and meta_c["caption"] == meta_w["canonical"]
        again, meta_again = make_clip(curated, i)
        assert np.array_equal(video_c, again) and meta_c == meta_again
        if not meta_w["defects"]:
            assert np.array_equal(video_c, video_w)
    assert prompt_record(curated, 3)["canonical"] == make_clip(curated, 3)[1]["caption"]


def test_web_defect_rate_follows_config():
    cfg = DatasetConfig(style="web", web={"p_defect": 0.5})
    with_defects = sum(bool(make_clip(cfg, i)[1]["defects"]) for i in range(120))
    assert 40 <= with_defects <= 80
    none = DatasetConfig(style="web", web={"p_defect": 0.0})
    assert not any(make_clip(none, i)[1]["defects"] for i in range(20))


@pytest.mark.parametrize("frames, height", [(16, 48), (6, 24)])
def test_geometry_is_configurable(frames, height):
    cfg = DatasetConfig(world={"frames": frames, "height": height, "width": height})
    video, _ = make_clip(cfg, 0)
    assert video.shape == (frames, height, height, 3) and video.dtype == np.uint8


def test_the_whole_vocabulary_draws_the_scenes_drawn_without_one():
    """The default vocabulary must keep every seed's scenes (shipped datasets and recorded figures depend on it)."""
    plain, whole = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(300):
        assert random_spec(plain) == random_spec(whole, vocabulary=WorldConfig().vocabulary())


def test_a_smaller_world_draws_only_its_values_and_all_of_them():
    world = WorldConfig(colours=["red"], shapes=["square"], backgrounds=["black"], max_objects=1, p_still=0.0)
    cfg = DatasetConfig(n=1, world=world)
    specs = [scene(cfg, i)[0] for i in range(120)]
    assert {(o.colour, o.shape, s.background) for s in specs for o in s.objects} == {("red", "square", "black")}
    assert {o.motion for s in specs for o in s.objects} == {"left", "right", "up", "down"}
    assert {o.size for s in specs for o in s.objects} == {"small", "large"}
    assert all(split_of(s) == "train" for s in specs)


def test_a_smaller_world_without_scenes_in_a_split_says_so():
    world = WorldConfig(colours=["red"], shapes=["square"], max_objects=1)
    with pytest.raises(VidpostError, match="no heldout scene"):
        scene(DatasetConfig(n=1, split="heldout", world=world), 0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"colours": ["purple"]}, "unknown colours 'purple'"),
        ({"shapes": []}, "shapes is empty"),
        ({"directions": ["up", "up"]}, "lists a value twice"),
        ({"colours": ["red"], "max_objects": 2}, "needs as many colours"),
    ],
)
def test_a_bad_vocabulary_is_a_clear_error(values, message):
    with pytest.raises(ValueError, match=message):
        WorldConfig(**values)
