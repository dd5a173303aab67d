"""Param dicts: merging levels (later wins, dotted keys set nested values) and flattening for MLflow."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any


def merge(base: Mapping[str, Any], *layers: Mapping[str, Any]) -> dict[str, Any]:
    """Stage params, then a variant point, then a sub-variant point: what the target is called with."""
    out = copy.deepcopy(dict(base))
    for layer in layers:
        for key, value in layer.items():
            *parents, leaf = str(key).split(".")
            node = out
            for part in parents:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
            if isinstance(value, Mapping):
                node[leaf] = merge(node[leaf] if isinstance(node.get(leaf), dict) else {}, value)
            else:
                node[leaf] = copy.deepcopy(value)
    return out


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys, which is how MLflow shows them as columns."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def lookup(params: Mapping[str, Any], dotted: str) -> Any:
    """A value by dotted key (`opt.lr`); KeyError when any part is missing."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def hydra_quoted(text: str) -> str:
    """`text` as a quoted string of Hydra's override grammar, which reads it back unchanged: a quote is escaped, and
    a backslash only where Hydra takes one as an escape (before a quote, or at the end)."""
    return "'" + re.sub(r"\\+(?='|\Z)", lambda m: m.group(0) * 2, text).replace("'", "\\'") + "'"
