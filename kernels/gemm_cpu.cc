// CPU GEMM: OpenBLAS sgemm when the build has it, else a portable cache-blocked kernel. 16-bit
// operands are widened to fp32 first; the epilogue (bias, GELU-tanh, rounding to out_dtype) runs on
// the fp32 result, as cuBLASLt does on the GPU.
#include <algorithm>
#include <vector>

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

// C[m,n] = A[m,k] . op(B), fp32, dense row-major operands (lda=k, ldb=k or n, ldc=n).
void sgemm_dense(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k,
                 bool b_transposed) {
#if defined(STAVID_HAVE_OPENBLAS)
  cblas_sgemm(CblasRowMajor, CblasNoTrans, b_transposed ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.f, a,
              static_cast<int>(k), b, static_cast<int>(b_transposed ? k : n), 0.f, c,
              static_cast<int>(n));
#else
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
  std::vector<float> c(static_cast<size_t>(p.m * p.n));
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
    sgemm_dense(a, b, c.data(), p.m, p.n, p.k, p.b_transposed);

    for (int64_t i = 0; i < p.m; ++i) {
      for (int64_t j = 0; j < p.n; ++j) {
        float v = p.alpha * c[i * p.n + j];
        if (has_bias) v += bias[j];
        if (has_gelu) v = gelu_tanh_f(v);
        const size_t di = static_cast<size_t>(i * p.ldd + j);
        if (p.accumulate) v += load_as_float(d_base, p.out_dtype, di);
        store_from_float(d_base, p.out_dtype, di, v);
      }
    }
  }
}

}  // namespace stavid::detail
