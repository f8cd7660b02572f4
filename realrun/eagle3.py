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

FORMAT_VERSION = 2  # 2: layer ids in ltd.hidden_state_indices, the publishers' numberings beside them
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
        """A head shaped like one decoder layer of the target, from its config (any architecture: the
        names differ, e.g. GPT-NeoX's layer_norm_eps, GPT-2's n_inner; Gemma 3 keeps rope per layer kind)."""
        tc = getattr(target_config, "get_text_config", lambda: target_config)() or target_config
        hidden = tc.hidden_size
        heads = tc.num_attention_heads
        rope = getattr(tc, "rope_parameters", None) or {}
        if isinstance(rope.get("full_attention"), dict):  # per layer kind: the full layers' rope
            rope = rope["full_attention"]
        eps = getattr(tc, "rms_norm_eps", None) or getattr(tc, "layer_norm_eps", None) or 1e-6
        return cls(
            hidden_size=hidden,
            target_hidden_size=hidden,
            intermediate_size=getattr(tc, "intermediate_size", None) or getattr(tc, "n_inner", None) or 4 * hidden,
            num_attention_heads=heads,
            num_key_value_heads=getattr(tc, "num_key_value_heads", None) or heads,
            head_dim=getattr(tc, "head_dim", None) or hidden // heads,
            vocab_size=tc.vocab_size,
            draft_vocab_size=min(draft_vocab_size, tc.vocab_size),
            rms_norm_eps=float(eps),
            rope_theta=float(rope.get("rope_theta", getattr(tc, "rope_theta", 10000.0))),
            max_position_embeddings=int(getattr(tc, "max_position_embeddings", None) or 2048),
            aux_layer_ids=aux_layer_ids(tc.num_hidden_layers),
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
            # The same layers in the publishers' two numberings (realrun.head_formats): SGLang/SpecForge
            # read eagle_config as "output of layer i" (index - 1), vLLM the top level as the index.
            "eagle_config": {"use_aux_hidden_state": True,
                             "eagle_aux_hidden_state_layer_ids": [i - 1 for i in self.aux_layer_ids]},
            "eagle_aux_hidden_state_layer_ids": list(self.aux_layer_ids),
            "ltd": {"format_version": FORMAT_VERSION, "target_name": self.target_name,
                    "target_fingerprint": self.target_fingerprint,
                    "hidden_state_indices": list(self.aux_layer_ids)},
        }

    @classmethod
    def from_hf_json(cls, cfg: dict) -> "Eagle3Config":
        """Any published layout's config.json (see realrun.head_formats); layer ids as hidden-state
        indices, [] where the config names none (the layout and the target then decide)."""
        from pathlib import Path

        from realrun.head_formats import LTD, SPECFORGE, SPECULATORS, parse_config

        layout = LTD if "ltd" in cfg else SPECULATORS if "speculators_model_type" in cfg else SPECFORGE
        fields, ids, _ = parse_config(cfg, layout, Path("config.json"))
        return cls(aux_layer_ids=ids or [], **fields)


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
    for j, (_, vl) in enumerate(own_kv):
        out = out + probs[..., width + j:width + j + 1] * vl
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
    """The head's own KV cache: one layer in a pre-allocated `KVStore` (grown in steps), so that an
    append writes only the new entries and `crop` (dropping a cycle's tree nodes) is a length change."""

    def __init__(self, capacity: int = 1024, step: int | None = None):
        from realrun.kv_cache import STEP, KVStore

        self.store = KVStore(1, capacity, step or STEP)
        self.length = 0

    def __len__(self) -> int:
        return self.length

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self.store.data is None else self.store.data[0, 0, :, :, : self.length]

    @property
    def values(self) -> torch.Tensor | None:
        return None if self.store.data is None else self.store.data[0, 1, :, :, : self.length]

    def append(self, k: torch.Tensor, v: torch.Tensor):
        """Write k, v [B, kv_heads, n, d] after the cached entries; returns views of all of them."""
        end = self.length + k.shape[-2]
        data = self.store.ensure(k, end)[0]
        data[0, :, :, self.length:end].copy_(k)
        data[1, :, :, self.length:end].copy_(v)
        self.length = end
        return data[0, :, :, :end], data[1, :, :, :end]

    def crop(self, length: int) -> None:
        self.length = min(self.length, length)


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
    """Load a head in any published EAGLE-3 layout (ours, the EAGLE authors', SpecForge's,
    vllm-project/speculators'; `realrun.head_formats`); with `target`, check that it fits, resolve the
    layer ids the layout leaves implicit and attach the target's embeddings. A head that does not fit
    fails with a one-line LTDError."""
    from realrun.head_formats import read_head_dir, resolve_layer_ids

    path = read_dir(path)
    source = read_head_dir(path)
    tcfg = None
    if target is not None:
        tcfg = getattr(target.config, "get_text_config", lambda: target.config)() or target.config
        _check_fits(source.config, tcfg, target, path)
    source.config["aux_layer_ids"] = resolve_layer_ids(source, tcfg.num_hidden_layers if tcfg else None, path)
    cfg = Eagle3Config(**source.config)
    head = Eagle3Head(cfg)
    state = source.state
    embed = state.pop("embed_tokens.weight", None)
    _fit_fc(head, state["fc.weight"], "fc.bias" in state)
    if "lm_head.weight" not in state:  # the exporter left the output layer to the target's
        state["lm_head.weight"] = _shared_lm_head(target, state["d2t"], cfg, path)
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LTDError(f"EAGLE-3 head at {path} does not have the published layout "
                       f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    head.to(device=device, dtype=dtype).eval()
    head.d2t.data = head.d2t.data.long()
    head.load_notes = source.notes
    if embed is not None:
        if target is not None and embed.shape != target.get_input_embeddings().weight.shape:
            raise LTDError(f"the head at {path} stores embeddings of shape {tuple(embed.shape)}; the target's "
                           f"are {tuple(target.get_input_embeddings().weight.shape)}")
        emb = nn.Embedding(*embed.shape)
        emb.weight.data.copy_(embed)
        head.attach_embeddings(emb.to(device=device, dtype=dtype))
    elif target is not None:
        head.attach_embeddings(target.get_input_embeddings())
    return head


def _check_fits(fields: dict, tcfg, target: nn.Module, path: Path) -> None:
    """One-line refusals for a head made for another target: vocabulary, hidden size, fingerprint."""
    vocab = int(target.get_output_embeddings().weight.shape[0])
    if fields["vocab_size"] not in (tcfg.vocab_size, vocab) or fields["target_hidden_size"] != tcfg.hidden_size:
        raise LTDError(
            f"draft head at {path} was made for a target with vocab {fields['vocab_size']} and hidden "
            f"size {fields['target_hidden_size']}; this target has {tcfg.vocab_size} and {tcfg.hidden_size}")
    fingerprint = fields.get("target_fingerprint")
    if fingerprint and fingerprint != target_fingerprint(target):
        raise LTDError(f"draft head at {path} was trained for another target "
                       f"({fields.get('target_name') or 'unknown'}): its weights fingerprint does not match")


def _fit_fc(head: Eagle3Head, fc_weight: torch.Tensor, bias: bool) -> None:
    """Heads that fuse another number of target layers than three, or whose fc has a bias
    (speculators), get an fc of their own shape; the forward only needs `fc(features)`."""
    if tuple(fc_weight.shape) != tuple(head.fc.weight.shape) or bias:
        head.fc = nn.Linear(fc_weight.shape[1], fc_weight.shape[0], bias=bias)


def _shared_lm_head(target: nn.Module | None, d2t: torch.Tensor, cfg: Eagle3Config, path: Path) -> torch.Tensor:
    """The target's output layer at the head's draft vocabulary: what an exporter that omits
    lm_head.weight means. (Not the input embedding: that is the output layer only for targets that
    tie them, and get_output_embeddings returns the right one either way.)"""
    if target is None:
        raise LTDError(f"the head at {path} has no lm_head.weight: load it with its target, whose output "
                       "layer it shares")
    out = target.get_output_embeddings().weight.detach().float().cpu()
    if out.shape[1] != cfg.hidden_size:
        raise LTDError(f"the head at {path} has no lm_head.weight and its hidden size {cfg.hidden_size} "
                       f"differs from the target's output layer ({out.shape[1]})")
    return out[torch.arange(len(d2t)) + d2t]


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
