"""int8 matmuls for CPU decoding: a quarter of the bytes of float32, half of bf16.

Decoding one token is bound by memory traffic: each step reads every weight once. Gemma 3 270M in
bf16 reads 0.54 GB per token, two thirds of it in the tied 262k x 640 LM head. Stored as int8
with one scale per output row, a step reads half that. Two CPU kernels multiply by int8 rows:

- weight-only (`aten._weight_int8pack_mm`): activations keep their dtype; exact but for the
  weights' rounding;
- dynamic (fbgemm's `quantized.linear_dynamic`): also rounds each activation row to int8 and
  multiplies with VNNI integer dot products, 1.5x faster again. Rounding activations loses
  accuracy where a few channels are far larger than the rest, so those inputs are first
  *smoothed* (SmoothQuant, Xiao et al. 2023): x W^T = (x / s)(W s)^T with s_j = max|x_j|^a /
  max|W_j|^(1-a), from activation ranges measured on calibration text.

chat/runtime/fast.py decides per matrix: the decoder layers keep exact activations (weight-only); the
LM head uses the dynamic kernel, and its largest outputs are recomputed from the full weight
(`exact_top`), so greedy choices are the full-precision head's. Measured with
`python -m chat bench` (docs/fast-path.md).
"""
from __future__ import annotations

import functools
import warnings
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

_ROWS = 32768  # rows quantised at a time
SMOOTH_ALPHA = 0.7  # a: how much of an input channel's range moves into the weights (0.5-0.8 work)

# Text for the activation ranges: the chat transcript the app sends, prose, code and numbers.
CALIBRATION_TEXT = (
    "A conversation between a User and a helpful, knowledgeable Assistant.\n"
    "User: Hi! Can you help me plan a trip to the mountains next weekend?\n"
    "Assistant: Of course. Pack warm layers, check the weather forecast, and tell a friend your route.\n"
    "User: What is 17 times 23?\nAssistant: 17 times 23 is 391.\n"
    "User: Write a short poem about the sea.\nAssistant: Grey waves fold over the stones; the gulls "
    "cry, and the tide keeps its slow time.\n"
    "The committee met on Tuesday, 4 June 1996, to review the budget: $12,400 for repairs and "
    "3,200 euros for travel. Dr. Okafor said the results were \"promising, but not yet conclusive\".\n"
    "def mean(xs):\n    return sum(xs) / len(xs) if xs else 0.0\n\nprint(mean([1, 2, 3]))  # 2.0\n"
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. Der Hund schläft; "
    "le chat dort; el perro come. 東京は日本の首都です。\n"
)


@functools.lru_cache(maxsize=None)
def dynamic_available() -> bool:
    """fbgemm's dynamic int8 linear, on a CPU with VNNI (without it, full-range int8 activations
    can saturate the 16-bit sums of the AVX2 path)."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if "avx512_vnni" not in flags and "avx_vnni" not in flags:
        return False
    try:
        _prepack(torch.ones(1, 1, dtype=torch.int8), torch.ones(1), None)
    except (RuntimeError, AttributeError):
        return False
    return True


_PACK_ROWS = 32768  # fbgemm packs a 262k-row head 2.5x faster in slices, and 2 threads halve that


def _prepack_rows(q: Tensor, scale: Tensor, bias: Tensor | None, pool: Executor | None) -> list:
    """fbgemm's packed form of int8 rows, in slices of _PACK_ROWS (outputs concatenate). With a
    `pool`, futures of them: packing runs in C++ outside the GIL, beside whatever loads next."""
    parts = []
    for a in range(0, q.shape[0], _PACK_ROWS):
        b = min(a + _PACK_ROWS, q.shape[0])
        args = (q[a:b], scale[a:b], None if bias is None else bias[a:b])
        parts.append(pool.submit(_prepack, *args) if pool is not None else _prepack(*args))
    return parts


def _prepack(q: Tensor, scale: Tensor, bias: Tensor | None):
    with warnings.catch_warnings():  # quantized tensors are deprecated API; fbgemm's kernel is not
        warnings.simplefilter("ignore")
        qw = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros(q.shape[0], dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.float())


def int8_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(N, K) float weight -> ((N, K) int8, (N,) float32 scales), weight ~= q * scale[:, None].

    >>> q, s = int8_rows(torch.tensor([[1.0, -0.5], [0.0, 0.0]]))
    >>> q.tolist(), [round(v, 4) for v in s.tolist()]
    ([[127, -64], [0, 0]], [0.0079, 0.0])
    """
    w = weight.detach()
    scale = w.abs().amax(dim=1).float() / 127  # (N,)
    inverse = torch.where(scale > 0, 1 / scale, 0.0)  # a multiply per weight, not a divide: 5x faster
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    for a in range(0, w.shape[0], _ROWS):  # in slices: no float32 copy of a 262k-row head
        q[a:a + _ROWS] = (w[a:a + _ROWS].float() * inverse[a:a + _ROWS, None]).round_().clamp_(-127, 127)
    return q, scale


def smoothing(act_max: Tensor, weight: Tensor, alpha: float | None = None) -> Tensor:
    """(K,) per-input-channel factors s that balance activation and weight ranges."""
    alpha = SMOOTH_ALPHA if alpha is None else alpha
    w_max = weight.detach().abs().amax(dim=0).float()  # (K,)
    return act_max.float().clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)


class Int8Linear(nn.Module):
    """y = x @ W^T + bias for decoding: one row at a time (M = 1) through int8 weights, several
    rows (a prompt, a batch) through `full`, the full-precision weight, where a matmul is bound
    by arithmetic rather than bytes and bf16 is exact. A drop-in for nn.Linear on CPU.

    With `act_max` (the inputs' ranges, see the module docstring) and the dynamic kernel
    available, single rows are smoothed and rounded to int8 too; otherwise they keep their dtype.

    >>> lin = nn.Linear(4, 3, bias=False)
    >>> q = Int8Linear(lin.weight)
    >>> x = torch.randn(1, 4)
    >>> bool((q(x) - lin(x)).abs().max() < 0.02), bool(torch.equal(q(x.expand(2, 4)), lin(x.expand(2, 4))))
    (True, True)
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, act_max: Tensor | None = None, *,
                 stored: dict[str, Tensor] | None = None, pool: Executor | None = None, kernels=None):
        """`stored`: this layer's `quantized()` from an earlier run (chat/runtime/fast.py caches it), which
        skips the quantisation; `pool`: pack for the dynamic kernel in the background; `kernels`:
        `chat.runtime.kernels.ops()`, whose int8_gemv then multiplies weight-only single rows."""
        super().__init__()
        weight = weight.detach()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("full", weight)  # (N, K) model dtype: shared, not copied
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        if stored is None:
            smooth = None
            if act_max is not None and dynamic_available() and weight.device.type == "cpu":
                s = smoothing(act_max, weight)
                weight, smooth = weight.float() * s, (1 / s).float()
            q, scale = int8_rows(weight)
        else:
            q, scale, smooth = stored["weight"], stored["scale"].float(), stored.get("smooth")
        self.register_buffer("weight", q)  # (N, K) int8, of W * s when smoothed
        self.register_buffer("scale", scale.to(self.full.dtype))  # (N,)
        self.register_buffer("smooth", smooth)  # (K,) float32 1/s, or None
        self._packs = _prepack_rows(q, scale, bias, pool) if smooth is not None else None
        self.kernels = kernels if self._packs is None else None  # the dynamic kernel has no int8_gemv twin
        self._scale32 = scale.float().contiguous() if self.kernels is not None else None  # (N,) for int8_gemv
        self.exact_top = 0  # > 0: single rows' k largest outputs are recomputed exactly (an LM head)

    def quantized(self) -> dict[str, Tensor]:
        """What `stored=` takes back: the int8 rows, their scales and the smoothing."""
        out = {"weight": self.weight, "scale": self.scale.float()}
        return out if self.smooth is None else {**out, "smooth": self.smooth}

    @property
    def dynamic(self) -> bool:
        return self._packs is not None

    def _packed(self) -> list:
        packs = self._packs
        if packs and isinstance(packs[0], Future):
            packs = self._packs = [f.result() for f in packs]  # the first decoding step waits for them
        return packs

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)  # (M, K)
        if flat.shape[0] > 1:
            # On the 2-D rows: F.linear on a strided 3-D view (the head's input under
            # logits_to_keep) goes through bmm with a transposed copy of the whole weight.
            return nn.functional.linear(flat, self.full, self.bias).reshape(*x.shape[:-1], self.out_features)
        y = None
        if self._packs is not None:
            xs = flat.float() * self.smooth
            try:
                parts = [torch.ops.quantized.linear_dynamic(xs, p, False) for p in self._packed()]
                y = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)).to(x.dtype)
            except RuntimeError:  # inf or NaN in the row (steering far too strong): no int8 range
                flat = xs
        if y is None:
            if self.kernels is not None:
                y = self.kernels.int8_gemv(flat, self.weight, self._scale32)  # (1, N), NaN carried on
            else:
                w_flat = flat.to(self.scale.dtype).contiguous()
                y = torch.ops.aten._weight_int8pack_mm(w_flat, self.weight, self.scale)  # (1, N), NaN carried on
            if self.bias is not None:
                y = y + self.bias
        if self.exact_top:
            # The rows that can win a greedy or sampled choice, recomputed from the full weight:
            # int8's small logit errors would otherwise flip near-ties.
            top = y.topk(self.exact_top, dim=-1).indices[0]  # (k,)
            y[:, top] = nn.functional.linear(x.reshape(1, -1), self.full[top]).to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kind = "int8 weights and activations (smoothed)" if self.dynamic else "int8 weights"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind} for single rows"


def quantize_linears(module: nn.Module, linear: Callable[..., nn.Module] | None = None, prefix: str = "") -> int:
    """Replace every nn.Linear inside `module` by `linear(prefix + its name, weight, bias)`
    (default: a weight-only Int8Linear); returns how many."""
    linear = linear or (lambda name, weight, bias=None: Int8Linear(weight, bias))
    n = 0
    for qualified, child in list(module.named_modules()):
        if isinstance(child, nn.Linear):
            parent_name, _, attr = qualified.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, linear(prefix + qualified, child.weight, child.bias))
            n += 1
    return n


def input_ranges(model: nn.Module, modules: dict[str, nn.Module], input_ids: Tensor) -> dict[str, Tensor]:
    """{name: (K,) max |input| per channel} of `modules` over one forward pass of `input_ids`."""
    ranges: dict[str, Tensor] = {}

    def note(name):
        def hook(mod, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1]).abs().amax(dim=0)
            ranges[name] = torch.maximum(ranges[name], x) if name in ranges else x
        return hook

    handles = [m.register_forward_pre_hook(note(n)) for n, m in modules.items()]
    try:
        with torch.inference_mode():
            model(input_ids=input_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return ranges
