"""A short, stable fingerprint of model weights: part of every result's identity."""

from __future__ import annotations

import hashlib
from pathlib import Path


def weights_digest(path: Path) -> str:
    """The first 12 hex digits of SHA-256 over a weights file, or over a weights directory's files
    (names and contents, in sorted order, so a directory saved twice the same way hashes the same)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file is not path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]
