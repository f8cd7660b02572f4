"""The EAGLE-3 draft head, in the published layout (SafeAILab/EAGLE, SpecForge, vLLM, SGLang).

State dict (H = head hidden, Ht = target hidden):
  fc.weight [H, 3*Ht]                       fuses the target's low, middle and high hidden states
  midlayer.input_layernorm.weight [H]       normalises the token embedding
  midlayer.hidden_norm.weight [H]           normalises the incoming feature
  midlayer.self_attn.{q,k,v}_proj.weight    [heads*dim, 2H]: attention reads cat(embedding, feature)
  midlayer.self_attn.o_proj.weight [H, heads*dim]
  midlayer.post_attention_layernorm.weight, midlayer.mlp.{gate,up,down}_proj.weight
  norm.weight [H], lm_head.weight [draft_vocab, H]
  d2t int64 [draft_vocab]: target_id = draft_id + d2t[draft_id];  t2d bool [vocab]: ids the head covers
Token embeddings come from the target, frozen, and are not stored (unless H != Ht).

Wiring of one head step (pairs a feature with the *next* token, as EAGLE does):
  h = fc(features) if it has 3*Ht columns else h (the head's own previous output, fed back)
  x = cat(input_layernorm(embed(token)), hidden_norm(h));  h = h + o_proj(attn(x));  h = h + mlp(norm(h))
  logits = lm_head(norm(h)); the pre-norm h is what the next step receives.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ltd_sim.errors import LTDError
from ltd_sim.io import read_dir, replace_dir

FORMAT_VERSION = 1
ARCHITECTURE = "LlamaForCausalLMEagle3"


def aux_layer_ids(num_target_layers: int) -> list[int]:
    """Indices into HF `output_hidden_states` (0 = embeddings): inputs of layers 2, L//2 and L-3."""
    n = num_target_layers
    return [min(2, n), n // 2, max(n - 3, 0)]


@dataclass
class Eagle3Config:
    hidden_size: int
    target_hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int  # target vocabulary
    draft_vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    aux_layer_ids: list[int]
    target_name: str = ""
    target_fingerprint: str = ""  # checks that a head is loaded onto the target it was trained for

    @classmethod
    def for_target(cls, target_config, draft_vocab_size: int, target_fingerprint: str = "",
                   target_name: str = "") -> "Eagle3Config":
        hidden = target_config.hidden_size
        heads = target_config.num_attention_heads
        rope = getattr(target_config, "rope_parameters", None) or {}
        return cls(
            hidden_size=hidden,
            target_hidden_size=hidden,
            intermediate_size=target_config.intermediate_size,
            num_attention_heads=heads,
            num_key_value_heads=getattr(target_config, "num_key_value_heads", heads),
            head_dim=getattr(target_config, "head_dim", None) or hidden // heads,
            vocab_size=target_config.vocab_size,
            draft_vocab_size=min(draft_vocab_size, target_config.vocab_size),
            rms_norm_eps=target_config.rms_norm_eps,
            rope_theta=float(rope.get("rope_theta", getattr(target_config, "rope_theta", 10000.0))),
            max_position_embeddings=target_config.max_position_embeddings,
            aux_layer_ids=aux_layer_ids(target_config.num_hidden_layers),
            target_name=target_name,
            target_fingerprint=target_fingerprint,
        )

    def to_hf_json(self) -> dict:
        """config.json in the published EAGLE-3 form (a one-layer Llama config plus the draft fields)."""
        return {
            "architectures": [ARCHITECTURE],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "target_hidden_size": self.target_hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": 1,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "vocab_size": self.vocab_size,
            "draft_vocab_size": self.draft_vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": False,
            "eagle_config": {"use_aux_hidden_state": True,
                             "eagle_aux_hidden_state_layer_ids": self.aux_layer_ids},
            "ltd": {"format_version": FORMAT_VERSION, "target_name": self.target_name,
                    "target_fingerprint": self.target_fingerprint},
        }

    @classmethod
    def from_hf_json(cls, cfg: dict) -> "Eagle3Config":
        ltd = cfg.get("ltd", {})
        heads = cfg["num_attention_heads"]
        eagle = cfg.get("eagle_config") or {}
        return cls(
            hidden_size=cfg["hidden_size"],
            target_hidden_size=cfg.get("target_hidden_size") or cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads", heads),
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            vocab_size=cfg["vocab_size"],
            draft_vocab_size=cfg.get("draft_vocab_size") or cfg["vocab_size"],
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            aux_layer_ids=list(eagle.get("eagle_aux_hidden_state_layer_ids")
                               or cfg.get("eagle_aux_hidden_state_layer_ids") or []),
            target_name=ltd.get("target_name", ""),
            target_fingerprint=ltd.get("target_fingerprint", ""),
        )


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotary embedding's half rotation: (a, b) -> (-b, a) over the last dimension."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of `x` [B, heads, q, d] with `HeadAttention.rope`'s cos and sin."""
    return x * cos + rotate_half(x) * sin


def repeat_kv(x: torch.Tensor, times: int) -> torch.Tensor:
    """Grouped-query attention: each key/value head [B, kv, k, d] serves `times` query heads."""
    return x if times == 1 else x.repeat_interleave(times, dim=1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
           own_kv: list[tuple[torch.Tensor, torch.Tensor]] | tuple = ()) -> torch.Tensor:
    """The head's attention: softmax(q k^T / sqrt(d)) v over the keys `k` [B, h, K, d] that `mask` lets
    through (bool, True = visible; or an additive float mask; None = all), plus, for each (k_l, v_l) of
    `own_kv` ([B, h, q, d] each), the one key at the query's own index.

    `own_kv` is how a draft-tree node sees its ancestors: training unrolls the head on its own outputs
    at every index at once, and node i of unrolled step j attends to the committed keys <= i and to
    the keys of steps 1..j at index i only (a diagonal each; no [q, q] score matrix per step)."""
    if not own_kv:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scale = 1.0 / math.sqrt(q.shape[-1])
    shared = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        shared = (shared.masked_fill(~mask, torch.finfo(shared.dtype).min) if mask.dtype == torch.bool
                  else shared + mask)
    diagonal = [(q * kl).sum(-1, keepdim=True) * scale for kl, _ in own_kv]
    probs = torch.softmax(torch.cat([shared] + diagonal, dim=-1), dim=-1)
    width = k.shape[-2]
    out = probs[..., :width] @ v
    for l, (_, vl) in enumerate(own_kv):
        out = out + probs[..., width + l:width + l + 1] * vl
    return out


class HeadAttention(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.cfg = cfg
        d, h, kv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        self.q_proj = nn.Linear(2 * cfg.hidden_size, h * d, bias=False)
        self.k_proj = nn.Linear(2 * cfg.hidden_size, kv * d, bias=False)
        self.v_proj = nn.Linear(2 * cfg.hidden_size, kv * d, bias=False)
        self.o_proj = nn.Linear(h * d, cfg.hidden_size, bias=False)
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @property
    def kv_groups(self) -> int:
        """Query heads per key/value head."""
        return self.cfg.num_attention_heads // self.cfg.num_key_value_heads

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[..., None] * self.inv_freq  # [B, q, d/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]  # [B, 1, q, d]

    def project(self, x: torch.Tensor, positions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries [B, h, q, d], keys and values [B, kv, q, d] of `x` [B, q, 2H], rope applied."""
        b, q, _ = x.shape
        d, h, kv = self.cfg.head_dim, self.cfg.num_attention_heads, self.cfg.num_key_value_heads
        qs = self.q_proj(x).view(b, q, h, d).transpose(1, 2)
        ks = self.k_proj(x).view(b, q, kv, d).transpose(1, 2)
        vs = self.v_proj(x).view(b, q, kv, d).transpose(1, 2)
        cos, sin = self.rope(positions, x.dtype)
        return apply_rope(qs, cos, sin), apply_rope(ks, cos, sin), vs

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        """The output projection of attention output [B, h, q, d] -> [B, q, H]."""
        b, _, q, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, q, -1))

    def forward(self, x, positions, mask, cache: "HeadCache | None"):
        qs, ks, vs = self.project(x, positions)
        if cache is not None:
            ks, vs = cache.append(ks, vs)
        return self.merge(attend(qs, repeat_kv(ks, self.kv_groups), repeat_kv(vs, self.kv_groups), mask))


class HeadMLP(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MidLayer(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hidden_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = HeadAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = HeadMLP(cfg)

    def forward(self, embeds, hidden, positions, mask, cache):
        return self.step(embeds, hidden, lambda x: self.self_attn(x, positions, mask, cache))

    def step(self, embeds: torch.Tensor, hidden: torch.Tensor,
             attention: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The layer around its attention: `attention(x)` maps x = cat(normed embedding, normed
        feature) [B, q, 2H] to the attention's output [B, q, H] (`forward` uses `self_attn`; training
        attends over the unrolled steps' keys)."""
        residual = hidden
        x = torch.cat((self.input_layernorm(embeds), self.hidden_norm(hidden)), dim=-1)
        hidden = residual + attention(x)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class HeadCache:
    """The head's own KV cache: one layer, appended to and cropped like the target's."""

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def append(self, k: torch.Tensor, v: torch.Tensor):
        self.keys = k if self.keys is None else torch.cat((self.keys, k), dim=-2)
        self.values = v if self.values is None else torch.cat((self.values, v), dim=-2)
        return self.keys, self.values

    def crop(self, length: int) -> None:
        if self.keys is not None:
            self.keys = self.keys[..., :length, :]
            self.values = self.values[..., :length, :]


class Eagle3Head(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.cfg = cfg
        self.fc = nn.Linear(3 * cfg.target_hidden_size, cfg.hidden_size, bias=False)
        self.midlayer = MidLayer(cfg)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(cfg.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(cfg.vocab_size, dtype=torch.bool))
        self.embed_tokens: nn.Embedding | None = None  # the target's, attached by `attach_embeddings`

    def attach_embeddings(self, embedding: nn.Embedding) -> None:
        """Share the target's (frozen) token embedding; it is not part of the head's state dict."""
        if embedding.weight.shape[1] != self.cfg.hidden_size:
            raise LTDError("this EAGLE-3 head's hidden size differs from the target's embeddings")
        object.__setattr__(self, "embed_tokens", embedding)  # not registered: not saved, not trained

    def set_vocab_map(self, draft_to_target: torch.Tensor) -> None:
        """Draft vocabulary = the sorted target ids in `draft_to_target`."""
        ids = torch.as_tensor(draft_to_target, dtype=torch.long).sort().values
        if len(ids) != self.cfg.draft_vocab_size:
            raise ValueError("draft vocabulary size mismatch")
        self.d2t.copy_(ids - torch.arange(len(ids)))
        self.t2d.zero_()
        self.t2d[ids] = True

    def draft_to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]

    def forward(self, hidden, token_ids, positions, mask=None, cache: HeadCache | None = None):
        """hidden [B, q, 3Ht or H]; token_ids, positions [B, q]; mask float [B|1, 1, q, kv] or None.

        Returns (pre-norm output hidden [B, q, H], draft-vocab logits [B, q, Vd])."""
        if hidden.shape[-1] != self.cfg.hidden_size:
            hidden = self.fc(hidden)
        embeds = self.embed_tokens(token_ids).to(hidden.dtype)
        hidden = self.midlayer(embeds, hidden, positions, mask, cache)
        return hidden, self.lm_head(self.norm(hidden))


def target_fingerprint(target: nn.Module) -> str:
    """A short id of a target's weights, stored in a head so that it is refused by other targets."""
    emb = target.get_input_embeddings().weight.detach().float()
    rows = emb[:: max(1, emb.shape[0] // 64)][:64]
    stats = torch.stack((rows.mean(1), rows.std(1))).flatten()
    return f"v{emb.shape[0]}h{emb.shape[1]}:" + ",".join(f"{x:.4f}" for x in stats[:32].tolist())


def save_head(head: Eagle3Head, out_dir: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors as one folder that atomically replaces `out_dir`: a crash
    leaves the old head or the new one, never neither (`ltd_sim.io.replace_dir`)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    with replace_dir(out) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(head.cfg.to_hf_json(), indent=2))
    return out


def load_head(path: str | os.PathLike, target: nn.Module | None = None, device="cpu",
              dtype: torch.dtype = torch.float32) -> Eagle3Head:
    """Load a head in the published EAGLE-3 layout; with `target`, check that it fits and attach
    the target's embeddings. A head for another target fails with a one-line LTDError."""
    from safetensors.torch import load_file

    path = read_dir(path)
    cfg_path = path / "config.json"
    weights = path / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise LTDError(f"no EAGLE-3 head at {path} (expected config.json and model.safetensors)")
    try:
        raw = json.loads(cfg_path.read_text())
        cfg = Eagle3Config.from_hf_json(raw)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise LTDError(f"corrupted EAGLE-3 config at {cfg_path}: {exc}") from exc
    version = raw.get("ltd", {}).get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise LTDError(f"EAGLE-3 head at {path} has format version {version}; this toolkit reads {FORMAT_VERSION}")
    if target is not None:
        tcfg = target.config
        if cfg.vocab_size != tcfg.vocab_size or cfg.target_hidden_size != tcfg.hidden_size:
            raise LTDError(
                f"draft head at {path} was made for a target with vocab {cfg.vocab_size} and hidden "
                f"size {cfg.target_hidden_size}; this target has {tcfg.vocab_size} and {tcfg.hidden_size}")
        if not cfg.aux_layer_ids or max(cfg.aux_layer_ids) > tcfg.num_hidden_layers:
            raise LTDError(f"draft head at {path} reads target layers {cfg.aux_layer_ids}, "
                           f"but the target has {tcfg.num_hidden_layers}")
        if cfg.target_fingerprint and cfg.target_fingerprint != target_fingerprint(target):
            raise LTDError(f"draft head at {path} was trained for another target "
                           f"({cfg.target_name or 'unknown'}): its weights fingerprint does not match")
    head = Eagle3Head(cfg)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise LTDError(f"corrupted EAGLE-3 weights at {weights}: {exc}") from exc
    embed = state.pop("embed_tokens.weight", None)
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LTDError(f"EAGLE-3 head at {path} does not have the published layout "
                       f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    head.to(device=device, dtype=dtype).eval()
    head.d2t.data = head.d2t.data.long()
    if embed is not None:
        emb = nn.Embedding(*embed.shape)
        emb.weight.data.copy_(embed)
        head.attach_embeddings(emb.to(device=device, dtype=dtype))
    elif target is not None:
        head.attach_embeddings(target.get_input_embeddings())
    return head


def random_head(target: nn.Module, draft_vocab_size: int | None = None, seed: int = 0) -> Eagle3Head:
    """A randomly initialised head for `target` (tests; the starting point of training)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = target.config.vocab_size
    cfg = Eagle3Config.for_target(target.config, draft_vocab_size or vocab,
                                  target_fingerprint=target_fingerprint(target),
                                  target_name=str(getattr(target.config, "_name_or_path", "")))
    head = Eagle3Head(cfg)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
        ids = torch.randperm(vocab, generator=gen)[: cfg.draft_vocab_size]
        head.set_vocab_map(ids)
    head.attach_embeddings(target.get_input_embeddings())
    param = next(target.parameters())
    return head.to(device=param.device, dtype=param.dtype).eval()
