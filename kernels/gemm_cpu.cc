// CPU GEMM: OpenBLAS sgemm when the build has it, else a portable cache-blocked kernel. 16-bit
// operands are widened to fp32 first; the epilogue (bias, GELU-tanh, rounding to out_dtype) runs on
// the fp32 result, as cuBLASLt does on the GPU.
#include <algorithm>
#include <vector>

#include "kernels/cpu_math.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"

#if defined(STAVID_HAVE_OPENBLAS)
#include <cblas.h>
#endif

namespace stavid::detail {
namespace {

// Copies a rows x cols matrix (row stride ld) of dtype t into a dense fp32 buffer.
std::vector<float> widen(const void* src, DType t, int64_t rows, int64_t cols, int64_t ld) {
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      out[r * cols + c] = load_as_float(src, t, static_cast<size_t>(r * ld + c));
  return out;
}

#if defined(STAVID_HAVE_OPENBLAS)
constexpr bool kHaveBlas = true;
#else
constexpr bool kHaveBlas = false;
#endif

// C[m,n] = alpha A[m,k] . op(B) + beta C, fp32, row-major (lda=k, ldb=k or n, C's row stride ldc).
// Without OpenBLAS only alpha = 1, beta = 0 and ldc = n are used.
void sgemm_dense(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k,
                 bool b_transposed, float alpha = 1.f, float beta = 0.f, int64_t ldc = -1) {
#if defined(STAVID_HAVE_OPENBLAS)
  cblas_sgemm(CblasRowMajor, CblasNoTrans, b_transposed ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
              static_cast<int>(k), b, static_cast<int>(b_transposed ? k : n), beta, c,
              static_cast<int>(ldc < 0 ? n : ldc));
#else
  (void)alpha;
  (void)beta;
  (void)ldc;
  // Portable path: B made [k, n] so the inner loop streams rows of B and C.
  std::vector<float> bt;
  const float* bkn = b;
  if (b_transposed) {
    bt.resize(static_cast<size_t>(k * n));
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p) bt[p * n + j] = b[j * k + p];
    bkn = bt.data();
  }
  std::fill(c, c + m * n, 0.f);
  constexpr int64_t kBlockK = 256;
  for (int64_t p0 = 0; p0 < k; p0 += kBlockK) {
    const int64_t p1 = std::min(k, p0 + kBlockK);
    for (int64_t i = 0; i < m; ++i) {
      float* ci = c + i * n;
      for (int64_t p = p0; p < p1; ++p) {
        const float aip = a[i * k + p];
        const float* bp = bkn + p * n;
        for (int64_t j = 0; j < n; ++j) ci[j] += aip * bp[j];
      }
    }
  }
#endif
}
}  // namespace

void gemm_cpu(const GemmParams& p) {
  const int64_t b_rows = p.b_transposed ? p.n : p.k;
  const int64_t b_cols = p.b_transposed ? p.k : p.n;
  const bool has_bias = p.epilogue == GemmEpilogue::Bias || p.epilogue == GemmEpilogue::BiasGeluTanh;
  const bool has_gelu = p.epilogue == GemmEpilogue::GeluTanh || p.epilogue == GemmEpilogue::BiasGeluTanh;
  std::vector<float> bias;
  if (has_bias) bias = widen(p.bias, p.out_dtype, 1, p.n, p.n);
  // The product goes straight into D when D is fp32 and the epilogue order allows it (an
  // accumulated output adds D after bias and GELU, so those go through the temporary).
  const bool direct = kHaveBlas && p.out_dtype == DType::F32 && (!p.accumulate || (!has_bias && !has_gelu));
  std::vector<float> c(direct ? 0 : static_cast<size_t>(p.m * p.n));
  const size_t in_size = dtype_size(p.dtype);
  const size_t out_size = dtype_size(p.out_dtype);

  for (int64_t bi = 0; bi < p.batch; ++bi) {
    const auto* a_base = static_cast<const char*>(p.a) + bi * p.stride_a * in_size;
    const auto* b_base = static_cast<const char*>(p.b) + bi * p.stride_b * in_size;
    auto* d_base = static_cast<char*>(p.d) + bi * p.stride_d * out_size;

    std::vector<float> a32, b32;
    const float* a = nullptr;
    const float* b = nullptr;
    if (p.dtype == DType::F32 && p.lda == p.k) {
      a = reinterpret_cast<const float*>(a_base);
    } else {
      a32 = widen(a_base, p.dtype, p.m, p.k, p.lda);
      a = a32.data();
    }
    if (p.dtype == DType::F32 && p.ldb == b_cols) {
      b = reinterpret_cast<const float*>(b_base);
    } else {
      b32 = widen(b_base, p.dtype, b_rows, b_cols, p.ldb);
      b = b32.data();
    }
    if (direct) {
      // fp32 output: the product lands in D (accumulating with beta = 1 when asked), then bias and
      // GELU in place; no temporary C and no per-element dtype dispatch.
      auto* d = reinterpret_cast<float*>(d_base);
      sgemm_dense(a, b, d, p.m, p.n, p.k, p.b_transposed, p.alpha, p.accumulate ? 1.f : 0.f, p.ldd);
      if (!has_bias && !has_gelu) continue;
      for (int64_t i = 0; i < p.m; ++i) {
        float* row = d + i * p.ldd;
        if (has_bias)
          for (int64_t j = 0; j < p.n; ++j) row[j] += bias[j];
        if (has_gelu)
          for (int64_t j = 0; j < p.n; ++j) row[j] = cpu::gelu_tanh_fast(row[j]);
      }
      continue;
    }
    sgemm_dense(a, b, c.data(), p.m, p.n, p.k, p.b_transposed);

    for (int64_t i = 0; i < p.m; ++i) {
      for (int64_t j = 0; j < p.n; ++j) {
        float v = p.alpha * c[i * p.n + j];
        if (has_bias) v += bias[j];
        if (has_gelu) v = cpu::gelu_tanh_fast(v);
        const size_t di = static_cast<size_t>(i * p.ldd + j);
        if (p.accumulate) v += load_as_float(d_base, p.out_dtype, di);
        store_from_float(d_base, p.out_dtype, di, v);
      }
    }
  }
}

}  // namespace stavid::detail
