from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import Field

from vidpost.config import Config, describe_config, load_config, parse_overrides, save_config
from vidpost.errors import ConfigError


class World(Config):
    frames: int = Field(10, description="Frames per clip.")
    height: int = Field(32, description="Frame height in pixels.")
    styles: list[str] = Field(default_factory=lambda: ["flat"], description="Shape styles to draw.")
    noisy: bool = Field(False, description="Add pixel noise.")


class Top(Config):
    seed: int = Field(0, description="Random seed.")
    world: World = Field(default_factory=World, description="The synthetic world.")
    name: str = Field("run", description="Run name.")
    scale: float = Field(1.5, description="A float, to check round trips.")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str | None, overrides: Sequence[str] = ()) -> str:
    path = write(tmp_path, text) if text is not None else None
    with pytest.raises(ConfigError) as info:
        load_config(Top, path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_without_a_file() -> None:
    cfg = load_config(Top)
    assert cfg == Top()
    assert cfg.world.frames == 10 and cfg.world.styles == ["flat"]


def test_file_values(tmp_path: Path) -> None:
    cfg = load_config(Top, write(tmp_path, "seed: 3\nworld:\n  frames: 7\n  styles: [a, b]\n"))
    assert cfg.seed == 3
    assert cfg.world.frames == 7 and cfg.world.height == 32 and cfg.world.styles == ["a", "b"]


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(Top, write(tmp_path, "")) == Top()


def test_overrides_parse_values_as_yaml() -> None:
    cfg = load_config(Top, None, ["seed=5", "world.noisy=true", "world.styles=[x, y]", "name=hello", "scale=2"])
    assert cfg.seed == 5 and cfg.world.noisy is True and cfg.world.styles == ["x", "y"]
    assert cfg.name == "hello" and cfg.scale == 2.0


def test_override_beats_file_and_keeps_other_file_values(tmp_path: Path) -> None:
    path = write(tmp_path, "world:\n  frames: 7\n  height: 64\n")
    cfg = load_config(Top, path, ["world.frames=9"])
    assert cfg.world.frames == 9 and cfg.world.height == 64


def test_later_override_wins() -> None:
    assert load_config(Top, None, ["seed=1", "seed=2"]).seed == 2
    assert parse_overrides(["seed=1", "world.styles=[a]", "seed=2"]) == {"seed": 2, "world.styles": ["a"]}


def test_whole_section_override() -> None:
    assert load_config(Top, None, ["world={frames: 4}"]).world == World(frames=4)


def test_required_field_can_come_from_an_override() -> None:
    class Needs(Config):
        model_id: str = Field(description="Required, with no default.")

    assert load_config(Needs, None, ["model_id=tiny"]).model_id == "tiny"
    with pytest.raises(ConfigError, match="^config: model_id: Field required$"):
        load_config(Needs)


def test_bad_override_value_yaml() -> None:
    with pytest.raises(ConfigError, match="^bad override 'seed=\\[1': invalid YAML value: "):
        load_config(Top, None, ["seed=[1"])


def test_section_must_be_a_mapping(tmp_path: Path) -> None:
    assert error_of(tmp_path, "world: 3\n").endswith("cfg.yaml: world: expected a section of keys (got 3)")
    assert (
        error_of(tmp_path, "seed: 1\n", ["world=3"]) == "override 'world=3': world: expected a section of keys (got 3)"
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(Top, tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path: Path) -> None:
    message = error_of(tmp_path, "seed: 1\nworld: [1, 2\n")
    assert message.startswith(f"{tmp_path / 'cfg.yaml'}: invalid YAML (line ")


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    assert "top level must be a mapping" in error_of(tmp_path, "- 1\n- 2\n")


@pytest.mark.parametrize("text", ["seed", "=3", "world..frames=3", ".seed=1"])
def test_bad_override_syntax(text: str) -> None:
    with pytest.raises(ConfigError, match="bad override .*: expected key.sub=value"):
        load_config(Top, None, [text])


def test_unknown_key_in_file(tmp_path: Path) -> None:
    message = error_of(tmp_path, "world:\n  framez: 3\n")
    assert message == (
        f"{tmp_path / 'cfg.yaml'}: unknown key 'world.framez' (known keys in 'world': frames, height, styles, noisy)"
    )


def test_unknown_top_level_key_in_file(tmp_path: Path) -> None:
    assert "unknown key 'sede' (known keys: seed, world, name, scale)" in error_of(tmp_path, "sede: 1\n")


def test_unknown_key_in_override(tmp_path: Path) -> None:
    message = error_of(tmp_path, "seed: 1\n", ["world.framez=3"])
    assert message.startswith("override 'world.framez=3': unknown key 'world.framez' (known keys in 'world': ")


def test_unknown_key_inside_section_override() -> None:
    with pytest.raises(ConfigError, match="override 'world=.*': unknown key 'world.framez'"):
        load_config(Top, None, ["world={framez: 3}"])


def test_sub_key_of_scalar_override() -> None:
    with pytest.raises(ConfigError, match="override 'world.frames.x=3': 'world.frames' is a single value"):
        load_config(Top, None, ["world.frames.x=3"])


def test_wrong_type_in_file(tmp_path: Path) -> None:
    message = error_of(tmp_path, "world:\n  frames: abc\n")
    assert message.startswith(f"{tmp_path / 'cfg.yaml'}: world.frames: ")
    assert message.endswith("(got 'abc')")


def test_wrong_type_in_override_blames_the_override(tmp_path: Path) -> None:
    message = error_of(tmp_path, "world:\n  frames: 3\n", ["seed=2", "world.frames=abc"])
    assert message.startswith("override 'world.frames=abc': world.frames: ")
    assert message.endswith("(got 'abc')")


def test_several_errors_are_counted(tmp_path: Path) -> None:
    message = error_of(tmp_path, "seed: x\nworld:\n  frames: abc\n  height: def\n")
    assert message.startswith(f"{tmp_path / 'cfg.yaml'}: seed: ")
    assert message.endswith("(got 'x') (+2 more)")


def test_field_without_description_is_rejected_at_class_creation() -> None:
    with pytest.raises(TypeError, match="Bad.undocumented"):

        class Bad(Config):
            documented: int = Field(1, description="Fine.")
            undocumented: int = 2


def test_multi_line_description_is_rejected() -> None:
    with pytest.raises(TypeError, match="Bad.wordy"):

        class Bad(Config):
            wordy: int = Field(1, description="First line.\nSecond line.")


def test_assignment_is_validated() -> None:
    cfg = Top()
    with pytest.raises(ValueError):
        cfg.world.frames = "abc"  # type: ignore[assignment]


def test_save_load_round_trip(tmp_path: Path) -> None:
    cfg = load_config(Top, None, ["seed=7", "name='007'", "world.styles=[a, 'yes', '1']", "scale=0.1"])
    path = tmp_path / "deep" / "dir" / "resolved.yaml"
    save_config(cfg, path)
    assert load_config(Top, path).model_dump() == cfg.model_dump()
    assert list(tmp_path.glob("deep/dir/*")) == [path]
    assert path.read_text().splitlines()[0] == "seed: 7"


class Short(Config):
    world: World = Field(default_factory=lambda: World(frames=3), description="A world of its own defaults.")
    optional: World | None = Field(None, description="A section left out by default.")


def test_describe_config_shows_the_defaults_a_parent_gives_its_section() -> None:
    lines = describe_config(Short).splitlines()
    assert lines[0] == "world.frames: int = 3  # Frames per clip."  # the parent's, not World's 10
    assert lines[1] == "world.height: int = 32  # Frame height in pixels."
    assert "optional.frames: int = 10  # Frames per clip." in lines  # a null section: its own class defaults


def test_describe_config_lists_every_leaf() -> None:
    lines = describe_config(Top).splitlines()
    assert lines == [
        "seed: int = 0  # Random seed.",
        "world.frames: int = 10  # Frames per clip.",
        "world.height: int = 32  # Frame height in pixels.",
        "world.styles: list[str] = ['flat']  # Shape styles to draw.",
        "world.noisy: bool = False  # Add pixel noise.",
        "name: str = 'run'  # Run name.",
        "scale: float = 1.5  # A float, to check round trips.",
    ]


class Renamed(Top):
    renamed_keys = {"rate": "scale", "old_world": "world", "world.count": "world.frames"}


@pytest.mark.parametrize(
    ("text", "overrides", "old", "new"),
    [
        ("rate: 2.0\n", (), "rate", "scale"),
        (None, ("rate=2.0",), "rate", "scale"),
        ("old_world:\n  frames: 3\n", (), "old_world", "world"),
        (None, ("old_world.frames=3",), "old_world.frames", "world.frames"),
        ("world:\n  count: 3\n", (), "world.count", "world.frames"),
        (None, ("world.count=3",), "world.count", "world.frames"),
    ],
)
def test_renamed_key_names_its_new_name(
    tmp_path: Path, text: str | None, overrides: tuple[str, ...], old: str, new: str
) -> None:
    path = write(tmp_path, text) if text is not None else None
    with pytest.raises(ConfigError) as info:
        load_config(Renamed, path, overrides)
    message = str(info.value)
    assert "\n" not in message
    assert f"'{old}' is now called '{new}'" in message


def test_unrenamed_unknown_key_still_lists_known_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'world.colour' \(known keys in 'world': frames"):
        load_config(Renamed, None, ["world.colour=red"])
    assert load_config(Renamed, None, ["scale=2"]).scale == 2.0  # the new names load
