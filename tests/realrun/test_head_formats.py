"""Published EAGLE-3 head layouts: each loads into the same in-memory head, `ltd generate --draft DIR` runs
on it, and heads that do not fit the target are refused in one line.

The fixtures are written here from the publishers' field and key lists (realrun/head_formats.py): ours
(v2, and v1 as older builds wrote it), the EAGLE authors' (config.json + pytorch_model.bin, no layer ids),
SpecForge's (model.safetensors, ids in eagle_config as "output of layer i"), vllm-project/speculators'
(`layers.0.*` keys, `transformer_layer_config`, top-level ids as "input to layer i", fc bias, stored
embeddings)."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import byte_tokenizer, tiny_llama
from ltd_sim.errors import LTDError
from realrun.eagle3 import load_head, random_head, save_head

LAYERS = 4
IDS = [2, 2, 1]  # hidden-state indices of the default for 4 layers: inputs of layers 2, L//2, L-3


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("target") / "tiny"
    tiny_llama(seed=0, layers=LAYERS).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def target(target_dir):
    from realrun.models import load_causal_lm

    return load_causal_lm(target_dir).model


@pytest.fixture(scope="module")
def source_head(target):
    return random_head(target, draft_vocab_size=128, seed=5)


def _llama_fields(cfg) -> dict:
    return {"hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size, "num_hidden_layers": 1,
            "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim, "hidden_act": "silu", "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_theta, "max_position_embeddings": cfg.max_position_embeddings,
            "vocab_size": cfg.vocab_size, "model_type": "llama"}


def _state(head, drop=()) -> dict:
    return {k: v.detach().clone() for k, v in head.state_dict().items() if k not in drop}


def write_eagle_authors(head, folder, **config_extra):
    """SafeAILab/EAGLE: LlamaForCausalLMEagle3 config (no layer ids, max_position_embeddings often 2048),
    pytorch_model.bin with fc / midlayer.* / norm / lm_head / d2t / t2d."""
    folder.mkdir(parents=True)
    cfg = {"architectures": ["LlamaForCausalLMEagle3"], **_llama_fields(head.cfg),
           "draft_vocab_size": head.cfg.draft_vocab_size, "torch_dtype": "float16", "tie_word_embeddings": False,
           "bos_token_id": 1, "eos_token_id": 2, **config_extra}
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.save(_state(head), folder / "pytorch_model.bin")
    return folder


def write_specforge(head, folder, ids=None, drop=(), embed=None, **config_extra):
    """SpecForge: the same config, ids (if any) in eagle_config in SGLang's "output of layer i" numbering,
    model.safetensors (some exports also hold the embedding)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    cfg = {"architectures": ["LlamaForCausalLMEagle3"], **_llama_fields(head.cfg),
           "draft_vocab_size": head.cfg.draft_vocab_size, "tie_word_embeddings": False, **config_extra}
    if ids is not None:
        cfg["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": ids, "use_aux_hidden_state": True}
    (folder / "config.json").write_text(json.dumps(cfg))
    state = _state(head, drop)
    if embed is not None:
        state["embed_tokens.weight"] = embed
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


def write_speculators(head, folder, ids=IDS, fc_bias=True, **config_extra):
    """vllm-project/speculators: speculators_model_type eagle3, transformer_layer_config, top-level ids in
    vLLM's "input to layer i" numbering (null allowed), layers.0.* keys, fc.bias, the embedding stored."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    cfg = {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3", "speculators_version": "0.1.0",
           "draft_vocab_size": head.cfg.draft_vocab_size, "norm_before_residual": False, "target_hidden_size": None,
           "eagle_aux_hidden_state_layer_ids": ids, "transformer_layer_config": _llama_fields(head.cfg),
           "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                                  "verifier": {"architectures": ["LlamaForCausalLM"], "name_or_path": "tiny"}},
           **config_extra}
    (folder / "config.json").write_text(json.dumps(cfg))
    state = {k.replace("midlayer.", "layers.0."): v for k, v in _state(head).items()}
    if fc_bias:
        state["fc.bias"] = torch.zeros(head.cfg.hidden_size)
    state["embed_tokens.weight"] = head.embed_tokens.weight.detach().clone()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


def write_ltd_v1(head, folder):
    """Our format version 1: hidden-state indices in eagle_config, no ltd.hidden_state_indices."""
    save_head(head, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = head.cfg.aux_layer_ids
    cfg.pop("eagle_aux_hidden_state_layer_ids")
    cfg["ltd"] = {"format_version": 1, "target_name": cfg["ltd"]["target_name"],
                  "target_fingerprint": cfg["ltd"]["target_fingerprint"]}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


LAYOUTS = {
    "ltd": lambda head, d: save_head(head, d),
    "ltd_v1": write_ltd_v1,
    "eagle_authors": write_eagle_authors,
    "specforge": lambda head, d: write_specforge(head, d, ids=[i - 1 for i in IDS]),
    "speculators": write_speculators,
}


def _same_outputs(a, b) -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 5, a.fc.in_features, generator=gen)
    ids = torch.randint(0, 256, (1, 5), generator=gen)
    pos = torch.arange(5)[None]
    with torch.no_grad():
        (ha, la), (hb, lb) = a(feats, ids, pos), b(feats, ids, pos)
    torch.testing.assert_close(ha, hb)
    torch.testing.assert_close(la, lb)
    assert torch.equal(a.draft_to_target_ids(torch.arange(a.cfg.draft_vocab_size)),
                       b.draft_to_target_ids(torch.arange(b.cfg.draft_vocab_size)))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_loads_into_the_same_head(layout, source_head, target, tmp_path):
    folder = LAYOUTS[layout](source_head, tmp_path / layout)
    head = load_head(folder, target)
    assert head.cfg.aux_layer_ids == IDS
    _same_outputs(source_head, head)


@pytest.mark.parametrize("layout", ["ltd", "eagle_authors", "specforge", "speculators"])
def test_generate_with_each_layout(layout, source_head, target_dir, tmp_path, capsys):
    """`ltd generate --draft DIR` (kind detected from the config) gives the target's own greedy tokens."""
    from realrun.cli import main

    folder = LAYOUTS[layout](source_head, tmp_path / layout)
    argv = ["generate", "--target", str(target_dir), "--prompt", "hello owls", "--max-new-tokens", "16",
            "--top-k", "3", "--depth", "3", "--json"]
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)["token_ids"]
    assert main(argv + ["--draft", str(folder), "--size", "6"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["token_ids"] == plain and out["cycles"][0]["depth"] == 3


def test_layer_id_numberings_normalised(source_head, target, tmp_path):
    """SGLang's "output of layer i" (+1), vLLM's "input to layer i" (as is); both present must agree."""
    sglang = write_specforge(source_head, tmp_path / "sglang", ids=[0, 1, 2])
    assert load_head(sglang, target).cfg.aux_layer_ids == [1, 2, 3]
    vllm = write_specforge(source_head, tmp_path / "vllm", eagle_aux_hidden_state_layer_ids=[1, 2, 3])
    assert load_head(vllm, target).cfg.aux_layer_ids == [1, 2, 3]
    both = write_specforge(source_head, tmp_path / "both", ids=[1, 2, 3], eagle_aux_hidden_state_layer_ids=[1, 2, 3])
    with pytest.raises(LTDError, match="two different layer-id lists"):
        load_head(both, target)
    defaulted = write_speculators(source_head, tmp_path / "spec_null", ids=None)
    head = load_head(defaulted, target)
    assert head.cfg.aux_layer_ids == IDS and "default" in head.load_notes[0]


def test_absent_vocab_maps_and_lm_head(target, tmp_path):
    """No d2t/t2d when the draft vocabulary is the target's; no lm_head -> the target's *output* layer
    (this target does not tie it to the embedding, so the embedding would be wrong)."""
    full = random_head(target, draft_vocab_size=256, seed=2)
    head = load_head(write_specforge(full, tmp_path / "full", drop=("d2t", "t2d", "lm_head.weight")), target)
    assert torch.equal(head.d2t, torch.zeros(256, dtype=torch.long)) and bool(head.t2d.all())
    torch.testing.assert_close(head.lm_head.weight, target.get_output_embeddings().weight)
    assert not torch.allclose(head.lm_head.weight, target.get_input_embeddings().weight)
    part = random_head(target, draft_vocab_size=128, seed=3)
    head = load_head(write_specforge(part, tmp_path / "part", drop=("lm_head.weight", "d2t")), target)
    rows = torch.arange(128) + part.d2t
    torch.testing.assert_close(head.lm_head.weight, target.get_output_embeddings().weight[rows])
    assert torch.equal(head.d2t, part.d2t)  # rebuilt from t2d
    with pytest.raises(LTDError, match="stores no d2t/t2d vocabulary map"):
        load_head(write_specforge(part, tmp_path / "nomap", drop=("d2t", "t2d")), target)


def test_misfits_refused_in_one_line(source_head, target, tmp_path):
    other = tiny_llama(seed=1, layers=LAYERS, hidden=32)
    cases = {
        "hidden": (write_specforge(random_head(other, 128), tmp_path / "hidden"), "hidden size 32"),
        "vocab": (write_specforge(random_head(tiny_llama(seed=1, layers=LAYERS, vocab=300), 128), tmp_path / "vocab"),
                  "vocab 300"),
        "layers": (write_specforge(source_head, tmp_path / "layers", ids=[1, 6, 9]), "but the target has 4 layers"),
        "norm": (write_speculators(source_head, tmp_path / "norm", norm_before_residual=True), "norm_before_residual"),
        "fingerprint": (save_head(random_head(tiny_llama(seed=7, layers=LAYERS), 128), tmp_path / "fp"),
                        "trained for another target"),
        "not_eagle3": (_write_json(tmp_path / "lm", {"architectures": ["LlamaForCausalLM"]}), "not an EAGLE-3 head"),
    }
    for name, (folder, message) in cases.items():
        with pytest.raises(LTDError, match=message) as err:
            load_head(folder, target)
        assert "\n" not in str(err.value), name


def test_undetermined_layer_ids_refused(source_head, target, tmp_path):
    """A foreign head that fuses two layers and names none: no published default fits, so no guess."""
    from torch import nn

    two = random_head(target, 128, seed=4)
    two.fc = nn.Linear(2 * 64, 64, bias=False)
    folder = write_specforge(two, tmp_path / "two")
    with pytest.raises(LTDError, match="does not determine them"):
        load_head(folder, target)
    named = write_specforge(two, tmp_path / "named", ids=[0, 3])
    assert load_head(named, target).cfg.aux_layer_ids == [1, 4]


def test_corrupt_weights_and_short_context(source_head, target, target_dir, tmp_path):
    folder = write_eagle_authors(source_head, tmp_path / "short", max_position_embeddings=64)
    from realrun.loading import load_pair

    pair = load_pair(str(target_dir), str(folder))
    assert pair.draft_kind == "eagle3" and pair.context_limit == 64
    assert any("capped at 64" in note for note in pair.notes)
    weights = folder / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:2000])
    with pytest.raises(LTDError, match="corrupted EAGLE-3 weights") as err:
        load_head(folder, target)
    assert "\n" not in str(err.value)


def _write_json(folder, cfg):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").write_bytes(b"")
    return folder
