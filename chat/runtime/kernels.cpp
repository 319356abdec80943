// Single-row CPU kernels for the fast decode path; chat/kernels.py builds this file once with the
// machine's C++ compiler and registers the ops as torch.ops.steerchat.*.
//
// At one token per step a Gemma 3 block spends as long in small operations as in its matmuls:
// an rms_norm is six ATen calls (16-26 us), query/key norms and rotary a dozen more. Each op
// here does one of those steps in one call, in float32, rounding once to the input's dtype.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

using at::Tensor;

// Rows of float32, bf16 or int8 as float32 vectors: a dot product and y += w * x, vectorised
// where the CPU allows (bf16 widens by a 16-bit shift, int8 by sign extension); any other dtype,
// or a tail, one value at a time.
#if defined(__AVX512F__)
constexpr int64_t LANES = 16;
using vec = __m512;
inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline vec vload(const c10::BFloat16* p) {
  __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}
inline vec vload(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline vec vzero() { return _mm512_setzero_ps(); }
inline vec vset(float w) { return _mm512_set1_ps(w); }
inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
inline vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
inline void vstore(float* p, vec a) { _mm512_storeu_ps(p, a); }
inline float vsum(vec a) { return _mm512_reduce_add_ps(a); }
#define STEERCHAT_VEC 1
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t LANES = 8;
using vec = __m256;
inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline vec vload(const c10::BFloat16* p) {
  __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
}
inline vec vload(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline vec vzero() { return _mm256_setzero_ps(); }
inline vec vset(float w) { return _mm256_set1_ps(w); }
inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
inline void vstore(float* p, vec a) { _mm256_storeu_ps(p, a); }
inline float vsum(vec a) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}
#define STEERCHAT_VEC 1
#endif

template <typename T>
constexpr bool vectorised() {
#ifdef STEERCHAT_VEC
  return std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, int8_t>;
#else
  return false;
#endif
}

template <typename T>
inline float dot_f(const float* a, const T* b, int64_t n) {
  int64_t i = 0;
  float s = 0.f;
#ifdef STEERCHAT_VEC
  if constexpr (vectorised<T>()) {
    vec a0 = vzero(), a1 = vzero();  // two chains: one FMA's latency would bound an int8 row
    for (; i + 2 * LANES <= n; i += 2 * LANES) {
      a0 = vfma(vload(a + i), vload(b + i), a0);
      a1 = vfma(vload(a + i + LANES), vload(b + i + LANES), a1);
    }
    for (; i + LANES <= n; i += LANES) a0 = vfma(vload(a + i), vload(b + i), a0);
    s = vsum(vadd(a0, a1));
  }
#endif
  for (; i < n; ++i) s += a[i] * float(b[i]);
  return s;
}

template <typename T>
inline void axpy_f(float w, const T* x, float* y, int64_t n) {
  int64_t i = 0;
#ifdef STEERCHAT_VEC
  if constexpr (vectorised<T>()) {
    const vec wv = vset(w);
    for (; i + LANES <= n; i += LANES) vstore(y + i, vfma(wv, vload(x + i), vload(y + i)));
  }
#endif
  for (; i < n; ++i) y[i] += w * float(x[i]);
}

// 1 / rms(x), as F.rms_norm computes it.
template <typename T>
inline float inv_rms(const T* x, int64_t D, double eps) {
  float ss = 0.f;
  for (int64_t i = 0; i < D; ++i) ss += float(x[i]) * float(x[i]);
  return 1.f / std::sqrt(ss / float(D) + float(eps));
}

void check_rows(const Tensor& x, const Tensor& w, const char* op) {
  TORCH_CHECK(x.is_contiguous(), op, ": x must be contiguous");
  TORCH_CHECK(w.numel() == x.size(-1) && w.scalar_type() == at::kFloat && w.is_contiguous(),
              op, ": w must be (D,) float32");
}

// y = x @ (w * scale[:, None])^T for one row x (..., K); w (N, K) int8, scale (N,) float32.
// Each row of weights is read once and multiplied in registers, and torch's intra-op threads
// share the rows.
Tensor int8_gemv(const Tensor& x, const Tensor& w, const Tensor& scale) {
  TORCH_CHECK(x.numel() == x.size(-1), "int8_gemv takes one row");
  TORCH_CHECK(w.scalar_type() == at::kChar && w.dim() == 2 && w.is_contiguous(),
              "int8_gemv: w must be contiguous (N, K) int8");
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(x.size(-1) == K && scale.numel() == N && scale.scalar_type() == at::kFloat && scale.is_contiguous(),
              "int8_gemv: x (..., K), w (N, K) and scale (N,) float32 do not match");
  auto shape = x.sizes().vec();
  shape.back() = N;
  Tensor y = at::empty(shape, x.options());
  const Tensor xc = x.contiguous();
  const float* sp = scale.data_ptr<float>();
  const int8_t* wp = w.data_ptr<int8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "int8_gemv", [&] {
    std::vector<float> xf(K);  // converted here: a tensor .to() would cost two ATen calls a matmul
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    for (int64_t k = 0; k < K; ++k) xf[k] = float(xp[k]);
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, N, 256, [&](int64_t a, int64_t b) {
      for (int64_t n = a; n < b; ++n) yp[n] = scalar_t(dot_f(xf.data(), wp + n * K, K) * sp[n]);
    });
  });
  return y;
}

// F.rms_norm(x.float(), w, eps).to(x.dtype), w the float32 (1 + weight) that Gemma scales by;
// with `h`, h + that, the norm rounded to x's dtype first, as the two ATen calls round it.
Tensor norm_rows(const Tensor& x, const Tensor& w, double eps, const Tensor* h) {
  const int64_t D = x.size(-1), R = x.numel() / D;
  Tensor y = at::empty_like(x);
  const float* wp = w.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "norm_rows", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* hp = h ? h->data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.data_ptr<scalar_t>();
    for (int64_t r = 0; r < R; ++r) {
      const scalar_t* xr = xp + r * D;
      const float inv = inv_rms(xr, D, eps);
      for (int64_t i = 0; i < D; ++i) {
        const scalar_t v = scalar_t(float(xr[i]) * inv * wp[i]);
        yp[r * D + i] = hp ? scalar_t(float(hp[r * D + i]) + float(v)) : v;
      }
    }
  });
  return y;
}

Tensor rms_norm(const Tensor& x, const Tensor& w, double eps) {
  check_rows(x, w, "rms_norm");
  return norm_rows(x, w, eps, nullptr);
}

Tensor add_rms_norm(const Tensor& h, const Tensor& x, const Tensor& w, double eps) {
  check_rows(x, w, "add_rms_norm");
  TORCH_CHECK(h.sizes() == x.sizes() && h.scalar_type() == x.scalar_type() && h.is_contiguous(),
              "add_rms_norm: h must be contiguous and shaped as x");
  return norm_rows(x, w, eps, &h);
}

// One decoding step's queries and keys: qkv (1, 1, H + 2KV, hd) -> q (1, H, 1, hd) and
// k (1, KV, 1, hd), each head rms-normed (q_w, k_w), then rotated (cos, sin: hd values each).
std::tuple<Tensor, Tensor> qk_norm_rope(const Tensor& qkv, int64_t H, int64_t KV, const Tensor& q_w,
                                        const Tensor& k_w, const Tensor& cos, const Tensor& sin, double eps) {
  const int64_t hd = qkv.size(-1), half = hd / 2;
  TORCH_CHECK(qkv.numel() == (H + 2 * KV) * hd && qkv.is_contiguous(), "qk_norm_rope takes one contiguous token");
  TORCH_CHECK(q_w.numel() == hd && k_w.numel() == hd && q_w.scalar_type() == at::kFloat &&
              k_w.scalar_type() == at::kFloat && q_w.is_contiguous() && k_w.is_contiguous(),
              "qk_norm_rope: q_w and k_w must be (hd,) float32");
  TORCH_CHECK(cos.numel() == hd && sin.numel() == hd, "qk_norm_rope: cos and sin must hold hd values");
  const Tensor cc = cos.to(qkv.scalar_type()).contiguous(), sc = sin.to(qkv.scalar_type()).contiguous();
  Tensor out = at::empty({H + KV, hd}, qkv.options());
  const float *qw = q_w.data_ptr<float>(), *kw = k_w.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "qk_norm_rope", [&] {
    std::vector<float> n(hd), c(hd), s(hd);
    for (int64_t i = 0; i < hd; ++i) {
      c[i] = float(cc.data_ptr<scalar_t>()[i]);
      s[i] = float(sc.data_ptr<scalar_t>()[i]);
    }
    for (int64_t h = 0; h < H + KV; ++h) {
      const scalar_t* x = qkv.data_ptr<scalar_t>() + h * hd;
      const float* wv = h < H ? qw : kw;
      const float inv = inv_rms(x, hd, eps);
      for (int64_t i = 0; i < hd; ++i) n[i] = float(x[i]) * inv * wv[i];
      scalar_t* o = out.data_ptr<scalar_t>() + h * hd;
      for (int64_t i = 0; i < half; ++i) {  // x * cos + rotate_half(x) * sin
        o[i] = scalar_t(n[i] * c[i] - n[i + half] * s[i]);
        o[i + half] = scalar_t(n[i + half] * c[i + half] + n[i] * s[i + half]);
      }
    }
  });
  return {out.narrow(0, 0, H).view({1, H, 1, hd}), out.narrow(0, H, KV).view({1, KV, 1, hd})};
}

// Attention of one query token: q (1, H, 1, hd), k and v (1, KV, T, hd) with H a multiple of
// KV (grouped heads), mask None or (.., T) boolean (true = attend) or additive -> (1, 1, H * hd).
// Scores and softmax in float32; SDPA's CPU kernel spends ~90 us setting up for this much work.
Tensor decode_attention(const Tensor& q, const Tensor& k, const Tensor& v, const std::optional<Tensor>& mask,
                        double scale) {
  const int64_t H = q.size(1), hd = q.size(3), KV = k.size(1), T = k.size(2);
  TORCH_CHECK(q.numel() == H * hd && q.is_contiguous() && k.is_contiguous() && v.is_contiguous() &&
              k.sizes() == v.sizes() && k.size(0) == 1 && k.size(3) == hd && H % KV == 0,
              "decode_attention: q (1, H, 1, hd), k and v contiguous (1, KV, T, hd)");
  Tensor m;
  if (mask.has_value() && mask->defined()) {
    m = mask->reshape({-1}).to(mask->scalar_type() == at::kBool ? at::kBool : at::kFloat).contiguous();
    TORCH_CHECK(m.numel() == T, "decode_attention: the mask must hold T values");
  }
  Tensor out = at::empty({1, 1, H * hd}, q.options());
  std::vector<float> qf(hd), p(T), acc(hd);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "decode_attention", [&] {
    const scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / KV);
      for (int64_t d = 0; d < hd; ++d) qf[d] = float(qp[h * hd + d]);
      float top = -INFINITY;
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* kr = kp + (g * T + t) * hd;
        float s = dot_f(qf.data(), kr, hd) * float(scale);
        if (m.defined()) {
          if (m.scalar_type() == at::kBool) s = m.data_ptr<bool>()[t] ? s : -INFINITY;
          else s += m.data_ptr<float>()[t];
        }
        p[t] = s;
        top = std::max(top, s);
      }
      float sum = 0.f;
      for (int64_t t = 0; t < T; ++t) sum += (p[t] = top == -INFINITY ? 0.f : std::exp(p[t] - top));
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* vr = vp + (g * T + t) * hd;
        axpy_f(p[t] / sum, vr, acc.data(), hd);
      }
      for (int64_t d = 0; d < hd; ++d) op[h * hd + d] = scalar_t(acc[d]);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(steerchat, m) {
  m.def("int8_gemv(Tensor x, Tensor w, Tensor scale) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor w, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor h, Tensor x, Tensor w, float eps) -> Tensor");
  m.def("qk_norm_rope(Tensor qkv, int H, int KV, Tensor q_w, Tensor k_w, Tensor cos, Tensor sin, float eps) "
        "-> (Tensor, Tensor)");
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(steerchat, CPU, m) {
  m.impl("int8_gemv", &int8_gemv);
  m.impl("rms_norm", &rms_norm);
  m.impl("add_rms_norm", &add_rms_norm);
  m.impl("qk_norm_rope", &qk_norm_rope);
  m.impl("decode_attention", &decode_attention);
}
