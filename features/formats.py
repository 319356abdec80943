"""Load dictionaries from the formats people publish, and save them in ours.

`load_folder` picks the format from the weights file it finds (first match wins):

    sae_weights.safetensors + cfg.json   SAELens (v6 and older configs); also what `save` writes
    params.safetensors (+ config.json)   Gemma Scope 2 (Gemma 3), JumpReLU, lowercase keys
    sae.safetensors + cfg.json           EleutherAI sparsify, TopK on x - b_dec
    params.npz                           Gemma Scope 1 (Gemma 2), JumpReLU
    *.pt / *.pth / *.ckpt / *.bin        pickles (Goodfire, dictionary_learning), only with
                                         allow_pickle=True because unpickling can run code

Every problem with the files becomes one `DictionaryError` line; shapes and NaN/inf are checked
by `Dictionary` itself. Only dictionaries that read a decoder layer's output (the residual
stream after block L, "resid_post") are accepted, since that is where steering writes.
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .dictionary import Dictionary, DictionaryError

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
# Known weight files, in detection order; anything else is tried by suffix.
KNOWN_WEIGHTS = ("sae_weights.safetensors", "params.safetensors", "sae.safetensors", "params.npz")
EXPECTED = (
    "sae_weights.safetensors + cfg.json (SAELens), params.safetensors + config.json (Gemma Scope 2), "
    "sae.safetensors + cfg.json (sparsify), params.npz (Gemma Scope 1) or a .pt/.pth checkpoint"
)
PICKLE_REFUSED = (
    "{name} is a pickle file, and unpickling can run arbitrary code; load it only if you trust "
    "its source, with allow_pickle=True (CLI: --allow-pickle)"
)


def load(ref: str | Path, *, allow_pickle: bool = False) -> tuple[Dictionary, Path]:
    """Load a dictionary from a local folder/file or a hub reference; returns it and the local
    folder it came from (where features.json may sit)."""
    path = resolve(ref)
    return load_folder(path, allow_pickle=allow_pickle), path if path.is_dir() else path.parent


def resolve(ref: str | Path) -> Path:
    """A local path as is; otherwise `owner/repo[/sub/folder-or-file]` on the Hugging Face hub,
    fetched (or found in the cache, also offline) by huggingface_hub.snapshot_download."""
    path = Path(ref).expanduser()
    if path.exists():
        return path
    parts = str(ref).strip("/").split("/")
    if isinstance(ref, Path) or str(ref).startswith((".", "/", "~")) or len(parts) < 2:
        raise DictionaryError(f"no dictionary at {str(ref)!r}")
    from huggingface_hub import snapshot_download  # imported late: slow, and only hub refs need it

    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    # `sub` may be a folder (Gemma Scope, SAELens) or one file (Goodfire's .pth at the repo root).
    patterns = [sub, f"{sub}/*"] if sub else None
    try:
        root = Path(snapshot_download(repo_id=repo_id, allow_patterns=patterns))
    except Exception as e:  # the hub raises many types (offline, 404, gated, auth): all mean "not here"
        raise DictionaryError(
            f"no dictionary at {str(ref)!r}: not a local path, and the hub said {_one_line(e)}"
        ) from None
    local = root / sub
    if not local.exists():
        raise DictionaryError(f"hub repo {repo_id} has no {sub!r}")
    return local


def load_folder(path: Path, *, allow_pickle: bool = False) -> Dictionary:
    """Detect the format from the files present (or from one weights file) and load it."""
    path = Path(path)
    weights = _find_weights(path) if path.is_dir() else path
    if not weights.is_file():
        raise DictionaryError(f"no dictionary at {str(path)!r}")
    if weights.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise DictionaryError(PICKLE_REFUSED.format(name=weights.name))
        return _load_pickle(weights)
    if weights.suffix == ".npz":
        return _gemma_scope_1(weights)
    if weights.suffix != ".safetensors":
        raise DictionaryError(f"{weights.name} is not a dictionary file; expected {EXPECTED}")
    tensors = _read_safetensors(weights)
    by_name = {"sae_weights.safetensors": _saelens, "params.safetensors": _gemma_scope_2,
               "sae.safetensors": _sparsify}
    loader = by_name.get(weights.name) or (
        _gemma_scope_2 if "w_enc" in tensors else _sparsify if "encoder.weight" in tensors else _saelens
    )
    return loader(tensors, weights.parent)


def save(
    d: Dictionary,
    folder: Path,
    *,
    dtype: torch.dtype = torch.float16,
    model_name: str | None = None,
    extra_cfg: dict | None = None,
) -> Path:
    """Write our own format: cfg.json + sae_weights.safetensors, SAELens v6-compatible.

    input_scale is folded into the weights so the file needs no normalisation:
    ((x·s - b_dec) @ W_enc) == (x - b_dec/s) @ (W_enc·s) and (f @ W_dec + b_dec)/s ==
    f @ (W_dec/s) + b_dec/s; b_enc and threshold act after the encoder and stay as they are.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s = d.input_scale
    tensors = {"W_enc": d.W_enc * s, "W_dec": d.W_dec / s, "b_enc": d.b_enc, "b_dec": d.b_dec / s}
    if d.activation == "jumprelu":
        tensors["threshold"] = d.threshold
    save_file(
        {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()},
        folder / "sae_weights.safetensors",
    )
    cfg = {
        "architecture": {"relu": "standard"}.get(d.activation, d.activation),
        "d_in": d.d_in,
        "d_sae": d.d_sae,
        "dtype": str(dtype).removeprefix("torch."),
        "apply_b_dec_to_input": d.apply_b_dec_to_input,
        "normalize_activations": "none",
        **({"k": d.k} if d.activation == "topk" else {}),
        "metadata": {
            "hook_name": None if d.hook_layer is None else f"blocks.{d.hook_layer}.hook_resid_post",
            "model_name": model_name,
            "prepend_bos": True,
            "exclude_special_tokens": True,
            # SAELens reads a cfg without this version as pre-6.0 and drops `metadata`.
            "sae_lens_version": "6.0.0",
        },
        **(extra_cfg or {}),
    }
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return folder


# ---------------------------------------------------------------- formats


def _saelens(t: dict[str, Tensor], folder: Path) -> Dictionary:
    """SAELens: W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc, b_dec, [threshold]."""
    cfg = _read_json(folder / "cfg.json", "sae_weights.safetensors")
    meta = cfg.get("metadata") or {}
    # v6 nests hook_name under metadata; older cfgs keep it (or `hook_point`) at the top level.
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    arch = cfg.get("architecture", "standard")
    if (cfg.get("activation_fn") or cfg.get("activation_fn_str")) == "topk" and arch == "standard":
        arch = "topk"  # pre-6.0 topk SAEs were "standard" with a topk activation function
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if arch == "batchtopk":
        # BatchTopK picks k per batch; at inference SAELens uses a learned threshold when one is
        # saved (= JumpReLU) and otherwise per-token top-k is the closest stand-in.
        arch = "jumprelu" if "threshold" in t else "topk"
    activation = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk"}.get(arch)
    if activation is None:
        raise DictionaryError(
            f"unsupported SAELens architecture {arch!r}; we read standard, jumprelu, topk and batchtopk"
        )
    _need(t, ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if activation == "jumprelu" else []),
          folder / "sae_weights.safetensors")
    return Dictionary(
        W_enc=t["W_enc"], b_enc=t["b_enc"], W_dec=t["W_dec"], b_dec=t["b_dec"],
        activation=activation, threshold=t.get("threshold") if activation == "jumprelu" else None,
        k=_int(k) if activation == "topk" else None,
        apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", True),
        input_scale=_input_scale(cfg), hook_layer=_layer_from_hook(hook), cfg=cfg,
    )


def _gemma_scope_2(t: dict[str, Tensor], folder: Path) -> Dictionary:
    """Gemma Scope 2: w_enc (d_in, d_sae), w_dec (d_sae, d_in), b_enc, b_dec, threshold.

    Like SAELens's gemma_3 loader: JumpReLU with no b_dec subtraction on the input.
    """
    config = folder / "config.json"
    cfg = _read_json(config, "params.safetensors") if config.is_file() else {}
    if "affine_skip_connection" in t or cfg.get("affine_connection") or cfg.get("type", "sae") != "sae":
        raise DictionaryError(f"{folder.name} is a transcoder, not a residual-stream dictionary")
    if cfg.get("architecture", "jump_relu") != "jump_relu":
        raise DictionaryError(f"unsupported Gemma Scope 2 architecture {cfg['architecture']!r}")
    if cfg:
        layer = _layer_from_hook(cfg.get("hf_hook_point_in"))
    elif folder.parent.name.startswith("resid_post"):  # no config.json: SAELens reads the path too
        layer = _layer_from_path(folder)
    else:
        raise DictionaryError(f"{folder} has params.safetensors but no config.json saying what it reads")
    _need(t, ["w_enc", "w_dec", "b_enc", "b_dec", "threshold"], folder / "params.safetensors")
    return Dictionary(
        W_enc=t["w_enc"], b_enc=t["b_enc"], W_dec=t["w_dec"], b_dec=t["b_dec"],
        activation="jumprelu", threshold=t["threshold"], apply_b_dec_to_input=False,
        hook_layer=layer, cfg=cfg,
    )


def _gemma_scope_1(path: Path) -> Dictionary:
    """Gemma Scope 1 params.npz: W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc, b_dec, threshold."""
    # The repo name (kept in the hub cache path) is the only record of the site it read.
    site = re.search(r"gemma-scope-[\w.-]*?-(mlp|att|transcoders)\b", str(path.absolute()))
    if site or "embedding" in path.parts:
        kind = site.group(1) if site else "embedding"
        raise DictionaryError(f"{path} is a Gemma Scope {kind} dictionary; we steer residual-stream ones only")
    try:
        with np.load(path, allow_pickle=False) as z:
            t = {k: torch.from_numpy(z[k]) for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DictionaryError(f"cannot read {path.name}: {_one_line(e)}") from None
    _need(t, ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"], path)
    return Dictionary(
        W_enc=t["W_enc"], b_enc=t["b_enc"], W_dec=t["W_dec"], b_dec=t["b_dec"],
        activation="jumprelu", threshold=t["threshold"], apply_b_dec_to_input=False,
        hook_layer=_layer_from_path(path.parent), cfg={},  # Gemma Scope 1 ships no config
    )


def _sparsify(t: dict[str, Tensor], folder: Path) -> Dictionary:
    """sparsify: encoder.weight (d_sae, d_in), encoder.bias, W_dec (d_sae, d_in), b_dec; TopK."""
    cfg = _read_json(folder / "cfg.json", "sae.safetensors")
    if cfg.get("transcode") or cfg.get("skip_connection") or "W_skip" in t:
        raise DictionaryError(f"{folder.name} is a transcoder/skip dictionary, not a residual-stream one")
    if cfg.get("signed"):
        raise DictionaryError("signed sparsify dictionaries (negative activations) are not supported")
    _need(t, ["encoder.weight", "encoder.bias", "W_dec", "b_dec"], folder / "sae.safetensors")
    # Hookpoints are folder names: "layers.N" (or older "layer_N") is the output of block N.
    if re.fullmatch(r"layers\.\d+\..+", folder.name):
        raise DictionaryError(f"hookpoint {folder.name} is not a residual-stream output; "
                              "we steer residual-stream dictionaries only")
    return Dictionary(
        W_enc=_T(t["encoder.weight"]), b_enc=t["encoder.bias"], W_dec=t["W_dec"], b_dec=t["b_dec"],
        activation="topk", k=_int(cfg.get("k")), apply_b_dec_to_input=True,
        hook_layer=_layer_from_path(folder), cfg=cfg,
    )


def _load_pickle(path: Path) -> Dictionary:
    """Goodfire or dictionary_learning state dicts, read with weights_only=True (no arbitrary code)."""
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...: all "unreadable"
        raise DictionaryError(f"cannot read {path.name}: {_one_line(e)}") from None
    if not isinstance(t, dict) or not all(isinstance(v, Tensor) for v in t.values()):
        raise DictionaryError(f"{path.name} does not hold a flat state dict of tensors")
    config = path.parent / "config.json"
    cfg = _read_json(config, path.name) if config.is_file() else {}
    layer = (cfg.get("trainer") or {}).get("layer")
    if layer is None:  # Goodfire names the layer in the file: "...-SAE-l19.pth" reads block 19
        m = re.search(r"-l(\d+)$", path.stem)
        layer = int(m.group(1)) if m else _layer_from_path(path.parent)
    if "encoder_linear.weight" in t:  # Goodfire: plain ReLU on the raw residual
        _need(t, ["encoder_linear.weight", "encoder_linear.bias", "decoder_linear.weight",
                  "decoder_linear.bias"], path)
        return Dictionary(
            W_enc=_T(t["encoder_linear.weight"]),  # (d_sae, d_in) -> (d_in, d_sae)
            b_enc=t["encoder_linear.bias"],
            W_dec=_T(t["decoder_linear.weight"]),  # (d_in, d_sae) -> (d_sae, d_in)
            b_dec=t["decoder_linear.bias"],
            apply_b_dec_to_input=False, hook_layer=layer, cfg=cfg,
        )
    # dictionary_learning: encoder on x - b_dec (called `bias` by the original AutoEncoder).
    b_dec = "b_dec" if "b_dec" in t else "bias"
    _need(t, ["encoder.weight", "encoder.bias", "decoder.weight", b_dec], path)
    d_sae = t["encoder.weight"].shape[0]
    thr, k = t.get("threshold"), t.get("k")
    # BatchTopK keeps a scalar inference threshold (-1 until calibrated) and k as buffers.
    if thr is not None and bool((thr >= 0).all()):
        thr = thr.float().reshape(1).expand(d_sae).clone() if thr.numel() == 1 else thr  # (d_sae,)
        extra = {"activation": "jumprelu", "threshold": thr}
    elif k is not None:
        extra = {"activation": "topk", "k": _int(k.item() if k.numel() == 1 else k)}
    else:
        extra = {}
    return Dictionary(
        W_enc=_T(t["encoder.weight"]),  # (d_sae, d_in) -> (d_in, d_sae)
        b_enc=t["encoder.bias"],
        W_dec=_T(t["decoder.weight"]),  # (d_in, d_sae) -> (d_sae, d_in)
        b_dec=t[b_dec], apply_b_dec_to_input=True, hook_layer=layer, cfg=cfg, **extra,
    )


# ---------------------------------------------------------------- helpers


def _find_weights(folder: Path) -> Path:
    for name in KNOWN_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    for pattern in ("*.safetensors", "*.npz", *(f"*{s}" for s in PICKLE_SUFFIXES)):
        found = sorted(p for p in folder.glob(pattern) if p.name != "sparsity.safetensors")
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise DictionaryError(f"{folder} holds several weight files ({names}); point at one of them")
        if found:
            return found[0]
    raise DictionaryError(f"no dictionary weights in {folder}; expected {EXPECTED}")


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise DictionaryError(f"cannot read {path.name} (truncated or corrupt?): {_one_line(e)}") from None


def _read_json(path: Path, beside: str) -> dict:
    if not path.is_file():
        raise DictionaryError(f"{path.parent} has {beside} but no {path.name}")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DictionaryError(f"cannot read {path}: {_one_line(e)}") from None
    if not isinstance(cfg, dict):
        raise DictionaryError(f"{path} does not hold a JSON object")
    return cfg


def _need(t: dict[str, Tensor], keys: list[str], source: Path) -> None:
    missing = [k for k in keys if k not in t]
    if missing:
        raise DictionaryError(
            f"{source.name} is missing {', '.join(missing)} (it has: {', '.join(sorted(t)) or 'nothing'})"
        )


def _input_scale(cfg: dict) -> float:
    """SAELens input normalisation as one constant factor, when it is one."""
    norm = cfg.get("normalize_activations")
    if norm in (None, False, "none"):
        return 1.0
    norm = "expected_average_only_in" if norm is True else norm  # pre-6.0 booleans
    if norm != "expected_average_only_in":
        # constant_norm_rescale and layer_norm rescale every token by its own norm: no constant.
        raise DictionaryError(f"normalize_activations={norm!r} rescales each token separately; "
                              "we can only apply a constant input scale")
    factor = cfg.get("norm_scaling_factor") or cfg.get("scaling_factor")
    if not factor:
        raise DictionaryError(f"normalize_activations={norm!r} but the cfg has no norm_scaling_factor; "
                              "re-save the dictionary with the normalisation folded into its weights")
    return float(factor)


def _layer_from_hook(hook: str | None) -> int | None:
    """Decoder layer whose output a hook reads; None when the cfg names no hook."""
    if hook is None:
        return None
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(post|pre)|model\.layers\.(\d+)(?:\.output)?", hook)
    if m and m.group(2) == "pre":
        # resid_pre of block L is the output of block L-1; block 0's is the embeddings.
        if int(m.group(1)) > 0:
            return int(m.group(1)) - 1
    elif m:
        return int(m.group(1) or m.group(3))
    raise DictionaryError(
        f"hook {hook!r} is not a decoder layer's residual-stream output; "
        "we steer residual-stream dictionaries only"
    )


def _layer_from_path(path: Path) -> int | None:
    """Layer from folder names like layer_20, layers.5, resid_post_layer_15, layer_12_width_16k."""
    for part in reversed(path.parts):
        m = re.search(r"(?:^|_)layers?[._](\d+)(?:_|$)", part)
        if m:
            return int(m.group(1))
    return None


def _T(w: Tensor) -> Tensor:
    """Transpose a (rows, cols) matrix; other shapes are left for Dictionary's shape check."""
    return w.T if w.ndim == 2 else w


def _int(k: object) -> object:
    """Configs store k as int, float (64.0) or a tensor; Dictionary validates whatever is left."""
    return int(k) if isinstance(k, (int, float)) and float(k).is_integer() else k


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())
