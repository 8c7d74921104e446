"""Every YAML under configs/ loads into its schema, and states exactly the built-in defaults' keys."""

from pathlib import Path

import pytest

from vidpost.config import load_config
from vidpost.world.config import DatasetConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SCHEMAS = {"shapeworld/world.yaml": DatasetConfig}


def test_every_shipped_config_has_a_schema():
    shipped = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")}
    assert shipped == set(SCHEMAS)


@pytest.mark.parametrize("name, schema", SCHEMAS.items())
def test_shipped_config_loads(name, schema):
    cfg = load_config(schema, CONFIGS / name)
    assert cfg == schema()  # the shipped file documents the defaults; a drift between them is a bug
