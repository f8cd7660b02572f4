"""Every supported target architecture, both drafters: greedy losslessness and the KV cache after decoding.

Tiny random models (2 layers, hidden 64, vocab 320) of each architecture go through the real load path
(`load_causal_lm`: the attention implementation and the support check are chosen there). Sliding windows
(8) are far smaller than the test context (10 + 40 tokens), so a mask that ignored them would change the
output; Gemma 2/3 and Qwen2/3 with `use_sliding_window` mix full and sliding layers (one mask per kind).
What cannot be tree-verified is refused at load in one line."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_greedy_equal, hf_greedy, noisy_copy
from ltd_sim.control import StaticDepth, StaticSize
from ltd_sim.errors import LTDError
from realrun.decoder import DecodeConfig, generate
from realrun.drafters import Eagle3Drafter, LMDrafter
from realrun.eagle3 import random_head

VOCAB = 320
WINDOW = 8
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=512, eos_token_id=None, bos_token_id=None, pad_token_id=None)
ARCHITECTURES = {  # model_type -> config fields beyond COMMON
    "llama": dict(num_key_value_heads=2),
    "qwen2": dict(num_key_value_heads=2, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    "qwen3": dict(num_key_value_heads=2, head_dim=16, use_sliding_window=True, sliding_window=WINDOW,
                  max_window_layers=1),
    "qwen3_moe": dict(num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=32, decoder_sparse_step=1),
    "mistral": dict(num_key_value_heads=2, sliding_window=WINDOW),
    # final logit soft-capping off: it squashes a random model's logits into near-ties
    "gemma2": dict(num_key_value_heads=2, head_dim=16, sliding_window=WINDOW, final_logit_softcapping=None,
                   attn_logit_softcapping=50.0),
    "gemma3_text": dict(num_key_value_heads=2, head_dim=16, sliding_window=WINDOW, final_logit_softcapping=None,
                        layer_types=["sliding_attention", "full_attention"]),
    "phi3": dict(num_key_value_heads=2, sliding_window=WINDOW),
    "olmo2": dict(num_key_value_heads=2),
    "gpt_neox": dict(rotary_pct=0.5),  # rotary on half of each head: positions taken its own way
    "gpt2": dict(),  # learned absolute positions, read from position_ids
}
LM_SETTINGS = [(3, 4, 10), (1, 4, 4), (4, 3, 0), (2, 3, 60)]  # (top_k, depth, V): tree, chain, V=0, all
EAGLE_SETTINGS = [(4, 3, 12), (1, 3, 3), (3, 2, 0)]
NEW_TOKENS = 40

_MODELS: dict[str, tuple] = {}


def tiny_target(model_type: str, root) -> tuple:
    """(target loaded through load_causal_lm, its noisy copy as an lm draft, prompt, transformers' greedy)."""
    if model_type not in _MODELS:
        from transformers import AutoConfig, AutoModelForCausalLM

        from realrun.models import load_causal_lm

        torch.manual_seed(0)
        cfg = AutoConfig.for_model(model_type, **COMMON, **ARCHITECTURES[model_type])
        model = AutoModelForCausalLM.from_config(cfg)
        if not cfg.tie_word_embeddings:  # decisive next-token choices: near-ties stay rare
            with torch.no_grad():
                model.get_output_embeddings().weight.mul_(8.0)
        folder = root / model_type
        model.save_pretrained(folder)
        target = load_causal_lm(folder, "cpu", torch.float32).model
        prompt = torch.randint(0, VOCAB, (10,), generator=torch.Generator().manual_seed(1))
        _MODELS[model_type] = (target, noisy_copy(target, 0.15), prompt, hf_greedy(target, prompt, NEW_TOKENS))
    return _MODELS[model_type]


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    return tmp_path_factory.mktemp("archs")


@pytest.mark.parametrize("top_k,depth,size", LM_SETTINGS)
@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_greedy_lossless_lm_drafter(model_type, top_k, depth, size, model_root, one_thread):
    target, draft, prompt, reference = tiny_target(model_type, model_root)
    result = generate(target, prompt, LMDrafter(draft, VOCAB), DecodeConfig(NEW_TOKENS, top_k=top_k, max_depth=depth),
                      StaticDepth(depth), StaticSize(size))
    assert_greedy_equal(target, prompt, result.token_ids, reference)
    if size > 0:
        assert result.tau > 1.1, "a close draft should get draft tokens accepted (trees really verified)"


@pytest.mark.parametrize("top_k,depth,size", EAGLE_SETTINGS)
@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_greedy_lossless_eagle3_drafter(model_type, top_k, depth, size, model_root, one_thread):
    target, _, prompt, reference = tiny_target(model_type, model_root)
    head = random_head(target, draft_vocab_size=128, seed=depth)
    result = generate(target, prompt, Eagle3Drafter(head, VOCAB),
                      DecodeConfig(NEW_TOKENS, top_k=top_k, max_depth=depth), StaticDepth(depth), StaticSize(size))
    assert_greedy_equal(target, prompt, result.token_ids, reference)


@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_kv_cache_after_decoding_equals_fresh_prefill(model_type, model_root, one_thread):
    """Compaction kept exactly the accepted entries, at the right positions, on every layer kind."""
    from transformers import DynamicCache

    from realrun.kv_cache import cache_kwargs

    target, draft, prompt, _ = tiny_target(model_type, model_root)
    result = generate(target, prompt, LMDrafter(draft, VOCAB), DecodeConfig(37, top_k=4, max_depth=5),
                      StaticDepth(5), StaticSize(16), keep_cache=True)
    assert result.tau > 1.2  # trees were accepted, so compaction with gaps really happened
    cache = result.extra["cache"]
    committed = torch.cat((prompt, torch.tensor(result.token_ids[:-1])))  # the root is not in the cache
    fresh = DynamicCache()
    with torch.no_grad():
        target(committed[None], use_cache=True, **cache_kwargs(target, fresh))
    # the token budget may cut the last cycle's tokens from the output, not from the cache
    n = len(committed)
    assert n <= cache.get_seq_length() <= n + 5
    for ours, ref in zip(cache.layers, fresh.layers, strict=True):
        torch.testing.assert_close(ours.keys[..., :n, :], ref.keys, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.values[..., :n, :], ref.values, atol=1e-4, rtol=1e-4)


def test_attention_path_chosen_at_load(model_root):
    """Gemma 2 soft-caps attention logits, which only the eager path applies; the rest run SDPA."""
    for model_type, path in (("gemma2", "eager"), ("gemma3_text", "sdpa"), ("mistral", "sdpa")):
        target = tiny_target(model_type, model_root)[0]
        assert target.config._attn_implementation == path


def test_mask_kinds_per_architecture(model_root):
    """Mixed models get one mask per layer kind; single-kind models one mask with their window."""
    from realrun.attention_masks import FULL, SLIDING, mask_spec

    expect = {"llama": ((FULL,), None, False), "mistral": ((SLIDING,), WINDOW, False),
              "phi3": ((SLIDING,), WINDOW, False), "gemma2": ((SLIDING, FULL), WINDOW, True),
              "gemma3_text": ((SLIDING, FULL), WINDOW, True), "qwen3": ((FULL, SLIDING), WINDOW, True)}
    for model_type, (kinds, window, per_type) in expect.items():
        spec = mask_spec(tiny_target(model_type, model_root)[0])
        assert (spec.layer_types, spec.window, spec.per_type) == (kinds, window, per_type), model_type


def test_sliding_mask_cuts_by_position():
    """A tree node at position p sees keys at positions > p - window: prefix and ancestors alike."""
    from realrun.attention_masks import FULL, SLIDING, MaskSpec, tree_mask

    class Fake(torch.nn.Module):  # only its mask spec is read
        pass

    fake = Fake()
    from realrun import attention_masks

    attention_masks._SPECS[fake] = MaskSpec("fake", (SLIDING, FULL), 3, True)
    ancestors = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)  # a chain root->a->b
    masks = tree_mask(fake, 5, ancestors, torch.tensor([5, 6, 7]), torch.float32)
    sliding = masks[SLIDING][0, 0] == 0
    full = masks[FULL][0, 0] == 0
    assert full[2].tolist() == [True] * 8
    # position 7 sees positions 5, 6, 7 only: prefix slots 0..4 are outside the window of 3
    assert sliding[2].tolist() == [False] * 5 + [True] * 3
    assert sliding[0].tolist() == [False, False, False, True, True, True, False, False]


def _save_tiny(model_type: str, folder, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, **extra)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    return folder


def test_unsupported_architectures_refused_at_load_in_one_line(tmp_path):
    from realrun.models import load_causal_lm

    mamba = _save_tiny("mamba", tmp_path / "mamba", vocab_size=64, hidden_size=32, state_size=4,
                       num_hidden_layers=1)
    with pytest.raises(LTDError, match="mamba is not supported: its recurrent") as err:
        load_causal_lm(mamba)
    assert "\n" not in str(err.value)
    linear = _save_tiny("qwen3", tmp_path / "linear", **COMMON, num_key_value_heads=2,
                        layer_types=["full_attention", "linear_attention"])
    with pytest.raises(LTDError, match="'linear_attention' layers cannot take a tree attention mask"):
        load_causal_lm(linear)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["qwen3", "gemma3_text"])
def test_draft_build_on_non_llama_target(model_type, default_target, tmp_path):
    """`ltd draft build` on a tiny Qwen3 / Gemma 3 (default tokenizer): the head's layer ids, norm and
    vocabulary come from that target's config, and the built head drafts losslessly for it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import json

    from realrun.draft_head import BuildConfig, build, user_prompt_items
    from realrun.draft_head.train import TrainConfig
    from realrun.eagle3 import load_head
    from realrun.models import load_causal_lm
    from realrun.prompts import read_prompts

    torch.manual_seed(0)
    vocab = default_target.vocab_size
    fields = {**COMMON, **ARCHITECTURES[model_type], "vocab_size": vocab, "num_hidden_layers": 4,
              "eos_token_id": default_target.tokenizer.eos_token_id}
    if "layer_types" in fields:
        fields["layer_types"] = ["sliding_attention", "full_attention"] * 2
    folder = tmp_path / model_type
    AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **fields)).save_pretrained(folder)
    default_target.tokenizer.save_pretrained(folder)
    qfile = tmp_path / "prompts.jsonl"
    qfile.write_text("".join(json.dumps({"question_id": i, "category": "coding" if i % 2 else "writing",
                                         "turns": [f"Question {i}: tell me about owls and {i} trees."]}) + "\n"
                             for i in range(12)))
    cfg = BuildConfig(minutes=0.3, draft_vocab=256, gen_batch=8, max_new_tokens=12, save_margin_s=5.0,
                      builtin_prompts=False, train=TrainConfig(ttt_steps=2))
    build(folder, tmp_path / "head", cfg, user_prompts=user_prompt_items(read_prompts(qfile)),
          progress=False, log=lambda msg: None)
    target = load_causal_lm(folder).model
    head = load_head(tmp_path / "head", target)
    assert head.cfg.aux_layer_ids == [2, 2, 1]  # inputs of layers 2, L//2, L-3 of this 4-layer target
    assert head.cfg.rms_norm_eps == target.config.rms_norm_eps
    assert head.cfg.vocab_size == vocab and head.cfg.draft_vocab_size == 256
    prompt = torch.randint(0, vocab, (8,), generator=torch.Generator().manual_seed(0))
    result = generate(target, prompt, Eagle3Drafter(head, vocab), DecodeConfig(16, top_k=3, max_depth=3),
                      StaticDepth(3), StaticSize(8))
    assert_greedy_equal(target, prompt, result.token_ids, hf_greedy(target, prompt, 16))


@pytest.mark.parametrize("model_type", ["gemma3_text", "gpt_neox"])
def test_layer_skip_draft_on_other_architectures(model_type, model_root, one_thread):
    """A layer-skip `lm` draft (the target's first layer) of a non-Llama target: per-layer kinds cut
    with the layers, GPT-NeoX's layer list found; decoding stays lossless."""
    from realrun.models import layer_skip_draft

    target, _, prompt, reference = tiny_target(model_type, model_root)
    draft = layer_skip_draft(target, 1)
    assert draft.config.num_hidden_layers == 1 and target.config.num_hidden_layers == 2
    result = generate(target, prompt, LMDrafter(draft, VOCAB), DecodeConfig(NEW_TOKENS, top_k=3, max_depth=3),
                      StaticDepth(3), StaticSize(8))
    assert_greedy_equal(target, prompt, result.token_ids, reference)


def _assert_greedy_equal_bf16(target, prompt, ours: list[int], reference: list[int]) -> None:
    """Equality except at a tie within bf16's resolution: where the target's top two logits are at most
    two bf16 steps apart (at their magnitude), batched and one-token forwards may round either way."""
    for i, (a, b) in enumerate(zip(ours, reference)):
        if a == b:
            continue
        with torch.no_grad():
            logits = target(torch.cat((prompt, torch.tensor(reference[:i])))[None]).logits[0, -1].float()
        top2 = logits.topk(2).values
        step = 2.0 ** (torch.floor(torch.log2(top2[0].abs().clamp_min(1e-3))) - 7)
        assert float(top2[0] - top2[1]) <= 2 * float(step), f"token {i} differs ({a} vs {b}) without a bf16 tie"
        return
    assert len(ours) == len(reference)


@pytest.mark.parametrize("drafter", ["lm", "eagle3"])
@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_greedy_lossless_bfloat16(model_type, drafter, model_root, one_thread):
    """The same matrix in bfloat16 (the GPU default): transformers' bf16 greedy, up to bf16 ties."""
    from realrun.models import load_causal_lm

    tiny_target(model_type, model_root)  # writes the folder
    target = load_causal_lm(model_root / model_type, "cpu", torch.bfloat16).model
    prompt = torch.randint(0, VOCAB, (10,), generator=torch.Generator().manual_seed(1))
    reference = hf_greedy(target, prompt, NEW_TOKENS)
    draft = (LMDrafter(noisy_copy(target, 0.15), VOCAB) if drafter == "lm"
             else Eagle3Drafter(random_head(target, 128, seed=1), VOCAB))
    result = generate(target, prompt, draft, DecodeConfig(NEW_TOKENS, top_k=3, max_depth=4), StaticDepth(4),
                      StaticSize(10))
    _assert_greedy_equal_bf16(target, prompt, result.token_ids, reference)
