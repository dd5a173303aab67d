"""Content keys: what identifies a run across executions, so a resume reuses exactly the runs that would not change.

A target's own share of a key (its identity and code fingerprint) is `Target.key_parts`, in plan/targets.py.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_key(**parts: Any) -> str:
    """A stable hash of what determines a run's result; JSON with sorted keys so dict order does not matter."""
    text = json.dumps(parts, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]

