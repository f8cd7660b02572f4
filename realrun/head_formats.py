"""Reading the published EAGLE-3 head layouts into the one in-memory head (`realrun.eagle3.Eagle3Head`).

Four layouts are read (field and key lists checked against the publishers' code):

| layout | config.json | weights | layer ids |
|---|---|---|---|
| ltd (ours) | Llama-style + `ltd` block | model.safetensors | `ltd.hidden_state_indices` (v2); v1 kept them in `eagle_config` |
| EAGLE authors (SafeAILab) | `architectures: ["LlamaForCausalLMEagle3"]`, Llama-style | pytorch_model.bin | none: fixed to hidden states [2, L//2, L-3] |
| SpecForge (SGLang) | the same | model.safetensors | `eagle_config.eagle_aux_hidden_state_layer_ids`, "output of layer i" |
| vllm-project/speculators | `speculators_model_type: "eagle3"`, `transformer_layer_config` | model.safetensors, `layers.0.*` | top-level `eagle_aux_hidden_state_layer_ids`, "input to layer i" |

Keys: `fc.weight`, `midlayer.*` (speculators: `layers.0.*`) with `hidden_norm`, `norm.weight`,
`lm_head.weight`, `d2t` (int64 offsets: target id = draft id + d2t[id]), `t2d` (bool over the target
vocabulary). d2t/t2d are absent when the draft vocabulary is the target's; some exporters omit
`lm_head` (the head then shares the target's output layer, rows of its draft vocabulary).

Layer ids, one numbering here: indices into transformers' `output_hidden_states` (0 = embeddings,
i = output of decoder layer i counted from 1 = input of layer i counted from 0). SGLang/SpecForge write
"output of layer i" counted from 0 (the default [1, L//2-1, L-4]: index = id + 1); vLLM/speculators
write "input to layer i" counted from 0 (the default [2, L//2, L-3]: index = id). A head with no ids
gets the default only where its layout fixes one (three fused layers, a known publisher); otherwise it
is refused, since a wrong guess loses almost all acceptance silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ltd_sim.errors import LTDError

LTD, EAGLE, SPECFORGE, SPECULATORS = "ltd", "eagle", "specforge", "speculators"
EAGLE3_ARCHITECTURES = ("LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM")
READ_VERSIONS = (1, 2)


@dataclass
class HeadSource:
    """What was read from a head folder, before it becomes an `Eagle3Head`."""

    layout: str
    config: dict  # Eagle3Config fields (aux_layer_ids as hidden-state indices, or [] when unresolved)
    state: dict[str, torch.Tensor]  # our key names; embed_tokens.weight kept if the head stores one
    feature_count: int  # target layers the fc fuses (fc.weight columns / target hidden size)
    notes: list[str] = field(default_factory=list)


def weights_file(path: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    raise LTDError(f"no EAGLE-3 head at {path} (expected config.json and model.safetensors or pytorch_model.bin)")


def detect_layout(raw: dict, weights: Path, path: Path) -> str:
    if "ltd" in raw:
        return LTD
    if "speculators_model_type" in raw:
        kind = raw["speculators_model_type"]
        if kind != "eagle3":
            raise LTDError(f"the speculators head at {path} is a {kind!r} speculator; only eagle3 heads are read")
        return SPECULATORS
    archs = raw.get("architectures") or []
    if any(a in EAGLE3_ARCHITECTURES for a in archs):
        return EAGLE if weights.suffix == ".bin" else SPECFORGE
    raise LTDError(f"{path} is not an EAGLE-3 head: config.json names architectures {archs or 'none'} "
                   f"(expected one of {', '.join(EAGLE3_ARCHITECTURES)} or a speculators eagle3 config)")


def _llama_fields(cfg: dict) -> dict:
    """The head's own shape from a Llama-style (one decoder layer) config."""
    heads = cfg["num_attention_heads"]
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0) if isinstance(rope, dict) else 10000.0)
    return dict(
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_attention_heads=heads,
        num_key_value_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        max_position_embeddings=int(cfg.get("max_position_embeddings") or 2048),
    )


def parse_config(raw: dict, layout: str, path: Path) -> tuple[dict, list[int] | None, list[str]]:
    """(Eagle3Config fields, layer ids as hidden-state indices or None, notes)."""
    notes: list[str] = []
    if layout == SPECULATORS:
        for flag in ("norm_before_residual", "norm_before_fc"):
            if raw.get(flag):
                raise LTDError(f"the speculators head at {path} sets {flag}; this toolkit's head normalises "
                               "the feature after the residual (norm_before_residual false) and cannot run it")
        layer = raw.get("transformer_layer_config") or {}
        if layer.get("num_hidden_layers", 1) != 1:
            raise LTDError(f"the head at {path} has {layer['num_hidden_layers']} decoder layers; "
                           "only one-layer EAGLE-3 heads are read")
        fields = _llama_fields(layer)
        fields["vocab_size"] = int(layer["vocab_size"])
        ids = raw.get("eagle_aux_hidden_state_layer_ids")  # vLLM numbering: index = id
        ids = list(ids) if ids else None
    else:
        fields = _llama_fields(raw)
        fields["vocab_size"] = int(raw["vocab_size"])
        ids = _flat_layer_ids(raw, layout, path)
    layer_cfg = raw.get("transformer_layer_config") or raw if layout == SPECULATORS else raw
    scaling = layer_cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type") or scaling.get("type") if isinstance(scaling, dict) else None
    if kind and kind != "default":  # acceptance may drop; the output cannot change (lossless)
        notes.append(f"the head's rope_scaling ({kind}) is not applied: plain rope with theta "
                     f"{fields['rope_theta']:g} is used")
    fields["target_hidden_size"] = int(raw.get("target_hidden_size") or fields["hidden_size"])
    fields["draft_vocab_size"] = int(raw.get("draft_vocab_size") or fields["vocab_size"])
    ltd = raw.get("ltd") or {}
    fields["target_name"] = ltd.get("target_name", "") or _verifier_name(raw)
    fields["target_fingerprint"] = ltd.get("target_fingerprint", "")
    return fields, ids, notes


def _verifier_name(raw: dict) -> str:
    verifier = (raw.get("speculators_config") or {}).get("verifier") or {}
    return str(verifier.get("name_or_path") or "")


def _flat_layer_ids(raw: dict, layout: str, path: Path) -> list[int] | None:
    """Layer ids of a Llama-style head config, as hidden-state indices (see the module docstring)."""
    ltd = raw.get("ltd") or {}
    eagle = raw.get("eagle_config") or {}
    if layout == LTD:
        version = ltd.get("format_version", 1)
        if version not in READ_VERSIONS:
            raise LTDError(f"EAGLE-3 head at {path} has format version {version}; this toolkit reads "
                           f"{', '.join(map(str, READ_VERSIONS))}")
        if version == 1:  # v1 wrote hidden-state indices into eagle_config
            ids = eagle.get("eagle_aux_hidden_state_layer_ids")
        else:
            ids = ltd.get("hidden_state_indices")
        return list(ids) if ids else None
    sglang = eagle.get("eagle_aux_hidden_state_layer_ids")  # SpecForge / SGLang: output of layer id
    vllm = raw.get("eagle_aux_hidden_state_layer_ids")  # vLLM: input to layer id
    from_sglang = [int(i) + 1 for i in sglang] if sglang else None
    from_vllm = [int(i) for i in vllm] if vllm else None
    if from_sglang and from_vllm and from_sglang != from_vllm:
        raise LTDError(f"the head at {path} gives two different layer-id lists (eagle_config {list(sglang)}, "
                       f"top level {list(vllm)}); remove the wrong one")
    return from_sglang or from_vllm


def load_state(weights: Path) -> dict[str, torch.Tensor]:
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(weights))
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or corrupt files raise many error types
        raise LTDError(f"corrupted EAGLE-3 weights at {weights}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
    if not isinstance(state, dict):
        raise LTDError(f"EAGLE-3 weights at {weights} hold a {type(state).__name__}, not a state dict")
    return state


def normalise_keys(state: dict[str, torch.Tensor], layout: str, path: Path) -> dict[str, torch.Tensor]:
    """speculators' `layers.0.*` -> `midlayer.*`; the verifier's own tensors dropped; one layer only."""
    out = {}
    for key, value in state.items():
        if key.startswith("verifier"):  # speculators may keep the verifier's lm_head/norm for training
            continue
        if key.startswith("model."):  # some exporters nest the head under `model.`
            key = key[len("model."):]
        if key.startswith("layers."):
            index, _, rest = key[len("layers."):].partition(".")
            if index != "0":
                raise LTDError(f"the head at {path} has more than one decoder layer ({key}); "
                               "only one-layer EAGLE-3 heads are read")
            key = "midlayer." + rest
        out[key] = value
    return out


def vocab_maps(state: dict, vocab: int, draft_vocab: int, path: Path) -> None:
    """Fill d2t/t2d in `state`: absent both when the draft vocabulary is the target's (identity); t2d
    alone determines d2t (the covered ids, sorted); d2t alone determines t2d."""
    d2t, t2d = state.get("d2t"), state.get("t2d")
    if d2t is None and t2d is None:
        if draft_vocab != vocab:
            raise LTDError(f"the head at {path} drafts over {draft_vocab} of {vocab} tokens but stores no "
                           "d2t/t2d vocabulary map")
        state["d2t"] = torch.zeros(vocab, dtype=torch.long)
        state["t2d"] = torch.ones(vocab, dtype=torch.bool)
        return
    if d2t is None:
        ids = torch.nonzero(t2d.bool()).flatten()
        state["d2t"] = ids - torch.arange(len(ids))
    if t2d is None:
        ids = torch.arange(len(d2t)) + d2t.long()
        t2d = torch.zeros(vocab, dtype=torch.bool)
        t2d[ids] = True
        state["t2d"] = t2d
    state["d2t"] = state["d2t"].long()
    state["t2d"] = state["t2d"].bool()
    if len(state["d2t"]) != draft_vocab or len(state["t2d"]) != vocab:
        raise LTDError(f"the head at {path} has a vocabulary map of {len(state['d2t'])} draft / "
                       f"{len(state['t2d'])} target ids; its config says {draft_vocab} / {vocab}")
    targets = torch.arange(draft_vocab) + state["d2t"]
    if int(targets.min()) < 0 or int(targets.max()) >= vocab:
        raise LTDError(f"the head at {path} maps draft ids outside the target vocabulary (d2t is corrupt)")


def read_head_dir(path: Path) -> HeadSource:
    """Read config and weights of any of the four layouts; layer ids may still be unresolved ([])."""
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise LTDError(f"no EAGLE-3 head at {path} (expected config.json and model.safetensors or pytorch_model.bin)")
    weights = weights_file(path)
    try:
        raw = json.loads(cfg_path.read_text())
        layout = detect_layout(raw, weights, path)
        fields, ids, notes = parse_config(raw, layout, path)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise LTDError(f"corrupted EAGLE-3 config at {cfg_path}: {type(exc).__name__} {exc}") from exc
    state = normalise_keys(load_state(weights), layout, path)
    fc = state.get("fc.weight")
    if fc is None or fc.ndim != 2:
        raise LTDError(f"the head at {path} has no fc.weight: not an EAGLE-3 head (EAGLE-1/2 heads are not read)")
    if fc.shape[1] % fields["target_hidden_size"]:
        raise LTDError(f"the head at {path} fuses {fc.shape[1]} features, not a multiple of its target "
                       f"hidden size {fields['target_hidden_size']}")
    vocab_maps(state, fields["vocab_size"], fields["draft_vocab_size"], path)
    fields["aux_layer_ids"] = ids or []
    return HeadSource(layout, fields, state, fc.shape[1] // fields["target_hidden_size"], notes)


def default_layer_ids(num_layers: int) -> list[int]:
    """The published default, as hidden-state indices: inputs of layers 2, L//2 and L-3."""
    return [min(2, num_layers), num_layers // 2, max(num_layers - 3, 0)]


def resolve_layer_ids(source: HeadSource, num_target_layers: int | None, path: Path) -> list[int]:
    """The head's layer ids as hidden-state indices, checked against the target's depth."""
    ids = list(source.config["aux_layer_ids"])
    if not ids:
        if source.layout == LTD or source.feature_count != 3:
            raise LTDError(f"the head at {path} names no target layers and its layout ({source.layout}, "
                           f"{source.feature_count} fused layers) does not determine them; add "
                           "eagle_aux_hidden_state_layer_ids to its config.json")
        if num_target_layers is None:
            raise LTDError(f"the head at {path} names no target layers: load it with its target")
        ids = default_layer_ids(num_target_layers)
        source.notes.append(f"layer ids not in the config: the {source.layout} default {ids} "
                            "(hidden-state indices) was used")
    if len(ids) != source.feature_count:
        raise LTDError(f"the head at {path} names {len(ids)} target layers {ids} but its fc fuses "
                       f"{source.feature_count}")
    if num_target_layers is not None and not all(0 <= i <= num_target_layers for i in ids):
        raise LTDError(f"the head at {path} reads target hidden states {ids}, "
                       f"but the target has {num_target_layers} layers (indices 0..{num_target_layers})")
    return ids
