"""The fast decode path on CPU: which matrices become int8, and how, computed once and cached.

`make_fast(model, layers, tokenizer)` turns a loaded transformers model into the fast path in
place (chat/runtime/models.py calls it for every CPU model unless $STEERCHAT_FAST=0):

- every decoder matrix and the LM head become `Int8Linear`s (chat/runtime/quant.py);
- Gemma 3 blocks become `LeanGemma3Block`s (chat/runtime/gemma_block.py), with fused projections;
- the decoder layers keep exact activations (weight-only int8);
- the LM head is weight-only int8 too, through the compiled `int8_gemv` (chat/runtime/kernels.py);
  where that cannot be built, its input is smoothed (from activation ranges measured on
  `quant.CALIBRATION_TEXT`) and rounded to int8 for fbgemm's dynamic kernel instead. Either way
  the head's 64 largest outputs are recomputed from the full weight at each step, so greedy
  choices are the full head's.

The int8 rows, scales and smoothing are saved to `<cache>/int8/<fingerprint>.safetensors` (`cache_file`) on the
first load, so later loads skip calibration and quantisation (1.4 s of the embedded model's
cold start). The fingerprint covers the model's config, a sample of every weight, and
everything that decides the result (torch version, kernel, alpha, calibration text). fbgemm's
packed form cannot be saved without pickle, so without the compiled ops the head is packed at
every load, in two background threads, while the dictionary and catalog load (1.1 s of CPU
for the embedded model's head, which the 2-core machine's cold start felt: the weight-only head
needs no packing and reads its rows 15% faster, 6.7 against 7.9 ms a step).
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from chat.runtime import gemma_block, kernels, quant
from chat.runtime.quant import Int8Linear
from features.paths import cache_dir

FORMAT = 1  # bump when what is stored, or how it is computed, changes
# Gemma block parts whose single-row inputs are smoothed and rounded to int8 too. None: doing so
# for all four kept perplexity (-0.3%) but made steered replies reach their concept less often
# (13 of 25 marginal spec cases passed, against 19 with exact activations).
DYNAMIC_PARTS: tuple[str, ...] = ()
EXACT_TOP = 64  # LM head outputs recomputed from the full weight at each decoding step
SAMPLES = 64  # values hashed per weight tensor


def fingerprint(model: nn.Module) -> str:
    """A key for the model's quantised form: changes when any weight or setting that shapes it does."""
    h = hashlib.sha256()
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else {}
    meta = {"format": FORMAT, "torch": torch.__version__, "class": type(model).__name__, "config": config,
            "alpha": quant.SMOOTH_ALPHA, "calibration": quant.CALIBRATION_TEXT, "dynamic_parts": DYNAMIC_PARTS,
            "dynamic": quant.dynamic_available(), "head": _head_mode()}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // SAMPLES)
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
            h.update(flat[::step][:SAMPLES].float().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


def _head_mode() -> str:
    """"weight-only" where the compiled int8_gemv exists (it reads int8 rows faster than fbgemm's
    dynamic kernel, and needs no packing at load), else "dynamic"."""
    return "weight-only" if kernels.ops() is not None else "dynamic"


def cache_file(model: nn.Module) -> Path:
    """<cache>/int8/<fingerprint>.safetensors (features.paths.cache_dir)."""
    return cache_dir() / "int8" / f"{fingerprint(model)}.safetensors"


def _read(path: Path) -> dict[str, dict[str, Tensor]] | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        flat = load_file(str(path))
    except (OSError, SafetensorError, ValueError):
        return None  # missing, or unreadable: quantise afresh and write it again
    stored: dict[str, dict[str, Tensor]] = {}
    for key, t in flat.items():
        name, _, field = key.rpartition("/")
        stored.setdefault(name, {})[field] = t
    return stored


def _write(path: Path, made: dict[str, Int8Linear]) -> None:
    from safetensors.torch import save

    from features.catalog import _write_atomic

    flat = {f"{name}/{field}": t.contiguous() for name, lin in made.items() for field, t in lin.quantized().items()}
    try:
        _write_atomic(path, save(flat))
    except OSError:
        pass  # a read-only cache costs the next load 1.4 s, nothing else


def _names(model: nn.Module, layers: nn.ModuleList, lean: bool) -> set[str]:
    """The names `make_fast` gives its Int8Linears: what a stored file must hold, exactly."""
    names = {"head"} if isinstance(model.get_output_embeddings(), nn.Linear) else set()
    for i, block in enumerate(layers):
        if lean:
            names |= {f"{i}.{part}" for part in gemma_block.PARTS}
        else:
            names |= {f"{i}.{n}" for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    return names


def make_fast(model: nn.Module, layers: nn.ModuleList, tokenizer,
              progress: Callable[[str], None] | None = None) -> None:
    """Switch a loaded CPU model to the fast decode path, in place. Activations between the
    matmuls, hooks and every transformers entry point (forward, generate, caches) stay as they were."""
    head = model.get_output_embeddings()
    lean = gemma_block.applies(model)
    path = cache_file(model)
    stored = _read(path)
    if progress and not kernels.ready():
        progress("building the fast path's CPU kernels (first start only: about 15 s)")
    if stored is not None and set(stored) != _names(model, layers, lean):
        stored = None  # another layout (or a damaged file): start again
    ranges: dict[str, Tensor] = {}
    ops = kernels.ops()  # built on the first load (about 15 s), then loaded from the cache
    points = {"head": head} if isinstance(head, nn.Linear) and _head_mode() == "dynamic" else {}
    if lean:
        points |= {k: m for k, m in gemma_block.calibration_points(layers).items()
                   if k.rpartition(".")[2] in DYNAMIC_PARTS}
    if progress and stored is None:
        progress("quantising the model to int8 (first start only: a few seconds)")
    if stored is None and points:
        ids = torch.tensor([tokenizer(quant.CALIBRATION_TEXT).input_ids], device=next(model.parameters()).device)
        ranges = quant.input_ranges(model, points, ids)
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="steerchat-pack")
    made: dict[str, Int8Linear] = {}

    def linear(name: str, weight: Tensor, bias: Tensor | None = None) -> Int8Linear:
        saved = stored[name] if stored is not None else None
        made[name] = Int8Linear(weight, bias, ranges.get(name), stored=saved, pool=pool, kernels=ops)
        return made[name]

    try:
        if isinstance(head, nn.Linear) and hasattr(model, "set_output_embeddings"):
            # A tied head gets its own int8 copy; the input embedding keeps its rows for lookups.
            model.set_output_embeddings(linear("head", head.weight, head.bias))
            model.get_output_embeddings().exact_top = min(EXACT_TOP, head.weight.shape[0])
        if lean:
            gemma_block.swap_blocks(layers, linear, ops)
        else:
            for i, block in enumerate(layers):
                quant.quantize_linears(block, linear, prefix=f"{i}.")
    finally:
        pool.shutdown(wait=False)  # the packing goes on; the first decoding step waits for it
    if stored is None:
        _write(path, made)
