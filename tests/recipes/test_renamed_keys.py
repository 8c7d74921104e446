"""A config written with a key from before its rename fails with one line naming the new key, from a file and
from an override, for every recipe; and every new name is a key the recipe has."""

from pathlib import Path

import pytest
import yaml

from vidpost.config import Config, describe_config, load_config
from vidpost.errors import ConfigError
from vidpost.pipeline.config import PipelineConfig
from vidpost.recipes.distill import DistillConfig
from vidpost.recipes.enhance import EnhanceConfig
from vidpost.recipes.grpo import GRPOConfig
from vidpost.recipes.sft import SFTConfig

SCHEMAS = {"sft": SFTConfig, "grpo": GRPOConfig, "distill": DistillConfig, "enhance": EnhanceConfig}


def _nested(dotted: str, value: object) -> dict:
    *sections, leaf = dotted.split(".")
    data: dict = {leaf: value}
    for section in reversed(sections):
        data = {section: data}
    return data


def _one_line_error(schema: type[Config], path: Path | None, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(schema, path, overrides)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("recipe", [*SCHEMAS, "pipeline"])
def test_an_old_key_names_its_new_name_from_a_file_and_from_an_override(recipe, tmp_path):
    schema = SCHEMAS.get(recipe, PipelineConfig)
    assert schema.renamed_keys, f"{recipe} renamed nothing"
    renamed = schema.renamed_keys
    for old, new in renamed.items():
        path = tmp_path / f"{old}.yaml"
        path.write_text(yaml.safe_dump(_nested(old, 1)))
        # a file's keys are checked from the top: a key inside a renamed section is reported as that section
        top = min((k for k in renamed if old == k or old.startswith(k + ".")), key=len)
        assert _one_line_error(schema, path, []) == f"{path}: '{top}' is now called '{renamed[top]}'"
        assert _one_line_error(schema, None, [f"{old}=1"]) == f"override '{old}=1': '{old}' is now called '{new}'"


@pytest.mark.parametrize("recipe", [*SCHEMAS, "pipeline"])
def test_every_new_name_is_a_key_of_the_recipe(recipe):
    schema = SCHEMAS.get(recipe, PipelineConfig)
    keys = [line.split(":")[0] for line in describe_config(schema).splitlines()]
    for old, new in schema.renamed_keys.items():
        assert any(key == new or key.startswith(new + ".") for key in keys), f"{old} -> {new}: no such key"
