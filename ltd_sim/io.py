"""Atomic artifact writes (DESIGN.md, "Run directory"): a temp file in the same folder, then a rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: str | os.PathLike, option: str):
    """Parse a JSON file named by a command-line `option`; unreadable or malformed -> one-line LTDError."""
    from ltd_sim.errors import LTDError

    p = Path(path)
    try:
        return json.loads(p.read_text())
    except OSError as exc:
        raise LTDError(f"cannot read {option} {p}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise LTDError(f"{option} {p} is not JSON: {exc}") from None
