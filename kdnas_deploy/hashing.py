"""One stable content hash for settings, configs and fingerprints."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the object's key-sorted JSON (non-JSON values by `str`), truncated to `length` hex digits."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]
