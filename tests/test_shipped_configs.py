"""Every YAML under configs/ loads into its schema; files that document the defaults state exactly them."""

from pathlib import Path

import pytest

from vidpost.config import load_config
from vidpost.inference.acceleration import AccelerationConfig
from vidpost.models.config import ModelConfig
from vidpost.pipeline.config import PipelineConfig
from vidpost.recipes.distill import DistillConfig
from vidpost.recipes.enhance import EnhanceConfig
from vidpost.recipes.grpo import GRPOConfig
from vidpost.recipes.sft import SFTConfig
from vidpost.world.config import DatasetConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SCHEMAS = {
    "shapeworld/world.yaml": DatasetConfig,
    "shapeworld/acceleration.yaml": AccelerationConfig,
    "shapeworld/pretrain.yaml": SFTConfig,
    "shapeworld/sft.yaml": SFTConfig,
    "shapeworld/grpo_flash.yaml": GRPOConfig,
    "shapeworld/grpo_full.yaml": GRPOConfig,
    "shapeworld/grpo_window.yaml": GRPOConfig,
    "shapeworld/distill.yaml": DistillConfig,
    "shapeworld/enhance.yaml": EnhanceConfig,
    "shapeworld/pipeline.yaml": PipelineConfig,
    "wan2.1-t2v-1.3b/model.yaml": ModelConfig,
    "wan2.1-t2v-1.3b/distill_4step_lora.yaml": DistillConfig,
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
