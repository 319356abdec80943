"""A lean Gemma 3 decoder block for CPU decoding, computing what transformers' block computes.

At one token per step a 270M model's matmuls take a few milliseconds; transformers' block spends
as much again on small operations and Python (four projections, eight norm calls of six ops,
rotary in eight ops, module dispatch). This block takes the same weights and the same
arguments, and does the step with fewer, larger operations:

    x (B, T, d) -> norm -> [q | k | v] = x @ W_qkv (one int8 matmul)
      -> q, k per-head norm -> rotary -> cache -> attention (SDPA, grouped heads) -> o_proj -> norm -> + x
      -> norm -> [gate | up] = x @ W_gu (one int8 matmul) -> gelu(gate) * up -> down -> norm -> + residual

The cache, masks and rotary tables still come from transformers' model (its mask per layer
type, its DynamicCache with sliding-window layers), so batching, padding and `generate` behave
as before. The block is a module in the model's own layer list: steering and readout hooks
attach to it unchanged.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.gemma3.modeling_gemma3 import Gemma3DecoderLayer

from chat.runtime.quant import Int8Linear


def _rms_weight(norm: nn.Module) -> Tensor:
    """Gemma scales a normalised vector by (1 + w), in float32."""
    return (1.0 + norm.weight.detach().float()).contiguous()


class LeanGemma3Block(Gemma3DecoderLayer):
    """`linear(part, weight)` makes the block's four matmuls (PARTS), e.g. with calibrated
    smoothing (chat/runtime/fast.py); by default weight-only Int8Linears.

    A subclass of the block it replaces only so that transformers' `output_hidden_states`
    records it as it records that block; none of the parent's modules are built."""

    def __init__(self, block: nn.Module, linear: Callable[[str, Tensor], Int8Linear] | None = None,
                 kernels=None):
        """`kernels`: `chat.runtime.kernels.ops()`, which then does a single token's norms, query/key norms
        and rotary, and attention, one call each; None keeps torch's calls."""
        nn.Module.__init__(self)  # not Gemma3DecoderLayer's: it would build the modules this block replaces
        attn, mlp = block.self_attn, block.mlp
        self.layer_idx = attn.layer_idx
        self.attention_type = getattr(block, "attention_type", attn.layer_type)
        self.n_heads = attn.config.num_attention_heads
        self.n_kv = attn.config.num_key_value_heads
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.eps = block.input_layernorm.eps
        self.is_causal = attn.is_causal
        # Fused projections: one matmul reads [q; k; v] rows, one reads [gate; up] rows.
        linear = linear or (lambda name, weight: Int8Linear(weight))
        self.qkv = linear("qkv", torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        self.o = linear("o", attn.o_proj.weight)
        self.gate_up = linear("gate_up", torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
        self.down = linear("down", mlp.down_proj.weight)
        self.d_ff = mlp.gate_proj.weight.shape[0]
        for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            self.register_buffer(name, _rms_weight(getattr(block, name)))
        self.register_buffer("q_norm", _rms_weight(attn.q_norm))
        self.register_buffer("k_norm", _rms_weight(attn.k_norm))
        self.kernels = kernels

    def _norm(self, x: Tensor, w: Tensor, one: bool = False) -> Tensor:
        if one:
            return self.kernels.rms_norm(x.contiguous(), w, self.eps)
        return F.rms_norm(x.float(), (x.shape[-1],), w, self.eps).to(x.dtype)

    def _add_norm(self, h: Tensor, x: Tensor, w: Tensor, one: bool = False) -> Tensor:
        """h + norm(x)."""
        if one:
            return self.kernels.add_rms_norm(h.contiguous(), x.contiguous(), w, self.eps)
        return h + self._norm(x, w)

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x (B, H, T, hd), cos/sin (B, 1, T, hd): x*cos + rotate_half(x)*sin."""
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return torch.addcmul(x * cos, rotated, sin)

    def forward(self, hidden_states: Tensor, position_embeddings: tuple[Tensor, Tensor] | None = None,
                attention_mask: Tensor | None = None, position_ids: Tensor | None = None, cache=None,
                past_key_values=None, **kwargs) -> Tensor:
        cache = cache if cache is not None else past_key_values
        B, T, _ = hidden_states.shape
        hd, H, KV = self.head_dim, self.n_heads, self.n_kv
        one = self.kernels is not None and B * T == 1  # a decoding step: one call per small step
        x = self._norm(hidden_states, self.input_layernorm, one)
        qkv = self.qkv(x).view(B, T, H + 2 * KV, hd)  # (B, T, H + 2KV, hd)
        v = qkv[:, :, H + KV:].transpose(1, 2)  # (B, KV, T, hd)
        cos, sin = position_embeddings  # (B, T, hd) each
        if one:
            q, k = self.kernels.qk_norm_rope(qkv, H, KV, self.q_norm, self.k_norm, cos, sin, self.eps)
        else:
            q = self._norm(qkv[:, :, :H], self.q_norm).transpose(1, 2)  # (B, H, T, hd)
            k = self._norm(qkv[:, :, H:H + KV], self.k_norm).transpose(1, 2)  # (B, KV, T, hd)
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        is_causal = self.is_causal and T > 1 and attention_mask is None
        if is_causal and k.shape[2] > T:  # as transformers does: a maskless prompt attends to itself
            k, v = k[:, :, :T], v[:, :, :T]
        if attention_mask is not None and attention_mask.dtype != torch.bool and attention_mask.dtype != q.dtype:
            attention_mask = attention_mask.to(q.dtype)
        if one and k.shape[0] == 1 and (attention_mask is None or attention_mask.numel() == k.shape[2]):
            a = self.kernels.decode_attention(q, k.contiguous(), v.contiguous(), attention_mask, self.scaling)
        elif T == 1 and H != KV and (attention_mask is None or attention_mask.shape[1] == 1):
            # One query: each key/value head's query heads become rows of one (H/KV, hd) query,
            # so attention reads the cache once per kv head (5x faster than SDPA's grouped path).
            a = F.scaled_dot_product_attention(q.reshape(B, KV, H // KV, hd), k, v, attn_mask=attention_mask,
                                               scale=self.scaling)  # (B, KV, H/KV, hd)
            a = a.reshape(B, 1, H * hd)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, is_causal=is_causal,
                                               scale=self.scaling, enable_gqa=H != KV)  # (B, H, T, hd)
            a = a.transpose(1, 2).reshape(B, T, H * hd)
        a = self.o(a)
        h = self._add_norm(hidden_states, a, self.post_attention_layernorm, one)
        gate, up = self.gate_up(self._norm(h, self.pre_feedforward_layernorm, one)).split(self.d_ff, dim=-1)
        m = self.down(F.gelu(gate, approximate="tanh") * up)
        return self._add_norm(h, m, self.post_feedforward_layernorm, one)


def applies(model: nn.Module) -> bool:
    """Gemma 3 text blocks with the options this block implements (no logit soft-capping)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return (getattr(cfg, "model_type", "") in ("gemma3_text",) and cfg.attn_logit_softcapping is None
            and getattr(cfg, "hidden_activation", "") == "gelu_pytorch_tanh" and not cfg.attention_bias)


PARTS = ("qkv", "o", "gate_up", "down")


def calibration_points(layers: nn.ModuleList) -> dict[str, nn.Module]:
    """{"<layer>.<part>": the transformers module whose input that part's matmul takes}, for
    the activation ranges that smoothing needs."""
    points = {}
    for i, block in enumerate(layers):
        attn, mlp = block.self_attn, block.mlp
        for part, module in zip(PARTS, (attn.q_proj, attn.o_proj, mlp.gate_proj, mlp.down_proj)):
            points[f"{i}.{part}"] = module
    return points


def swap_blocks(layers: nn.ModuleList, linear: Callable[[str, Tensor], Int8Linear] | None = None,
                kernels=None) -> None:
    """Replace each Gemma 3 block in `layers` by a LeanGemma3Block over the same weights;
    `linear(name, weight)` gets names "<layer>.<part>"."""
    for i, block in enumerate(layers):
        make = None if linear is None else (lambda part, weight, i=i: linear(f"{i}.{part}", weight))
        layers[i] = LeanGemma3Block(block, make, kernels)
