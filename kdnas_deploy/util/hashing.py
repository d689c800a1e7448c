"""One stable content hash for settings, configs and fingerprints."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the object's key-sorted JSON (non-JSON values by `str`), truncated to `length` hex digits."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def file_sha256(path: Any, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks (graphs run to hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
