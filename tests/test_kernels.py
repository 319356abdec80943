"""The fast path's single-row CPU kernels (chat/runtime/kernels.cpp): each computes what the torch calls
it replaces compute, built once and loaded from the cache afterwards."""
from __future__ import annotations

import copy
import shutil

import pytest
import torch
import torch.nn.functional as F

from chat.runtime import kernels
from chat.runtime.gemma_block import LeanGemma3Block
from chat.runtime.models import decoder_layers
from chat.runtime.quant import Int8Linear, int8_rows

pytestmark = pytest.mark.skipif(kernels.ops() is None, reason="no C++ compiler: the fast path keeps torch's calls")
G = torch.Generator().manual_seed(0)


def test_built_once_into_the_cache_and_loaded_from_it():
    path = kernels.library_path(shutil.which("c++"))
    assert path.exists() and path.suffix == ".so"
    assert kernels.ops() is kernels.ops()  # loaded once per process


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1536, 640), (40, 48), (7, 3)])  # AVX-512 blocks, AVX2 blocks, tails only
def test_int8_gemv_is_the_int8_matmul(shape, dtype):
    n, k = shape
    q, scale = int8_rows(torch.randn(n, k, generator=G))
    x = torch.randn(1, 1, k, generator=G).to(dtype)
    exact = (x.double().reshape(1, k) @ (q.double() * scale.double()[:, None]).T).reshape(1, 1, n)
    y = kernels.ops().int8_gemv(x, q, scale)
    assert y.shape == (1, 1, n) and y.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # float32 sums in another order; bf16 rounds the result
    assert torch.allclose(y.double(), exact, rtol=tol, atol=tol * exact.abs().max().item())


def test_int8_gemv_carries_nan_on():
    q, scale = int8_rows(torch.randn(8, 32, generator=G))
    x = torch.randn(1, 32, generator=G)
    x[0, 5] = float("nan")
    assert kernels.ops().int8_gemv(x, q, scale).isnan().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norms_are_torch_norms(dtype):
    x = (torch.randn(1, 1, 640, generator=G) * 3).to(dtype)
    h = torch.randn(1, 1, 640, generator=G).to(dtype)
    w = torch.randn(640, generator=G)
    ref = F.rms_norm(x.float(), (640,), w, 1e-6).to(dtype)
    ops = kernels.ops()
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ops.add_rms_norm(h, x, w, 1e-6), h + ref, rtol=1e-5, atol=1e-5)


def test_bad_arguments_raise_instead_of_reading_past_a_tensor():
    ops = kernels.ops()
    with pytest.raises(RuntimeError, match="one row"):
        ops.int8_gemv(torch.randn(2, 8), torch.zeros(4, 8, dtype=torch.int8), torch.ones(4))
    with pytest.raises(RuntimeError, match="do not match"):
        ops.int8_gemv(torch.randn(1, 9), torch.zeros(4, 8, dtype=torch.int8), torch.ones(4))
    with pytest.raises(RuntimeError, match="float32"):
        ops.rms_norm(torch.randn(1, 8), torch.ones(7), 1e-6)


def test_int8_linear_uses_the_kernel_for_one_row_only():
    w = torch.randn(40, 48, generator=G) * 0.2
    plain, fast = Int8Linear(w), Int8Linear(w, kernels=kernels.ops())
    x = torch.randn(1, 48, generator=G)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)
        several = x.expand(3, 48)
        assert torch.equal(fast(several), plain(several))  # several rows: the full weight, both


def test_lean_block_step_with_kernels_is_the_block_without(tiny_lm):
    """One decoding step of a Gemma 3 block: kernels (norms, q/k norm + rotary) against torch's
    calls, on the same int8 weights; a prompt of several tokens takes torch's calls either way."""
    model = copy.deepcopy(tiny_lm.model)
    block = decoder_layers(model)[0]
    plain, fast = LeanGemma3Block(block), LeanGemma3Block(block, kernels=kernels.ops())
    fast.load_state_dict(plain.state_dict())
    cfg = model.config
    hidden = torch.randn(1, 1, cfg.hidden_size, generator=G)
    rotary = model.model.rotary_emb
    position_ids = torch.tensor([[3]])
    kind = cfg.layer_types[0]
    pe = rotary(hidden, position_ids, kind)
    with torch.inference_mode():
        a = plain(hidden, position_embeddings=pe, attention_mask=None, position_ids=position_ids)
        b = fast(hidden, position_embeddings=pe, attention_mask=None, position_ids=position_ids)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        prompt = torch.randn(1, 4, cfg.hidden_size, generator=G)
        pe4 = rotary(prompt, torch.arange(4)[None], kind)
        assert torch.equal(fast(prompt, position_embeddings=pe4, attention_mask=None),
                           plain(prompt, position_embeddings=pe4, attention_mask=None))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask", [None, "bool", "additive"])
def test_decode_attention_is_sdpa_for_one_query(dtype, mask):
    H, KV, T, hd = 4, 1, 37, 64  # grouped heads, a length that is no multiple of the vector width
    q = torch.randn(1, H, 1, hd, generator=G).to(dtype)
    k, v = (torch.randn(1, KV, T, hd, generator=G).to(dtype) for _ in range(2))
    m = None
    if mask is not None:
        keep = torch.rand(1, 1, 1, T, generator=G) > 0.3
        m = keep if mask == "bool" else torch.where(keep, 0.0, float("-inf"))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=m, scale=0.125,
                                         enable_gqa=True)  # (1, H, 1, hd)
    got = kernels.ops().decode_attention(q, k, v, m, 0.125)
    assert got.shape == (1, 1, H * hd) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.float(), ref.reshape(1, 1, H * hd), rtol=tol, atol=tol)
