"""Tree attention masks for any supported target architecture, and the load-time support check.

transformers (5.x) passes a 4D attention mask through unchanged: the model then applies it as is, on
every layer. So a tree mask must itself encode what the model would otherwise build: the causal tree
structure (a node sees the prefix and its ancestors), and the sliding window of sliding-window layers
(a query at position p sees keys at positions > p - window, as `masking_utils.sliding_window_overlay`).
Models whose layers mix full and sliding attention (Gemma 2/3, Qwen2/3 with `use_sliding_window`) take a
dict {layer type: mask} instead of one mask; the others (Mistral, Phi-3, Qwen3-MoE: one window for every
layer, or none) take one tensor.

The mask is additive float (0 = attend, dtype minimum = blocked): a bool mask is silently misread by
some attention paths. FlashAttention-2 cannot take such a mask, and Gemma 2's attention soft-capping is
applied by the eager path only, so `attention_implementation` picks the path at load.

What cannot be verified as a tree is refused at load in one line (`check_supported`): recurrent or
state-space layers (their state cannot be cropped back to the accepted path), chunked attention,
encoder-decoder models, layer kinds this module does not know.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass

import torch

from ltd_sim.errors import LTDError

FULL = "full_attention"
SLIDING = "sliding_attention"
KNOWN_LAYER_TYPES = (FULL, SLIDING)

# Architectures whose per-token state is not a key/value cache that can be cut back to an accepted
# path (recurrent, state-space, linear-attention hybrids): a tree verify would corrupt it.
RECURRENT_MODEL_TYPES = frozenset({
    "mamba", "mamba2", "falcon_mamba", "rwkv", "recurrent_gemma", "jamba", "zamba", "zamba2", "bamba",
    "falcon_h1", "lfm2", "qwen3_next", "xlstm", "granitemoehybrid", "nemotron_h",
})


@dataclass(frozen=True)
class MaskSpec:
    """How one model wants its attention mask: which layer kinds it has, the sliding window, and whether
    it takes a dict per layer kind."""

    model_type: str
    layer_types: tuple[str, ...]  # distinct kinds, in the order the layers first use them
    window: int | None  # sliding window of the sliding layers (None: no sliding layers)
    per_type: bool  # True: the model takes {layer type: mask}; False: one mask for every layer

    def build(self, visible: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
              dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
        """visible bool [q, kv] (tree structure, True = attend), query positions [q], key positions
        [kv] -> the model's additive float mask(s) [1, 1, q, kv]."""
        masks = {}
        for kind in self.layer_types:
            seen = visible
            if kind == SLIDING and self.window is not None:
                seen = visible & (k_pos[None, :] > q_pos[:, None] - self.window)
            masks[kind] = float_mask(seen, dtype)
        return masks if self.per_type else masks[self.layer_types[0]]


def float_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool [q, kv] (True = attend) -> additive float mask [1, 1, q, kv] (0 attend, finfo.min block)."""
    out = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    out.masked_fill_(~visible, torch.finfo(dtype).min)
    return out[None, None]


def _text_config(config):
    """The decoder's own config (multimodal wrappers keep it under text_config)."""
    return getattr(config, "get_text_config", lambda: config)() or config


def _layer_types(config) -> tuple[str, ...]:
    """Distinct layer kinds, in order. Configs without `layer_types` have one kind for every layer:
    sliding when a window is set (Mistral, Phi-3, Qwen3-MoE with use_sliding_window), else full."""
    declared = getattr(config, "layer_types", None)
    if declared:
        return tuple(dict.fromkeys(declared))
    return (SLIDING,) if getattr(config, "sliding_window", None) else (FULL,)


def _takes_mask_dict(model) -> bool:
    """Whether the model's decoder accepts {layer type: mask} (transformers' per-layer-type models test
    `isinstance(attention_mask, dict)` before building their own masks; others would misuse a dict)."""
    base = getattr(model, "base_model", model)
    try:
        source = inspect.getsource(type(base).forward)
    except (OSError, TypeError):
        return False
    return "causal_mask_mapping" in source and "dict)" in source


def check_config(config) -> MaskSpec:
    """What the config alone says (checked before any weights load): a MaskSpec whose `per_type` still
    has to be confirmed against the model class (`check_supported`), or a one-line LTDError."""
    text = _text_config(config)
    model_type = str(getattr(text, "model_type", "") or type(config).__name__)
    if getattr(config, "is_encoder_decoder", False):
        raise LTDError(f"{model_type} is an encoder-decoder model; speculative decoding here needs a "
                       "decoder-only causal LM")
    if model_type in RECURRENT_MODEL_TYPES:
        raise LTDError(f"{model_type} is not supported: its recurrent/state-space layers keep a state that "
                       "cannot be cut back to the accepted path after a tree verify")
    kinds = _layer_types(text)
    unknown = [k for k in kinds if k not in KNOWN_LAYER_TYPES]
    if unknown:
        raise LTDError(f"{model_type} is not supported: its {unknown[0]!r} layers cannot take a tree "
                       "attention mask (only full and sliding-window attention can)")
    if getattr(text, "attention_chunk_size", None):
        raise LTDError(f"{model_type} is not supported: chunked attention cannot take a tree mask")
    window = getattr(text, "sliding_window", None) if SLIDING in kinds else None
    if SLIDING in kinds and not window:
        raise LTDError(f"{model_type} declares sliding-window layers but no sliding_window size")
    return MaskSpec(model_type, kinds, int(window) if window else None, len(kinds) > 1)


def check_supported(model) -> MaskSpec:
    """The model's MaskSpec, or a one-line LTDError naming why it cannot be a tree-verified target."""
    spec = check_config(model.config)
    if spec.per_type and not _takes_mask_dict(model):
        raise LTDError(f"{spec.model_type} is not supported: it mixes {' and '.join(spec.layer_types)} layers "
                       "but takes a single attention mask, so a tree mask cannot hold both")
    return spec


_SPECS: "weakref.WeakKeyDictionary[torch.nn.Module, MaskSpec]" = weakref.WeakKeyDictionary()


def mask_spec(model) -> MaskSpec:
    """`check_supported(model)`, computed once per model (the decoder asks every cycle)."""
    spec = _SPECS.get(model)
    if spec is None:
        spec = _SPECS[model] = check_supported(model)
    return spec


def attention_implementation(config) -> str:
    """The attention path to load a model with: eager where the model soft-caps attention logits
    (Gemma 2; SDPA cannot apply it), else SDPA. Never FlashAttention-2: it takes no 4D float mask."""
    config = _text_config(config)
    if getattr(config, "attn_logit_softcapping", None):
        return "eager"
    return "sdpa"


def tree_mask(model, past: int, ancestors: torch.Tensor, positions: torch.Tensor,
              dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
    """The verify forward's mask: `past` committed keys (cache slot j holds position j), then the m tree
    tokens whose ancestor relation (bool [m, m], self included) and positions [m] are given."""
    m = ancestors.shape[0]
    device = ancestors.device
    visible = torch.ones(m, past + m, dtype=torch.bool, device=device)
    visible[:, past:] = ancestors
    spec = mask_spec(model)
    if spec.window is None and not spec.per_type:  # full attention only: positions do not matter
        return float_mask(visible, dtype)
    k_pos = torch.cat((torch.arange(past, device=device), positions.to(device)))
    return spec.build(visible, positions.to(device), k_pos, dtype)
