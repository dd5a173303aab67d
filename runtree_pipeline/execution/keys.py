"""Content keys: what identifies a run across executions, so a resume reuses exactly the runs that would not change."""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any


def content_key(**parts: Any) -> str:
    """A stable hash of what determines a run's result; JSON with sorted keys so dict order does not matter."""
    text = json.dumps(parts, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def code_fingerprint(target: str) -> str | None:
    """A hash of the source file of the module defining `target`: editing the target (or anything else in its
    file) changes the content keys of its runs, so neither a resume nor the cache reuses results of older code.
    What it imports from other files is not included. None when there is no source file (a builtin, a C module).
    Read again each time a stage starts, so a notebook that edits the file between pipelines is seen.
    """
    from hydra.utils import get_object

    try:
        module = inspect.getmodule(get_object(target))
        path = inspect.getsourcefile(module) if module is not None else None
    except (TypeError, ImportError, AttributeError):
        return None
    if path is None:
        return None
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]
