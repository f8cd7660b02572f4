"""The one atomic writer: a destination always holds the old complete artifact or the new one."""

from __future__ import annotations

import os

import pytest

from ltd_sim import io as ltd_io
from ltd_sim.io import read_dir, replace_dir, write_bytes, write_json, write_with


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_file_write_interrupted_keeps_old(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})

    def half_then_crash(tmp):
        tmp.write_bytes(b'{"v": 2, "trunc')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_with(target, half_then_crash)
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"v":1}'
    assert _listing(tmp_path) == ["a.json"]  # no temp file left behind
    write_bytes(target, b"new")
    assert target.read_bytes() == b"new"


def _folder(path, text):
    with replace_dir(path) as tmp:
        (tmp / "weights.bin").write_text(text)
        (tmp / "config.json").write_text("{}")


def test_folder_write_raising_inside_keeps_old(tmp_path):
    out = tmp_path / "head"
    _folder(out, "old")
    with pytest.raises(RuntimeError):
        with replace_dir(out) as tmp:
            (tmp / "weights.bin").write_text("new, half")
            raise RuntimeError("crash while writing")
    assert (out / "weights.bin").read_text() == "old"
    assert _listing(tmp_path) == ["head"]


def test_folder_swap_by_exchange_replaces_whole_folder(tmp_path):
    out = tmp_path / "head"
    _folder(out, "old")
    with replace_dir(out) as tmp:
        (tmp / "other.bin").write_text("new")
    assert _listing(out) == ["other.bin"]  # the new folder, not a merge
    assert _listing(tmp_path) == ["head"]


def test_folder_swap_interrupted_between_renames_recovers_old(tmp_path, monkeypatch):
    """Without an atomic exchange the swap takes two renames; a crash between them leaves the old folder
    at its backup name, and the next reader or writer puts it back."""
    out = tmp_path / "head"
    _folder(out, "old")
    monkeypatch.setattr(ltd_io, "_exchange", lambda a, b: False)
    real_rename = os.rename
    calls = []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed between "old away" and "new in"
        real_rename(src, dst)

    monkeypatch.setattr(ltd_io.os, "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        _folder(out, "new")
    monkeypatch.setattr(ltd_io.os, "rename", real_rename)
    assert not out.exists()  # the window the old code left open: here the old folder waits at its backup
    assert (read_dir(out) / "weights.bin").read_text() == "old"
    assert _listing(tmp_path) == ["head"]
    _folder(out, "new")  # and the fallback swap completes when nothing interrupts it
    assert (out / "weights.bin").read_text() == "new"
    assert _listing(tmp_path) == ["head"]
