"""The default target (SmolLM2-135M-Instruct from its GGUF wheel): losslessness and the CLI contract."""

from __future__ import annotations

import json

import pytest
import torch

from ltd_sim.control import StaticDepth, StaticSize
from realrun.decoder import DecodeConfig, generate
from realrun.drafters import Eagle3Drafter, LMDrafter
from realrun.eagle3 import random_head, save_head
from realrun.models import encode_prompt
from helpers import assert_greedy_equal, hf_greedy

pytestmark = pytest.mark.slow
PROMPTS = ["Write a Python function that returns the squares of a list of numbers.",
           "Name three rivers in Europe and one fact about each."]


@pytest.mark.parametrize("kind,top_k,depth,size", [
    ("self", 4, 4, 16), ("self", 1, 6, 6), ("eagle3", 10, 8, 60), ("eagle3", 3, 2, 0),
])
def test_default_target_greedy_lossless(default_target, kind, top_k, depth, size):
    model, tok = default_target.model, default_target.tokenizer
    drafter = (LMDrafter(model, default_target.vocab_size) if kind == "self"
               else Eagle3Drafter(random_head(model, draft_vocab_size=4096), default_target.vocab_size))
    for text in PROMPTS if kind == "self" else PROMPTS[:1]:
        prompt = torch.tensor(encode_prompt(tok, text))
        reference = hf_greedy(model, prompt, 20)
        result = generate(model, prompt, drafter, DecodeConfig(max_new_tokens=20, top_k=top_k, max_depth=depth),
                          StaticDepth(depth), StaticSize(size))
        assert_greedy_equal(model, prompt, result.token_ids, reference)
        if kind == "self" and top_k == 1:
            assert all(c.accepted == c.depth for c in result.cycles)


def test_cli_generate_json_with_a_saved_head(default_target, tmp_path, capsys):
    from realrun.cli import main

    head_dir = save_head(random_head(default_target.model, draft_vocab_size=2048), tmp_path / "head")
    rc = main(["generate", "--prompt", "Say hello.", "--max-new-tokens", "12", "--draft", str(head_dir),
               "--draft-kind", "eagle3", "--top-k", "4", "--depth", "3", "--size", "8", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"text", "token_ids", "cycles", "tau", "decode_tokens_per_s", "end_to_end_tokens_per_s", "wall_s"}
    assert 1 <= len(out["token_ids"]) <= 12 and isinstance(out["text"], str)
    cycle = out["cycles"][0]
    assert set(cycle) == {"depth", "size", "top_k", "accepted", "context_len", "draft_s", "verify_s",
                          "overhead_s", "total_s"}
    assert cycle["depth"] == 3 and cycle["size"] == 8 and cycle["top_k"] == 4


def test_cli_models_and_bad_options(default_target, capsys):
    from realrun.cli import main

    assert main(["models", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == {"target", "draft", "draft_kind", "cache_dir"}
    assert main(["generate", "--prompt", "x", "--size", "-1"]) == 2
    assert "--size" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--draft", "default", "--depth", "0"]) == 2


def test_head_for_another_target_is_refused(default_target, tiny_target, tmp_path):
    from ltd_sim.errors import LTDError
    from realrun.eagle3 import load_head

    head_dir = save_head(random_head(tiny_target, draft_vocab_size=64), tmp_path / "tiny_head")
    with pytest.raises(LTDError, match="made for a target"):
        load_head(head_dir, default_target.model)
