"""The one atomic writer (DESIGN.md, "Run directory"): every artifact of the toolkit, a file or a whole
folder, is written beside its destination and renamed in, so that the destination always holds either
the old complete artifact or the new one.

- Files: a temp file in the same folder, flushed and fsynced, then `os.replace` (atomic on POSIX).
- Folders: a temp folder in the same parent, then an atomic exchange (Linux `renameat2(RENAME_EXCHANGE)`),
  then the old one (now at the temp name) is deleted. Where the exchange is unsupported, the old folder
  is renamed to a backup name, the new one renamed in, the backup deleted; a crash between the two
  renames leaves the old folder at its backup name, and `recover_dir` (which every folder write and
  `read_dir` call first) puts it back.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_BACKUP = ".old-"  # a folder's backup name while it is swapped without an atomic exchange


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_with(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Atomically create or replace the file `path` with what `write(tmp_path)` writes to a temp path in
    the same folder (for writers that want a path: `np.savez`, `torch.save`, `fig.savefig`, safetensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: str | os.PathLike, option: str) -> Any:
    """Parse a JSON file named by a command-line `option`; unreadable or malformed -> one-line LTDError."""
    from ltd_sim.errors import LTDError

    p = Path(path)
    try:
        return json.loads(p.read_text())
    except OSError as exc:
        raise LTDError(f"cannot read {option} {p}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise LTDError(f"{option} {p} is not JSON: {exc}") from None


# -- folders ---------------------------------------------------------------------------------------

def _backup_of(path: Path) -> Path:
    return path.parent / f"{_BACKUP}{path.name}"


def recover_dir(path: str | os.PathLike) -> None:
    """Finish a folder swap that a crash interrupted: the old folder comes back from its backup name."""
    path = Path(path)
    backup = _backup_of(path)
    if backup.is_dir():
        if path.exists():
            shutil.rmtree(backup)  # the new folder made it in; the backup is garbage
        else:
            os.rename(backup, path)


def read_dir(path: str | os.PathLike) -> Path:
    """The folder artifact at `path`, after recovering an interrupted swap (call before reading it)."""
    recover_dir(path)
    return Path(path)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def _swap_in(tmp: Path, path: Path) -> None:
    """Move the complete folder `tmp` to `path`; the old `path` (if any) ends deleted."""
    if not path.exists():
        os.rename(tmp, path)
        return
    if _exchange(tmp, path):  # now `tmp` holds the old folder
        _fsync_dir(path.parent)
        shutil.rmtree(tmp)
        return
    backup = _backup_of(path)
    os.rename(path, backup)
    os.rename(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(backup)


@contextlib.contextmanager
def replace_dir(path: str | os.PathLike) -> Iterator[Path]:
    """`with replace_dir(out) as tmp:` write the whole folder into `tmp`; on a clean exit it replaces `out`
    atomically, on an exception `out` is untouched and `tmp` is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        _swap_in(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
