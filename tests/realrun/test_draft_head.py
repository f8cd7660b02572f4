"""The EAGLE-3 head builder (realrun.draft_head) on a tiny random target: training-time test wiring,
training makes progress, save/load is exact and lossless, heads refuse other targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import tiny_llama
from ltd_sim.errors import LTDError
from realrun.draft_head.features import FeatureData, featurize, greedy_generate
from realrun.draft_head.logs import write_logs
from realrun.draft_head.train import TrainConfig, head_top1, init_head, train_head
from realrun.draft_head.ttt import ttt_forward
from realrun.draft_head.vocab import choose_draft_vocab, make_t2d_index
from realrun.drafters import Eagle3Drafter, float_mask
from realrun.eagle3 import HeadCache, aux_layer_ids, load_head, random_head, save_head


def _sequences(target, n: int, prompt_len: int = 6, new: int = 40, seed: int = 0):
    """The tiny target's own greedy continuations of random prompts: (ids, generated-span start, src)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, target.config.vocab_size, (prompt_len,), generator=gen).tolist() for _ in range(n)]
    outs = greedy_generate(target, prompts, new, set(), 0)
    return [(p + o, len(p), i % 2) for i, (p, o) in enumerate(zip(prompts, outs))]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_data(one_thread, tiny_target, tmp_path_factory):
    folder = tmp_path_factory.mktemp("features")
    items = _sequences(tiny_target, 48)
    featurize(tiny_target, items, aux_layer_ids(tiny_target.config.num_hidden_layers), 48, 16, folder, 0,
              progress=False)
    return FeatureData.load(folder)


def test_features_and_labels(tiny_target, tiny_data):
    assert len(tiny_data) == 48 and tiny_data.feats.dtype == np.float16
    assert tiny_data.feats.shape[-1] == 3 * tiny_target.config.hidden_size
    row = 0
    n = tiny_data.lens[row]
    # labels are the target's next tokens: in the generated span, exactly the greedy tokens
    assert (tiny_data.labels[row, 5:n - 1] == tiny_data.tokens[row, 6:n]).all()
    assert (tiny_data.gen_start == 6).all()  # prompts of 6 tokens: the generated span starts at index 6


def test_generated_span_agreement_counts_drafted_tokens_only(tiny_target, tiny_data):
    """`top1_generated` scores only labels the decoder would draft (index >= gen_start), so easy
    prompt-template positions cannot inflate it; with the span moved it counts other positions."""
    head = init_head(tiny_target, np.arange(256), seed=0)
    t2d = make_t2d_index(head)
    full = head_top1(head, tiny_data, t2d, 2)
    n_valid = int(sum(tiny_data.lens - 1))  # step 1 at index i <= lens - 2 predicts label i + 1
    drafted = int(sum(tiny_data.lens - 6))  # ... of which labels 6 .. lens - 1 are drafted tokens
    assert full.positions == n_valid and full.positions_generated == drafted
    moved = tiny_data.subset(np.arange(len(tiny_data)))
    moved.gen_start = np.full(len(moved), 10**6, np.int32)  # nothing generated (teacher-forced text)
    none = head_top1(head, moved, t2d, 2)
    assert none.positions_generated == 0 and none.top1 == full.top1


def test_training_time_test_matches_inference_wiring(tiny_target):
    """Unrolled step j at index i equals what Eagle3Drafter computes for a depth-j node below root i."""
    head = random_head(tiny_target, 64)
    n, h = 12, tiny_target.config.hidden_size
    gen = torch.Generator().manual_seed(3)
    feats, toks = torch.randn(1, n, 3 * h, generator=gen), torch.randint(0, 256, (1, n), generator=gen)
    outs = ttt_forward(head, feats, toks, 3)
    nxt = torch.zeros_like(toks)
    nxt[:, : n - 1] = toks[:, 1:]
    i = 6
    cache = HeadCache()
    mask = float_mask(torch.ones(i + 1, i + 1, dtype=torch.bool).tril(), torch.float32)
    hid, logits = head(feats[:, : i + 1], nxt[:, : i + 1], torch.arange(i + 1)[None], mask, cache)
    torch.testing.assert_close(logits[0, i], outs[0][0, i], atol=1e-5, rtol=1e-5)
    hid = hid[:, i:i + 1]
    for j in (1, 2):
        hid, logits = head(hid, toks[:, i + 1 + j:i + 2 + j], torch.tensor([[i + j]]), None, cache)
        torch.testing.assert_close(logits[0, 0], outs[j][0, i], atol=1e-5, rtol=1e-5)


def test_training_lowers_loss_and_beats_chance(tiny_target, tiny_data, tmp_path):
    vocab = choose_draft_vocab(__import__("collections").Counter(tiny_data.labels.ravel().tolist()), 128,
                               vocab_size=256)
    head = init_head(tiny_target, vocab, seed=0)
    val, trn = tiny_data.subset(np.arange(0, 6)), tiny_data.subset(np.arange(6, len(tiny_data)))
    cfg = TrainConfig(ttt_steps=3, batch=4, lr=3e-3, max_steps=200, eval_every_s=1e9, checkpoint_every_s=1e9)
    cfg_first = TrainConfig(**{**cfg.__dict__, "max_steps": 5})
    state = train_head(head, trn, cfg_first, val=val, ckpt=tmp_path / "ckpt.pt", progress=False)
    first = state.log[-1]
    state = train_head(head, trn, cfg, val=val, ckpt=tmp_path / "ckpt.pt", progress=False)  # resumes
    last = state.log[-1]
    assert state.step == 200
    assert last["train_loss"][0] < 0.7 * first["train_loss"][0]
    assert last["val"]["top1"][0] > 0.05 > 10 / 256  # chance is 1/256 (or 1/128 within the draft vocab)
    assert last["val"]["top1"][0] > first["val"]["top1"][0]
    # a resume may change the unrolled steps (`--ttt-steps`): the logs then mix lengths
    shallow = TrainConfig(**{**cfg.__dict__, "ttt_steps": 2, "max_steps": 210})
    state = train_head(head, trn, shallow, val=val, ckpt=tmp_path / "ckpt.pt", progress=False)
    assert len(state.log[-1]["train_loss"]) == 2 and len(state.log[0]["train_loss"]) == 3
    write_logs(state.log, tmp_path)
    assert (tmp_path / "train_log.csv").is_file() and (tmp_path / "training_curves.png").is_file()


def test_saved_head_loads_back_exactly_and_decodes_losslessly(tiny_target, tmp_path):
    from realrun.decoder import DecodeConfig, generate

    vocab = np.arange(0, 256, 2)
    head = init_head(tiny_target, vocab, seed=1)
    save_head(head, tmp_path / "head")
    back = load_head(tmp_path / "head", tiny_target)
    a, b = head.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    drafter = Eagle3Drafter(back, tiny_target.config.vocab_size)
    for prompt in ([1, 2, 3, 4], [200, 17, 9]):
        out = generate(tiny_target, prompt, drafter, DecodeConfig(max_new_tokens=24))
        ref = tiny_target.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                                   pad_token_id=0)[0, len(prompt):].tolist()
        assert out.token_ids == ref


def test_head_for_another_target_is_refused(tiny_target, tmp_path):
    head = init_head(tiny_target, np.arange(64))
    save_head(head, tmp_path / "head")
    other = tiny_llama(seed=5)
    with pytest.raises(LTDError, match="another target"):
        load_head(tmp_path / "head", other)


def test_draft_vocab_keeps_template_tokens():
    from collections import Counter

    counts = Counter({5: 100, 6: 50, 7: 10, 8: 1})
    ids = choose_draft_vocab(counts, 3, always={99})
    assert ids.tolist() == [5, 6, 99]


def test_cli_registers_draft_head_build():
    from realrun.cli import build_parser

    args = build_parser().parse_args(["draft", "build", "--minutes", "2", "--resume"])
    assert args.minutes == 2 and args.resume and callable(args.func)


def test_long_item_keeps_its_last_window_with_full_context(tiny_target, tmp_path):
    """An item longer than `chunk` (a long prompt and its response) is stored as its last `chunk`
    positions, with features of a forward over the whole item: at inference the head's features
    have seen the whole prompt too. Beyond `max_context`, items are split as before."""
    layers = aux_layer_ids(tiny_target.config.num_hidden_layers)
    (ids, gen_start, src), = _sequences(tiny_target, 1, prompt_len=50, new=30, seed=3)
    n, chunk = len(ids), 32
    featurize(tiny_target, [(ids, gen_start, src)], layers, chunk, 4, tmp_path, 0, progress=False, max_context=n)
    data = FeatureData.load(tmp_path)
    assert len(data) == 1 and data.lens[0] == chunk
    assert data.tokens[0].tolist() == ids[-chunk:]
    assert data.gen_start[0] == gen_start - (n - chunk)  # window-local start of the generated span
    with torch.no_grad():
        out = tiny_target(input_ids=torch.tensor([ids]), output_hidden_states=True)
    whole = torch.cat([out.hidden_states[i][0, n - chunk:] for i in layers], -1).to(torch.float16).numpy()
    np.testing.assert_array_equal(data.feats[0], whole)
    g = data.gen_start[0]
    assert (data.labels[0, g - 1:chunk - 1] == data.tokens[0, g:chunk]).all()

    split = tmp_path / "split"
    split.mkdir()
    featurize(tiny_target, [(ids, gen_start, src)], layers, chunk, 4, split, 0, progress=False)
    assert len(FeatureData.load(split)) == 3  # 80 tokens in pieces of <= 32 overlapping by one


def test_extended_build_splits_only_its_new_minutes():
    from realrun.draft_head.state import BuildClock

    fresh = BuildClock(100, spent_s=0.0)
    assert abs(fresh.until(0.5) - 3000) < 1
    extended = BuildClock(100, spent_s=3600.0, origin_s=3600.0)  # 60 min were spent when 40 more were given
    assert abs(extended.until(0.5) - 1200) < 1 and abs(extended.left() - 2400) < 1


def test_long_prompts_are_long_input_tasks_from_local_sources():
    from realrun.draft_head.corpus import build_long_prompts

    prompts = build_long_prompts(0)
    assert prompts == build_long_prompts(0) and len(prompts) > 300
    text = [p for p, _ in prompts]
    for marker in ("Summar", "Use the documents below", "Translate the following text", "Extract"):
        assert any(t.startswith(marker) or marker in t[:80] for t in text), marker
    assert sum(len(t) > 600 for t in text) > len(text) / 2


def test_cli_rejects_impossible_stage_fractions():
    from realrun.cli import build_parser

    args = build_parser().parse_args(["draft", "build", "--gen-fraction", "0.6", "--data-fraction", "0.5"])
    with pytest.raises(LTDError, match="gen-fraction"):
        args.func(args)


def test_heldout_split_is_stable_when_a_build_adds_sequences():
    from realrun.draft_head.features import heldout_mask

    small, grown = heldout_mask(3000, 0.04), heldout_mask(6000, 0.04)
    assert (grown[:3000] == small).all() and 0.02 < small.mean() < 0.06


def test_generation_batches_put_the_users_prompts_first():
    from realrun.draft_head.build import generation_batches

    lengths = [5, 9, 12] + [30, 10, 20, 40, 15] + [300, 200, 100, 400]
    batches = generation_batches(lengths, n_user=3, n_short=8, batch=2, seed=0)
    assert batches[:2] == [[0, 1], [2]]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    short = batches[2:5]
    assert short == [[4, 3], [5, 6], [7]]  # built-in order kept across batches, each batch by length
    assert sorted(map(tuple, batches[5:])) == [(8, 9), (10, 11)]


def test_interrupted_head_save_keeps_the_old_head(tiny_target, tmp_path, monkeypatch):
    """`save_head` swaps the whole folder in (`ltd_sim.io.replace_dir`): a crash before or during the swap
    leaves the old head loadable and intact, never no head."""
    import os

    import ltd_sim.io as io

    old = init_head(tiny_target, np.arange(64), seed=1)
    save_head(old, tmp_path / "head")
    new = init_head(tiny_target, np.arange(64), seed=2)

    def assert_old_head_intact():
        back = load_head(tmp_path / "head", tiny_target)
        assert all(torch.equal(v, back.state_dict()[k]) for k, v in old.state_dict().items())
        assert sorted(p.name for p in tmp_path.iterdir()) == ["head"]  # no temp or backup folder left

    def power_cut(*args):
        raise OSError("power cut")

    monkeypatch.setattr(io, "_swap_in", power_cut)  # the new folder is written, the swap never happens
    with pytest.raises(OSError, match="power cut"):
        save_head(new, tmp_path / "head")
    monkeypatch.undo()
    assert_old_head_intact()

    # without an atomic exchange: old folder renamed to its backup name, then the crash before the new
    # one is renamed in; the next read puts the old one back
    renames = []

    def rename_then_crash(src, dst):
        renames.append(src)
        if len(renames) == 2:
            power_cut()
        os.replace(src, dst)

    monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    monkeypatch.setattr(io.os, "rename", rename_then_crash)
    with pytest.raises(OSError, match="power cut"):
        save_head(new, tmp_path / "head")
    monkeypatch.undo()
    assert not (tmp_path / "head").exists()
    assert_old_head_intact()


def test_work_folder_of_another_version_is_refused(tmp_path):
    from realrun.draft_head.state import BuildState

    (tmp_path / "state.json").write_text('{"spent_s": 12.0, "finished": true}')  # no version: an older build
    with pytest.raises(LTDError, match="fresh work folder"):
        BuildState.load(tmp_path)
    assert BuildState.load(tmp_path / "none") is None


def test_feature_pass_uses_bf16_only_where_it_is_native(monkeypatch):
    """bf16 is emulated (several times slower than fp32) on CPUs without AVX512-BF16/AMX: "auto" picks fp32
    there, bf16 on CUDA and on CPUs that have it; an explicit dtype is kept."""
    import importlib

    build_mod = importlib.import_module("realrun.draft_head.build")

    assert not build_mod.cpu_has_fast_bf16("flags : fpu sse avx2 fma avx512f")
    assert build_mod.cpu_has_fast_bf16("flags : fpu avx2 avx512f avx512_bf16")
    assert build_mod.cpu_has_fast_bf16("flags : amx_bf16 amx_tile")
    cpu = torch.device("cpu")
    monkeypatch.setattr(build_mod, "cpu_has_fast_bf16", lambda cpuinfo=None: False)
    assert build_mod.feature_dtype("auto", cpu) == torch.float32
    assert build_mod.feature_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert build_mod.feature_dtype("bfloat16", cpu) == torch.bfloat16
    monkeypatch.setattr(build_mod, "cpu_has_fast_bf16", lambda cpuinfo=None: True)
    assert build_mod.feature_dtype("auto", cpu) == torch.bfloat16
