"""Writing an edited canvas back into its YAML file, keeping the user's comments and key order.

The studio edits plain data (what `yaml.safe_load` gives); `merged_yaml` writes that data into
the file's ruamel.yaml round-trip tree, touching only what changed. ruamel attaches a comment
line to the token *before* it, so the comment above a key or a layer lives on whatever ends the
previous value. Before keys or layers are added, removed or reordered, those lines are lifted
off ("leads") and afterwards put back in front of the key or layer they were written above.
"""

from __future__ import annotations

import io
import re
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.scalarstring import (
    DoubleQuotedScalarString,
    FoldedScalarString,
    LiteralScalarString,
    SingleQuotedScalarString,
)
from ruamel.yaml.tokens import CommentToken
from ruamel.yaml.util import load_yaml_guess_indent

from ..canvas import BackgroundSpec, CanvasSpec, LayerSpec

TOP_KEYS = list(CanvasSpec.model_fields)
LAYER_KEYS = list(LayerSpec.model_fields)
BACKGROUND_KEYS = list(BackgroundSpec.model_fields)
_QUOTED = (
    DoubleQuotedScalarString,
    SingleQuotedScalarString,
    LiteralScalarString,
    FoldedScalarString,
)


def merged_yaml(original: str, data: dict[str, Any]) -> str:
    """Return `original` (canvas YAML text) rewritten to hold `data`, comments and order kept."""
    yaml = _yaml_like(original)
    tree = yaml.load(original) if original.strip() else None
    if not isinstance(tree, CommentedMap):
        tree = CommentedMap()
    _merge_map(tree, data, TOP_KEYS)
    out = io.StringIO()
    yaml.dump(tree, out)
    return out.getvalue()


def _yaml_like(text: str) -> YAML:
    """A round-trip YAML that indents as `text` does (so an unchanged file stays byte-identical)."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long prompt
    _, sequence, offset = load_yaml_guess_indent(text) if text.strip() else (None, None, None)
    if offset is None:  # no block sequence in the file: the repository's style
        sequence, offset = 4, 2
    yaml.indent(mapping=_mapping_indent(text), sequence=sequence, offset=offset)
    return yaml


def _mapping_indent(text: str) -> int:
    """How far a nested block mapping is indented in `text` (2 when there is none)."""
    lines = [
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    for line, following in zip(lines, lines[1:], strict=False):
        key_only = re.match(r"^( *)[A-Za-z_][\w-]*:\s*(#.*)?$", line)
        if key_only and not following.lstrip().startswith("- "):
            depth = len(following) - len(following.lstrip(" ")) - len(key_only.group(1))
            if depth > 0:
                return depth
    return 2


# --- merging ---------------------------------------------------------------------------------


def _merge_map(node: CommentedMap, new: dict[str, Any], order: list[str]) -> None:
    """Make `node` hold `new`: unchanged values keep their formatting, new keys go in `order`."""
    leads, trail = _lift_leads(node)
    for key in [key for key in node if key not in new]:
        del node[key]
    for key, value in new.items():
        if key not in node:
            node.insert(_insert_at(node, key, order), key, _to_node(value, None, key))
        elif key == "layers":
            _merge_layers(node, value)
        elif isinstance(node[key], CommentedMap) and isinstance(value, dict):
            _merge_map(node[key], value, BACKGROUND_KEYS)
        elif _plain(node[key]) != value:
            node[key] = _to_node(value, node[key], key)
    _put_leads(node, leads, trail)


def _merge_layers(node: CommentedMap, layers: Any) -> None:
    """Update the layers in place, matched by name, so each keeps its own comments."""
    old = node["layers"]
    if not isinstance(layers, list) or not layers or not _is_block_seq(old):
        node["layers"] = _to_node(layers, old, "layers")
        return
    items = [item for item in old if isinstance(item, CommentedMap)]
    if len(items) != len(old):
        node["layers"] = _to_node(layers, old, "layers")
        return
    # The lines above item i sit after `layers:` (i = 0) or at the end of item i - 1.
    leads = [_pop_rest(node, "layers", 2)] + [_pop_rest(*_tail_of_map(item)) for item in items[:-1]]
    lead_of = {id(item): lead for item, lead in zip(items, leads, strict=True)}
    by_name = {item.get("name"): item for item in items}

    merged = []
    for layer in layers:
        item = by_name.pop(layer.get("name"), None) if isinstance(layer, dict) else None
        if item is None:
            merged.append(_to_node(layer, None, "layer"))
        else:
            _merge_map(item, layer, LAYER_KEYS)
            merged.append(item)
    old.ca.items.clear()  # comments keyed by item index would land on the wrong items
    del old[:]
    old.extend(merged)

    _add_rest(node, "layers", 2, lead_of.get(id(merged[0]), ""))
    for before, item in zip(merged, merged[1:], strict=False):
        if isinstance(before, CommentedMap) and before:
            _add_rest(*_tail_of_map(before), lead_of.get(id(item), ""))


def _insert_at(node: CommentedMap, key: str, order: list[str]) -> int:
    """Where a new key goes: after the last present key that comes before it in `order`."""
    rank = order.index(key) if key in order else len(order)
    position = 0
    for i, present in enumerate(node):
        if (order.index(present) if present in order else len(order)) <= rank:
            position = i + 1
    return position


def _to_node(value: Any, old: Any, key: str) -> Any:
    """Plain data as ruamel nodes: short lists in flow style, strings quoted as before."""
    if isinstance(value, dict):
        order = {"background": BACKGROUND_KEYS, "layer": LAYER_KEYS}.get(key, TOP_KEYS)
        mapping = CommentedMap()
        for name in sorted(value, key=lambda k: order.index(k) if k in order else len(order)):
            mapping[name] = _to_node(value[name], None, name)
        return mapping
    if isinstance(value, list):
        if key == "layers":
            seq = CommentedSeq(_to_node(item, None, "layer") for item in value)
            if not value:
                seq.fa.set_flow_style()
            return seq
        seq = CommentedSeq(_to_node(item, None, key) for item in value)
        if not _is_block_seq(old):
            seq.fa.set_flow_style()  # [x, y] as the format's examples write it
        return seq
    if isinstance(value, str) and isinstance(old, _QUOTED):
        return type(old)(value)
    return value


def _plain(node: Any) -> Any:
    """ruamel nodes as plain data, to tell whether a value changed."""
    if isinstance(node, dict):
        return {key: _plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_plain(value) for value in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def _is_block_seq(node: Any) -> bool:
    return isinstance(node, CommentedSeq) and not node.fa.flow_style()


# --- comment lines above keys and layers ------------------------------------------------------


def _lift_leads(node: CommentedMap) -> tuple[dict[str, str], str]:
    """Take off the comment lines above each key (but the first) and after the last one."""
    keys = list(node)
    leads = {
        key: _pop_rest(*_tail(node, before)) for before, key in zip(keys, keys[1:], strict=False)
    }
    trail = _pop_rest(*_tail(node, keys[-1])) if keys else ""
    return leads, trail


def _put_leads(node: CommentedMap, leads: dict[str, str], trail: str) -> None:
    keys = list(node)
    for before, key in zip(keys, keys[1:], strict=False):
        _add_rest(*_tail(node, before), leads.get(key, ""))
    if keys:
        _add_rest(*_tail(node, keys[-1]), trail)


def _tail(node: CommentedMap, key: str) -> tuple[Any, Any, int]:
    """(owner, key, slot) of the comment token that follows the value of `node[key]`."""
    value = node[key]
    if isinstance(value, CommentedMap) and value and not value.fa.flow_style():
        return _tail_of_map(value)
    if _is_block_seq(value) and value:
        last = value[-1]
        if isinstance(last, CommentedMap) and last:
            return _tail_of_map(last)
        return value, len(value) - 1, 0
    return node, key, 2


def _tail_of_map(node: CommentedMap) -> tuple[Any, Any, int]:
    return _tail(node, list(node)[-1])


def _pop_rest(owner: Any, key: Any, slot: int) -> str:
    """Remove and return the whole lines of a comment token, keeping its end-of-line comment."""
    entry = owner.ca.items.get(key)
    token = entry[slot] if entry and len(entry) > slot else None
    if not isinstance(token, CommentToken) or "\n" not in token.value:
        return ""
    eol, rest = token.value.split("\n", 1)
    if eol.strip():
        token.value = eol + "\n"
    else:
        entry[slot] = None
    return rest


def _add_rest(owner: Any, key: Any, slot: int, rest: str) -> None:
    """Append whole comment lines after the value at (owner, key)."""
    if not rest:
        return
    entry = owner.ca.items.setdefault(key, [None, None, None, None])
    while len(entry) <= slot:
        entry.append(None)
    token = entry[slot]
    if isinstance(token, CommentToken):
        token.value = token.value.rstrip("\n") + "\n" + rest
    else:
        entry[slot] = CommentToken("\n" + rest, CommentMark(0), None)
