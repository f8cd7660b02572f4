"""`--target FILE.gguf`: any GGUF file transformers' GGUF loader reads, dequantized once into the cache
(keyed by the file's sha256); damaged or unsupported files fail in one line."""

from __future__ import annotations

import json

import pytest

from ltd_sim.errors import LTDError


@pytest.fixture
def default_gguf():
    from realrun.models import _gguf_path

    try:
        return _gguf_path()
    except LTDError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    from ltd_sim import defaults

    monkeypatch.setenv(defaults.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_damaged_gguf_files_fail_in_one_line(default_gguf, cache, tmp_path):
    from realrun.models import resolve_target

    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(default_gguf.read_bytes()[:3_000_000])
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model " * 100)
    for path, message in ((truncated, "is truncated or corrupt"), (junk, "is not a GGUF file"),
                          (tmp_path / "missing.gguf", "no GGUF file at")):
        with pytest.raises(LTDError, match=message) as err:
            resolve_target(str(path))
        assert "\n" not in str(err.value)
    assert not list(cache.glob("models/gguf-*"))  # nothing half-made was left in the cache


def test_unsupported_gguf_architecture_fails_in_one_line(cache, tmp_path):
    gguf = pytest.importorskip("gguf")
    from realrun.models import resolve_target

    path = tmp_path / "foo.gguf"
    writer = gguf.GGUFWriter(str(path), "foo")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(LTDError, match="architecture foo is not supported") as err:
        resolve_target(str(path))
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_generate_on_the_default_targets_own_gguf(default_gguf, default_target, cache, capsys):
    """`ltd generate --target SmolLM2...gguf` = `--target` on the prepared folder, token for token; the
    second run reuses the dequantized folder (keyed by the file's digest)."""
    from realrun.cli import main
    from realrun.models import file_digest, prepare_gguf_target

    argv = ["generate", "--prompt", "Write a haiku about owls.", "--max-new-tokens", "16", "--json"]
    assert main(argv + ["--target", str(default_target.path)]) == 0
    folder_tokens = json.loads(capsys.readouterr().out)["token_ids"]
    assert main(argv + ["--target", str(default_gguf)]) == 0
    gguf_tokens = json.loads(capsys.readouterr().out)["token_ids"]
    assert gguf_tokens == folder_tokens
    prepared = prepare_gguf_target(default_gguf, progress=False)
    assert prepared.name.endswith(file_digest(default_gguf)[:16])
    assert json.loads((prepared / "ltd_source.json").read_text())["sha256"] == file_digest(default_gguf)
