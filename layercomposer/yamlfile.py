"""YAML input files (canvases, training configs): reading, `--set` overrides, located errors.

Every problem is reported as `file:line: [layers -> 2 -> scale] message`, or against the
`--set key=value` that wrote the value. Every YAML text lc reads goes through `parse_yaml`,
which refuses oversized files, deep nesting, anchors and aliases (the "billion laughs" bomb)
and duplicate keys from the event stream, before any tree is built.
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
from .limits import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, size_text

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
    """Read a YAML mapping and apply `key.path=value` overrides; raise `error` if unreadable.

    Unlike every file a canvas names (images, masks: `limits.open_regular_file`), the YAML file
    itself may be a pipe: `lc validate <(envsubst < scene.yaml)` gives /dev/fd/N, whose writer
    is the user's own shell, and the read stops one byte past `MAX_YAML_BYTES` however much it
    sends. A named FIFO given here waits for its writer, as `cat` would: the user named it.
    """
    path = Path(path)

    def fail(message: str, line: int | None = None) -> CanvasError:
        return error([Problem(f"{path}:{line}" if line else str(path), (), message)])

    try:
        with open(path, "rb") as handle:  # read one byte past the cap: a pipe has no size
            raw = handle.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise fail(f"no such {kind}") from None
    except IsADirectoryError:
        raise fail(f"is a folder, not a {kind}") from None
    except OSError as exc:
        raise fail(f"cannot be read: {exc.strerror}") from None
    try:
        data, node = parse_yaml(raw)
    except BadYaml as exc:
        raise fail(exc.reason, exc.line) from None
    if not isinstance(data, dict):
        found = "empty" if data is None else f"a {type(data).__name__}"
        raise fail(f"a {kind} must be a YAML mapping of keys to values, not {found}", 1)

    overridden = {apply_override(data, override): override for override in overrides}
    digest = hashlib.sha256(raw).hexdigest()
    return YamlFile(path, data, digest, tuple(overrides), _node_lines(node), overridden)


class BadYaml(ValueError):
    """A YAML text lc will not read; `line` is 1-based, or None when no line is to blame."""

    def __init__(self, reason: str, line: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.line = line


class YamlRefused(BadYaml):
    """Well-formed YAML that lc refuses: over a bound, an anchor or alias, a duplicate key."""


# libyaml's parser when PyYAML was built with it: the same events, faster.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(
    text: bytes | str,
    max_bytes: int = MAX_YAML_BYTES,
    max_depth: int = MAX_YAML_DEPTH,
    max_nodes: int = MAX_YAML_NODES,
) -> tuple[Any, yaml.Node | None]:
    """One YAML document's data and node tree, or BadYaml saying why (and on which line).

    The bounds are checked on the parser's event stream, which is read lazily: an alias bomb,
    a deep nest or a flood of nodes is refused at its first offending event, before a node
    tree or any Python object is built. Anchors and aliases are refused outright: a canvas or
    a config has no use for them, and they are what makes a few hundred bytes expand to GBs.
    """
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8"))
    if size > max_bytes:
        # No byte count: the caller read one byte past the cap (a pipe or /dev/zero has no end).
        raise YamlRefused(f"is over lc's limit of {size_text(max_bytes)} for a YAML file")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = text[: exc.start].count(b"\n") + 1
            raise BadYaml("is not UTF-8 text", line) from None
    try:
        _check_events(text, max_depth, max_nodes)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        raise BadYaml(f"not valid YAML: {reason}", mark.line + 1 if mark else 1) from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of 5000 digits, a bad date
        if isinstance(exc, BadYaml):
            raise
        raise BadYaml(f"not valid YAML: {exc}", 1) from None
    _check_duplicate_keys(node)
    return data, node


def _check_events(text: str, max_depth: int, max_nodes: int) -> None:
    """YamlRefused at the first event that breaks a bound (events are parsed one at a time)."""
    depth = nodes = documents = 0
    for event in yaml.parse(text, Loader=_Loader):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise YamlRefused(
                f"alias '*{event.anchor}': lc does not accept YAML anchors and aliases; "
                "write the value out where it is used",
                line,
            )
        if isinstance(event, yaml.NodeEvent):
            if event.anchor is not None:
                raise YamlRefused(
                    f"anchor '&{event.anchor}': lc does not accept YAML anchors and aliases; "
                    "write the value out where it is used",
                    line,
                )
            nodes += 1
            if nodes > max_nodes:
                raise YamlRefused(f"more than {max_nodes:,} values in one file", line)
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > max_depth:
                raise YamlRefused(f"nested more than {max_depth} levels deep", line)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise YamlRefused("more than one YAML document ('---') in one file", line)


def _check_duplicate_keys(node: yaml.Node | None) -> None:
    """YamlRefused at the second occurrence of a key in any mapping (YAML forbids it; PyYAML
    would silently keep the last one)."""
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key_node, value_node in current.value:
                stack.append(value_node)
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise YamlRefused(
                        f"duplicate key '{key_node.value}' (first written on line {seen[key]})",
                        line,
                    )
                seen[key] = line
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


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
        value = parse_yaml(raw)[0] if raw.strip() else ""
    except YamlRefused as exc:
        raise UsageError(f"--set {override}: the value {exc.reason}") from None
    except BadYaml:
        value = raw  # not YAML: taken as the string it is
    loc = resolve_key(data, parts)
    node: Any = data
    for part in loc[:-1]:
        if isinstance(node, dict) and part not in node:
            node[part] = {}
        node = node[part]
    node[loc[-1]] = value
    return tuple(loc)
