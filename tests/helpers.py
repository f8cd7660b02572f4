"""Helpers the tests share: tiny random models, the transformers greedy reference, a tiny model pair."""

from __future__ import annotations

from pathlib import Path

import torch

NEAR_TIE = 1e-3  # logits closer than this may legitimately flip between batched and single forwards


def byte_tokenizer():
    """A 256-token byte-level tokenizer made on the spot (no hub): ids 0..255 cover every byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def tiny_llama(seed: int = 0, layers: int = 4, vocab: int = 256, hidden: int = 64, max_pos: int = 512):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_pos, eos_token_id=None, bos_token_id=None,
                      pad_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    # Sharpen the random model (larger output scale) so its next-token choices are decisive and a
    # related draft agrees with it often; near-ties then stay rare.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


def noisy_copy(model, noise: float, seed: int = 1):
    """A draft that agrees with `model` often but not always: its weights plus Gaussian noise."""
    import copy

    torch.manual_seed(seed)
    draft = copy.deepcopy(model)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn_like(p) * noise * p.std().clamp_min(1e-3))
    return draft.eval()


def law_pair(vocab: int = 6, mul: float = 3.0, noise: float = 0.3):
    """A target with a vocabulary small enough to enumerate its sampled law, peaked by scaling its head,
    and a noisy copy as the draft (the exact-law tests)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    target = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        target.lm_head.weight.mul_(mul)
    return target, noisy_copy(target, noise)


def hf_greedy(model, prompt: torch.Tensor, n: int) -> list[int]:
    out = model.generate(prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def assert_greedy_equal(model, prompt: torch.Tensor, ours: list[int], reference: list[int]) -> None:
    """Token-for-token equality, except at a measured near-tie of the target's top two logits."""
    for i, (a, b) in enumerate(zip(ours, reference)):
        if a == b:
            continue
        with torch.no_grad():
            logits = model(torch.cat((prompt, torch.tensor(reference[:i], dtype=torch.long)))[None]).logits[0, -1]
        top2 = logits.topk(2).values
        gap = float(top2[0] - top2[1])
        assert gap < NEAR_TIE, f"token {i} differs ({a} vs {b}) without a near-tie (gap {gap:.2e})"
        return  # after a legitimate flip the continuations are different texts
    assert len(ours) == len(reference)


def tiny_lm_pair(target, draft, name: str = "tiny", context_limit: int = 512):
    """A `ModelPair` of a tiny target and a tiny LM drafter (no tokenizer, no EOS)."""
    from realrun.drafters import LMDrafter
    from realrun.loading import ModelPair
    from realrun.models import LoadedModel

    return ModelPair(LoadedModel(target, None, Path(name)), LMDrafter(draft, 256), None, "lm", set(), context_limit)


def synthetic_run(root: Path, top_k: int, max_depth: int, sequences: int = 5) -> Path:
    """`root/traces` of synthetic sequences and `root/cost.json` (the analytic cost model): simulator inputs
    made in milliseconds."""
    import json

    import numpy as np

    from ltd_sim.cost_model import AnalyticCostModel
    from ltd_sim.synthetic import synthetic_sequence
    from ltd_sim.trace import save_sequence, sequence_path

    rng = np.random.default_rng(0)
    for i in range(sequences):
        save_sequence(sequence_path(root / "traces", i), synthetic_sequence(rng, length=40, k=top_k, depth=max_depth))
    (root / "cost.json").write_text(json.dumps(AnalyticCostModel().to_json()))
    return root
