"""YAML input files (canvases, training configs): reading, `--set` overrides, located errors.

Every problem is reported as `file:line: [layers -> 2 -> scale] message`, or against the
`--set key=value` that wrote the value.
"""

from __future__ import annotations

import difflib
import hashlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import CanvasError, Problem, UsageError

Loc = tuple[str | int, ...]
Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True)
class YamlFile:
    """A YAML mapping read from disk, overrides applied, with where each value was written."""

    path: Path
    data: dict[str, Any]
    sha256: str  # of the file's bytes, before overrides
    overrides: tuple[str, ...] = ()
    lines: dict[Loc, int] = field(default_factory=dict, repr=False)
    overridden: dict[Loc, str] = field(default_factory=dict, repr=False)

    def where(self, loc: Loc) -> str:
        """'file:line' for a location, or the `--set` that wrote it."""
        for target, override in self.overridden.items():
            if tuple(loc[: len(target)]) == target:
                return f"--set {override}"
        while loc and loc not in self.lines:
            loc = loc[:-1]
        return f"{self.path}:{self.lines.get(loc, 1)}"

    def problem(self, loc: Loc, message: str) -> Problem:
        return Problem(self.where(loc), loc, message)

    def validate(self, model: type[Model], error: type[CanvasError] = CanvasError) -> Model:
        """The file as `model`, or `error` listing every problem with its location."""
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            problems = [self.problem(e["loc"], _message(e, model)) for e in exc.errors()]
            raise error(problems) from None


def read_yaml_file(
    path: str | Path,
    overrides: tuple[str, ...] | list[str] = (),
    kind: str = "canvas file",
    error: type[CanvasError] = CanvasError,
) -> YamlFile:
    """Read a YAML mapping and apply `key.path=value` overrides; raise `error` if unreadable."""
    path = Path(path)

    def fail(message: str, line: int | None = None) -> CanvasError:
        return error([Problem(f"{path}:{line}" if line else str(path), (), message)])

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise fail(f"no such {kind}") from None
    except IsADirectoryError:
        raise fail(f"is a folder, not a {kind}") from None
    except OSError as exc:
        raise fail(f"cannot be read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise fail("is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        raise fail(f"not valid YAML: {reason}", mark.line + 1 if mark else 1) from None
    if not isinstance(data, dict):
        found = "empty" if data is None else f"a {type(data).__name__}"
        raise fail(f"a {kind} must be a YAML mapping of keys to values, not {found}", 1)

    overridden = {apply_override(data, override): override for override in overrides}
    digest = hashlib.sha256(raw).hexdigest()
    return YamlFile(path, data, digest, tuple(overrides), _node_lines(node), overridden)


def _node_lines(node: yaml.Node | None, loc: Loc = ()) -> dict[Loc, int]:
    """Map each location in a composed YAML tree to its 1-based line."""
    if node is None:
        return {}
    lines = {loc: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*loc, key_node.value)
            lines.update(_node_lines(value_node, child))
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_node_lines(item, (*loc, index)))
    return lines


def _message(err: dict, model: type[BaseModel]) -> str:
    loc, kind = err["loc"], err["type"]
    if kind == "extra_forbidden":
        valid = list(_model_at(model, loc[:-1]).model_fields)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
        return f"unknown key '{loc[-1]}'{hint}"
    if kind == "missing":
        if isinstance(loc[-1], int):
            return f"too few values: item {loc[-1]} is missing"
        return f"'{loc[-1]}' is required"
    return err["msg"].removeprefix("Value error, ")


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel]:
    """The pydantic model that describes the mapping at `loc` (list indices skipped)."""
    for part in loc:
        if isinstance(part, int) or part not in model.model_fields:
            continue
        nested = _nested_model(model.model_fields[part].annotation)
        if nested is not None:
            model = nested
    return model


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, tuple, typing.Union, types.UnionType, dict):
        for argument in typing.get_args(annotation):
            found = _nested_model(argument)
            if found is not None:
                return found
    return None


# --- overrides ---------------------------------------------------------------------------------


def resolve_key(data: dict, parts: list[str]) -> list[str | int]:
    """Turn `layers.alice.lock` into the location `['layers', 0, 'lock']` (list items by name)."""
    loc: list[str | int] = []
    node: Any = data
    for i, part in enumerate(parts):
        if isinstance(node, list):
            names = [item.get("name") if isinstance(item, dict) else None for item in node]
            if part in names:
                index = names.index(part)
            elif part.isdigit() and int(part) < len(node):
                index = int(part)
            else:
                close = difflib.get_close_matches(part, [n for n in names if n], n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                what = str(parts[i - 1]).removesuffix("s") if i else "item"
                raise UsageError(f"--set {'.'.join(parts)}: no {what} named '{part}'{hint}")
            loc.append(index)
            node = node[index]
        elif isinstance(node, dict):
            loc.append(part)
            node = node.get(part) if i < len(parts) - 1 else None
        else:
            raise UsageError(f"--set {'.'.join(parts)}: '{parts[i - 1]}' has no keys")
    return loc


def apply_override(data: dict, override: str) -> Loc:
    """Write one `key.path=value` (value parsed as YAML) into raw data; return its location."""
    if "=" not in override:
        raise UsageError(
            f"--set expects key.path=value, got '{override}'", hint="e.g. --set seed=7"
        )
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise UsageError(f"--set {override}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    loc = resolve_key(data, parts)
    node: Any = data
    for part in loc[:-1]:
        if isinstance(node, dict) and part not in node:
            node[part] = {}
        node = node[part]
    node[loc[-1]] = value
    return tuple(loc)
