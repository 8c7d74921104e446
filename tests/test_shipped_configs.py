"""Every YAML under configs/ loads into its schema; files that document the defaults state exactly them."""

from pathlib import Path

import pytest
from pydantic import BaseModel

from vidpost.config import load_config
from vidpost.evaluation import shapeworld_prompts
from vidpost.inference.acceleration import AccelerationConfig
from vidpost.models.config import ModelConfig
from vidpost.pipeline.config import PipelineConfig
from vidpost.pipeline.run import check_stages
from vidpost.pipeline.stages import stage_recipe
from vidpost.recipes.distill import DistillConfig
from vidpost.recipes.enhance import EnhanceConfig
from vidpost.recipes.grpo import GRPOConfig
from vidpost.recipes.sft import SFTConfig
from vidpost.world.config import DatasetConfig, WorldConfig
from vidpost.world.grammar import parse_caption

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SCHEMAS = {
    "shapeworld/world.yaml": DatasetConfig,
    "shapeworld/acceleration.yaml": AccelerationConfig,
    "shapeworld/pretrain.yaml": SFTConfig,
    "shapeworld/sft.yaml": SFTConfig,
    "shapeworld/grpo_flash.yaml": GRPOConfig,
    "shapeworld/grpo_full.yaml": GRPOConfig,
    "shapeworld/grpo_window.yaml": GRPOConfig,
    "shapeworld/grpo_nft.yaml": GRPOConfig,
    "shapeworld/distill.yaml": DistillConfig,
    "shapeworld/enhance.yaml": EnhanceConfig,
    "shapeworld/enhance_hf.yaml": EnhanceConfig,
    "shapeworld/pipeline.yaml": PipelineConfig,
    **{
        f"shapeworld/direction/{name}.yaml": SFTConfig
        for name in ("1_red_square", "2_black", "3_one_object", "4_world")
    },
    **{
        f"shapeworld-large/{name}.yaml": schema
        for name, schema in {
            "world": DatasetConfig,
            "pretrain": SFTConfig,
            "sft": SFTConfig,
            "grpo_flash": GRPOConfig,
            "grpo_full": GRPOConfig,
            "grpo_window": GRPOConfig,
            "grpo_nft": GRPOConfig,
            "distill": DistillConfig,
            "enhance": EnhanceConfig,
            "pipeline": PipelineConfig,
        }.items()
    },
    "wan2.1-t2v-1.3b/model.yaml": ModelConfig,
    "wan2.1-t2v-1.3b/distill_4step_lora.yaml": DistillConfig,
    "wan2.1-t2v-1.3b/enhance_qwen.yaml": EnhanceConfig,
    "wan2.1-t2v-14b/model.yaml": ModelConfig,
}
DOCUMENTS_DEFAULTS = {"shapeworld/world.yaml"}  # the others are presets for real checkpoints


def test_every_shipped_config_has_a_schema():
    shipped = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")}
    assert shipped == set(SCHEMAS)


@pytest.mark.parametrize("name, schema", SCHEMAS.items())
def test_shipped_config_loads(name, schema):
    cfg = load_config(schema, CONFIGS / name)
    if name in DOCUMENTS_DEFAULTS:
        assert cfg == schema()  # a drift between the file and the code's defaults is a bug


@pytest.mark.parametrize("name", [name for name, schema in SCHEMAS.items() if schema is PipelineConfig])
def test_every_stage_of_a_shipped_pipeline_loads_with_its_overrides(name, tmp_path):
    cfg = load_config(PipelineConfig, CONFIGS / name)
    check_stages(cfg, {stage.name: stage_recipe(stage.name) for stage in cfg.stages}, tmp_path, CONFIGS / name)


def _worlds(cfg) -> list[WorldConfig]:
    """Every WorldConfig inside a config, at any depth."""
    if isinstance(cfg, WorldConfig):
        return [cfg]
    if isinstance(cfg, BaseModel):
        return [w for name in type(cfg).model_fields for w in _worlds(getattr(cfg, name))]
    return []


def test_the_large_preset_draws_every_scene_and_prompt_from_the_large_world():
    large = WorldConfig(frames=10, height=32, width=32, max_objects=3)
    for name, schema in SCHEMAS.items():
        if name.startswith("shapeworld-large/") and name != "shapeworld-large/world.yaml":
            worlds = _worlds(load_config(schema, CONFIGS / name))
            assert worlds and all(w == large for w in worlds), name
    objects = {len(parse_caption(c).objects) for c in shapeworld_prompts("eval", 64, world=large)}
    assert objects == {1, 2, 3}
    assert {len(parse_caption(c).objects) for c in shapeworld_prompts("eval", 64)} == {1, 2}


def test_the_direction_curriculum_chains_its_stages_and_widens_the_world():
    """Each stage starts from the run its predecessor's header command writes, in a world no smaller than it."""
    stages = sorted((CONFIGS / "shapeworld/direction").glob("*.yaml"))
    assert [p.stem[0] for p in stages] == ["1", "2", "3", "4"]
    previous, previous_size = "shapeworld-sft", 0
    for path in stages:
        cfg = load_config(SFTConfig, path)
        assert cfg.model.path == previous, path.name
        (out,) = [line.split("--out ")[1].strip() for line in path.read_text().splitlines() if "--out " in line]
        world = cfg.data.shapeworld.world
        vocabulary = world.vocabulary()
        size = world.max_objects * len(vocabulary.colours) * len(vocabulary.shapes) * len(vocabulary.backgrounds)
        assert size > previous_size, path.name
        previous, previous_size = out, size
    assert world == WorldConfig()  # the last stage is the default world
