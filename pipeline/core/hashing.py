"""The one content hash of the pipeline."""

from __future__ import annotations

import hashlib


def content_hash(data: bytes) -> str:
    """Hex digest used for every content hash in the pipeline (blake2b, 128 bits)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()
