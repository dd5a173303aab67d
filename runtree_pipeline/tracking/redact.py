"""Values under secret-looking keys never reach the tracking store, the config artifact or the summary."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"
_SECRET = re.compile(r"passw(or)?d|pwd|token|secret|api[_-]?key|access[_-]?key|private[_-]?key|credential", re.I)


def is_secret(key: str) -> bool:
    """Judged on the last part of a dotted key: `db.password` is secret, `password.min_length` is not."""
    return bool(_SECRET.search(str(key).rsplit(".", 1)[-1]))


def redact(value: Any) -> Any:
    """A copy of a nested mapping with secret-looking keys' values replaced."""
    if isinstance(value, Mapping):
        return {k: REDACTED if is_secret(k) and not isinstance(v, Mapping) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
