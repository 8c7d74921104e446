"""Typed configuration: pydantic sections loaded from YAML, with `key.sub=value` overrides from the command line.

Every error a user can cause here is a one-line `ConfigError` that says where the bad value came from (the
file or an override) and names the dotted key, because the CLI prints it without a traceback.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin

import pydantic
import yaml
from pydantic import ConfigDict

from vidpost.atomic import atomic_path
from vidpost.errors import ConfigError

_MAX_SHOWN_INPUT = 80


class Config(pydantic.BaseModel):
    """Base of every config section; unknown keys are errors so a typo never silently keeps a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
    # On a top-level (recipe) config: old dotted key or section -> its new name, so a config written for an
    # earlier version fails with one line that says what to write instead of only "unknown key".
    renamed_keys: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        # Checked at class creation so `describe_config` can document every field, with no exceptions.
        super().__pydantic_init_subclass__(**kwargs)
        for name, field in cls.model_fields.items():
            if not field.description or "\n" in field.description.strip():
                raise TypeError(f"{cls.__name__}.{name} needs a one-line description: use Field(..., description=...)")


C = TypeVar("C", bound=Config)


def _section_type(schema: type[Config], name: str) -> type[Config] | None:
    """The Config subclass a field holds (also as `Section | None`), or None for a leaf (scalars, lists, ...)."""
    annotation = schema.model_fields[name].annotation
    is_union = get_origin(annotation) in (Union, UnionType)  # `Section | None`; not list[Section] or dict[...]
    options = [a for a in get_args(annotation) if a is not type(None)] if is_union else [annotation]
    if len(options) == 1 and isinstance(options[0], type) and not get_args(options[0]):
        return options[0] if issubclass(options[0], Config) else None
    return None


def _new_name(renamed: Mapping[str, str], dotted: str) -> str | None:
    """The new name of a renamed key, or of a key inside a renamed section; None if it was not renamed."""
    for old, new in renamed.items():
        if dotted == old or dotted.startswith(old + "."):
            return new + dotted[len(old) :]
    return None


def _unknown_key(schema: type[Config], dotted: str, renamed: Mapping[str, str] = {}) -> str:
    new = _new_name(renamed, dotted)
    if new is not None:
        return f"'{dotted}' is now called '{new}'"
    parent, _, _ = dotted.rpartition(".")
    where = f" in '{parent}'" if parent else ""
    return f"unknown key '{dotted}' (known keys{where}: {', '.join(schema.model_fields)})"


def _check_keys(
    schema: type[Config], data: Mapping[str, Any], prefix: str, source: str, renamed: Mapping[str, str] = {}
) -> None:
    """Report the first unknown key by its full dotted name, which pydantic's error alone does not list."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in schema.model_fields:
            raise ConfigError(f"{source}: {_unknown_key(schema, dotted, renamed)}")
        section = _section_type(schema, key)
        if section is not None and value is not None:  # None: an optional section left out
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {dotted}: expected a section of keys (got {_shown(value)})")
            _check_keys(section, value, f"{dotted}.", source, renamed)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _shown(value: Any) -> str:
    shown = _one_line(repr(value))
    return shown if len(shown) <= _MAX_SHOWN_INPUT else shown[: _MAX_SHOWN_INPUT - 3] + "..."


def _describe_validation_error(error: pydantic.ValidationError, source: str) -> str:
    first = error.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    message = f"{source}: {loc + ': ' if loc else ''}{_one_line(first['msg'])}"
    if first["type"] != "missing":
        message += f" (got {_shown(first['input'])})"
    if error.error_count() > 1:
        message += f" (+{error.error_count() - 1} more)"
    return message


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw_value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"bad override '{text}': expected key.sub=value")
    try:
        value = yaml.safe_load(raw_value)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"bad override '{text}': invalid YAML value: {_one_line(str(exc.problem))}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"bad override '{text}': invalid YAML value: {_one_line(str(exc))}") from exc
    return parts, value


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Map each overridden dotted key to its YAML-parsed value (a later override of the same key wins)."""
    parsed: dict[str, Any] = {}
    for text in overrides:
        parts, value = _parse_override(text)
        parsed[".".join(parts)] = value
    return parsed


def _apply_override(schema: type[Config], data: dict[str, Any], text: str) -> str:
    """Set one override in the raw data, checking its keys against the schema; returns the dotted key."""
    parts, value = _parse_override(text)
    source = f"override '{text}'"
    section, node, prefix = schema, data, ""
    for part in parts[:-1]:
        if part not in section.model_fields:
            raise ConfigError(f"{source}: {_unknown_key(section, '.'.join(parts), schema.renamed_keys)}")
        sub_section = _section_type(section, part)
        if sub_section is None:
            raise ConfigError(f"{source}: '{prefix}{part}' is a single value and has no sub-keys")
        if node.get(part) is None:  # absent, or an optional section set to null
            node[part] = {}
        section, node, prefix = sub_section, node[part], f"{prefix}{part}."
    _check_keys(section, {parts[-1]: value}, prefix, source, schema.renamed_keys)
    node[parts[-1]] = value
    return prefix + parts[-1]


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_bytes())
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ConfigError(f"{path}: invalid YAML (line {line}): {_one_line(str(exc.problem))}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {_one_line(str(exc))}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys to values, got {type(data).__name__}")
    return data


def load_config(schema: type[C], path: str | Path | None = None, overrides: Sequence[str] = ()) -> C:
    """Build a validated config: defaults, then the YAML file at `path`, then `overrides` (key.sub=value).

    A validation error is blamed on the override that set its key, otherwise on the file.
    """
    source = str(path) if path is not None else "config"
    data = _read_yaml(Path(path)) if path is not None else {}
    _check_keys(schema, data, "", source, schema.renamed_keys)
    overridden = {_apply_override(schema, data, text): text for text in overrides}
    try:
        return schema.model_validate(data)
    except pydantic.ValidationError as exc:
        loc = ".".join(str(part) for part in exc.errors()[0]["loc"])
        for dotted, text in overridden.items():
            if loc == dotted or loc.startswith(dotted + "."):
                source = f"override '{text}'"
        raise ConfigError(_describe_validation_error(exc, source)) from exc


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML that `load_config` reads back to an equal config.

    Written to a temporary file and renamed, so a crash never leaves a half-written config next to a run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not get_args(annotation):
        return annotation.__name__
    return repr(annotation).replace("typing.", "")


def _describe_lines(schema: type[Config], prefix: str, defaults: Config | None) -> list[str]:
    lines = []
    for name, field in schema.model_fields.items():
        section = _section_type(schema, name)
        if section is not None:
            # a section's defaults are its own where the parent sets them (GRPO validates every 10 steps)
            own = getattr(defaults, name) if defaults is not None else None
            if own is None and not field.is_required():
                own = field.get_default(call_default_factory=True)
            lines.extend(_describe_lines(section, f"{prefix}{name}.", own))
            continue
        if defaults is not None:
            default = f"= {getattr(defaults, name)!r}"
        else:
            default = "(required)" if field.is_required() else f"= {field.get_default(call_default_factory=True)!r}"
        lines.append(f"{prefix}{name}: {_type_name(field.annotation)} {default}  # {field.description}")
    return lines


def describe_config(schema: type[Config]) -> str:
    """Document every leaf field as `dotted.key: type = default  # description`, for docs and the CLI.

    A leaf's default is the one the top-level config gives it: a section's default values where its parent
    sets them, else the field's own.
    """
    return "\n".join(_describe_lines(schema, "", None))
