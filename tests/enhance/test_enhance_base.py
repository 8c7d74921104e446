"""The check every rewrite passes, the fallback counters, the config's rules and `--enhancer` resolution."""

import logging

import pytest

from vidpost.config import ConfigError
from vidpost.enhance.base import Enhancer, RewriteCounts, check_rewrite
from vidpost.enhance.config import EnhancerConfig
from vidpost.enhance.intent import rewrite_metrics
from vidpost.enhance.resolve import enhancer_config, enhancer_dir, load_enhancer
from vidpost.enhance.toy import ToyEnhancer
from vidpost.errors import VidpostError
from vidpost.evaluation import shapeworld_records
from vidpost.world.grammar import parse_caption

CAPTION = "a small red circle moving left quickly on a black background"


class Scripted(Enhancer):
    """Answers with prepared texts (None: the backend failed)."""

    def __init__(self, texts, **check):
        super().__init__(EnhancerConfig(backend="hf", path="unused", check=check), "scripted")
        self.texts = texts

    def generate(self, prompts):
        return self.texts[: len(prompts)]


@pytest.mark.parametrize(
    "rewrite, shapeworld, reason",
    [
        (None, False, "failed"),
        ("", False, "empty"),
        (" \n\t ", False, "empty"),
        ("word " * 13, False, "too_long"),
        ("word " * 12, False, None),
        ("A red circle.", True, "unparsable"),
        ("a red circle and a red square", True, "unparsable"),  # two red objects: parses word by word, but no scene
        (CAPTION, True, None),
        (f"  {CAPTION}\n", True, None),  # whitespace is normalised before the grammar sees it
        ("anything at all", False, None),
    ],
)
def test_check_rewrite(rewrite, shapeworld, reason):
    assert check_rewrite(rewrite, max_words=12, shapeworld=shapeworld) == reason


def test_rewrite_falls_back_per_prompt_counts_why_and_keeps_order(caplog):
    prompts = ["p0", "p1", "p2", "p3", "p4"]
    enhancer = Scripted([CAPTION, None, "", "x " * 300, "Not a caption"], shapeworld=True, intent=False)
    with caplog.at_level(logging.WARNING, "vidpost"):
        out = enhancer.rewrite(prompts)
    assert out == [CAPTION, "p1", "p2", "p3", "p4"]
    c = enhancer.counts
    assert (c.prompts, c.rewritten, c.failed, c.empty, c.too_long, c.unparsable) == (5, 1, 1, 1, 1, 1)
    assert "4 of 5 rewrites fell back to the prompt (1 failed, 1 empty, 1 too long, 1 unparsable)" in caplog.text
    enhancer.texts = [CAPTION]
    assert enhancer.rewrite(["again"]) == [CAPTION] and enhancer.counts.prompts == 6  # counts accumulate
    assert enhancer.counts.as_metrics() == {
        "enhance/prompts": 6,
        "enhance/rewritten": 2,
        "enhance/fallbacks": 4,
        "enhance/fallback_failed": 1,
        "enhance/fallback_empty": 1,
        "enhance/fallback_too_long": 1,
        "enhance/fallback_unparsable": 1,
        "enhance/fallback_unsure": 0,
        "enhance/fallback_contradicts": 0,
    }
    assert enhancer.rewrite([]) == []


def test_a_rewrite_is_one_normalised_line():
    assert Scripted(["  two\nlines  "]).rewrite(["p"]) == ["two lines"]
    assert RewriteCounts(prompts=2, rewritten=2).summary() == "2 prompts rewritten"


def test_a_backend_returning_the_wrong_number_of_rewrites_is_a_bug():
    with pytest.raises(RuntimeError, match="returned 1 rewrites for 2 prompts"):
        Scripted(["one"]).rewrite(["a", "b"])


@pytest.mark.parametrize(
    "data, message",
    [
        ({"backend": "toy"}, "needs path"),
        ({"backend": "hf", "path": "x", "openai": {"base_url": "http://h/v1"}}, "takes no openai section"),
        ({"backend": "openai"}, "needs an openai section"),
        ({"backend": "openai", "path": "x", "openai": {"base_url": "http://h/v1"}}, "no path"),
        ({"backend": "openai", "openai": {"base_url": "h:8000/v1"}}, "must start with http"),
        ({"backend": "gpt"}, "backend"),
    ],
)
def test_config_rules(data, message):
    with pytest.raises(ValueError, match=message):
        EnhancerConfig.model_validate(data)


def test_the_shapeworld_check_defaults_on_for_toy_only():
    assert EnhancerConfig(backend="toy", path="x").checks_shapeworld
    assert not EnhancerConfig(backend="hf", path="x").checks_shapeworld
    assert EnhancerConfig(backend="hf", path="x", check={"shapeworld": True}).checks_shapeworld


def test_references_resolve_to_configs(random_toy, tmp_path):
    toy = enhancer_config(str(random_toy), ["generation.temperature=0.5"])
    assert (toy.backend, toy.path, toy.generation.temperature) == ("toy", str(random_toy), 0.5)
    hf_dir = tmp_path / "lm"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    assert enhancer_config(str(hf_dir)).backend == "hf"
    url = enhancer_config("http://127.0.0.1:9/v1")
    assert (url.backend, url.openai.base_url, url.openai.model) == ("openai", "http://127.0.0.1:9/v1", None)
    yaml = tmp_path / "e.yaml"
    yaml.write_text("backend: openai\nopenai: {base_url: 'https://api.example.com/v1', model: m}\n")
    assert enhancer_config(str(yaml), ["openai.timeout_s=5"]).openai.timeout_s == 5
    with pytest.raises(ConfigError, match="unknown key 'generation.temprature'"):
        enhancer_config(str(random_toy), ["generation.temprature=0.5"])


def test_a_run_directory_resolves_to_its_latest_finished_stage(random_toy, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    with pytest.raises(VidpostError, match="no finished enhancer yet"):
        enhancer_dir(str(run))
    (run / "sft").symlink_to(random_toy)
    assert enhancer_dir(str(run)) == run / "sft"
    (run / "grpo").symlink_to(random_toy)
    assert enhancer_dir(str(run)) == run / "grpo"
    assert isinstance(load_enhancer(str(run)), ToyEnhancer)


def test_missing_enhancers_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(VidpostError, match="enhancer not found: nowhere"):
        enhancer_dir("nowhere")
    monkeypatch.setenv("VIDPOST_ASSETS", str(tmp_path))
    with pytest.raises(VidpostError, match="shipped enhancer 'shapeworld-enhancer' not found"):
        enhancer_dir("shapeworld-enhancer")
    with pytest.raises(VidpostError, match="not an enhancer"):
        enhancer_dir(str(tmp_path))


def test_the_shipped_name_resolves_in_assets(random_toy, tmp_path, monkeypatch):
    (tmp_path / "shapeworld-enhancer").symlink_to(random_toy)
    monkeypatch.setenv("VIDPOST_ASSETS", str(tmp_path))
    assert enhancer_config("shapeworld-enhancer").path == str(tmp_path / "shapeworld-enhancer")


def test_the_shipped_enhancer_loads_and_writes_complete_canonical_captions():
    enhancer = load_enhancer("shapeworld-enhancer")
    rewrites = enhancer.rewrite(["a red circle", "a small blue square going left"])
    assert enhancer.counts.fallbacks == 0
    first, second = (parse_caption(text) for text in rewrites)
    assert first.is_complete and second.is_complete
    assert (first.objects[0].colour, first.objects[0].shape) == ("red", "circle")
    assert (second.objects[0].colour, second.objects[0].shape) == ("blue", "square")


@pytest.mark.parametrize("split, least", [("eval", 0.95), ("heldout", 0.9)])
def test_the_shipped_enhancer_states_what_users_ask_also_for_unseen_colour_shape_pairs(split, least):
    # held-out prompts name colour-shape pairs (red triangle, blue circle, ...) that no training caption has
    records = shapeworld_records(split, 64, seed=3)
    rewrites = load_enhancer("shapeworld-enhancer").generate([r["terse"] for r in records])
    assert rewrite_metrics(rewrites, [r["intent"] for r in records])["intent"] >= least
