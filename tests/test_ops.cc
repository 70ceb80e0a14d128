// Every op family: the CPU reference against a double-precision formula in this file, and the CUDA
// path against the CPU reference on the same (dtype-rounded) random inputs, over odd and real shapes.
// Outputs are poisoned (NaN) before each run and surrounded by guard regions that must survive.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>

#include "kernels/core/error.h"
#include "kernels/cpu_math.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"
#include "kernels/softmax.h"
#include "model/runtime/ops.h"
#include "model/runtime/tensor.h"
#include "test_util.h"

namespace stavid {
namespace {

using test::nmse;
using test::random_values;

constexpr int64_t kGuard = 64;
constexpr float kSentinel = 1216.f;  // exact in bf16 and f16

// A device buffer of n elements with guard regions on both sides; the payload starts poisoned.
struct Guarded {
  Tensor whole;
  int64_t n;
  Guarded(int64_t n_, DType dt, Device dev) : n(n_) {
    std::vector<float> init(static_cast<size_t>(n + 2 * kGuard), kSentinel);
    for (int64_t i = 0; i < n; ++i) init[kGuard + i] = std::numeric_limits<float>::quiet_NaN();
    whole = Tensor::from_host(init, {n + 2 * kGuard}, dt, dev);
  }
  void* data() const { return static_cast<char*>(whole.data()) + kGuard * dtype_size(whole.dtype()); }
  void set(const std::vector<float>& v) {
    std::vector<float> all(static_cast<size_t>(n + 2 * kGuard), kSentinel);
    std::copy(v.begin(), v.end(), all.begin() + kGuard);
    whole.copy_from(Tensor::from_host(all, whole.shape(), whole.dtype(), Device::cpu()));
  }
  // The payload; fails the test if a guard was overwritten.
  std::vector<float> payload() const {
    auto all = whole.to_host_f32();
    for (int64_t i = 0; i < kGuard; ++i) {
      EXPECT_EQ(all[i], kSentinel) << "guard before the buffer overwritten at " << i;
      EXPECT_EQ(all[kGuard + n + i], kSentinel) << "guard after the buffer overwritten at " << i;
    }
    return {all.begin() + kGuard, all.begin() + kGuard + n};
  }
};

Guarded input(const std::vector<float>& v, DType dt, Device dev) {
  Guarded g(static_cast<int64_t>(v.size()), dt, dev);
  g.set(v);
  return g;
}

std::vector<Device> gpu_if_any() {
  if (rt::cuda_available()) return {Device::cuda(0)};
  return {};
}

const DType kAllTypes[] = {DType::F32, DType::BF16, DType::F16};

// ---------------- GEMM ----------------

struct GemmCase {
  int64_t m, n, k, batch;
  bool b_transposed;
  GemmEpilogue epi;
  bool accumulate;
};

std::vector<float> run_gemm(const GemmCase& c, DType dt, Device dev, const std::vector<float>& a,
                            const std::vector<float>& b, const std::vector<float>& bias,
                            const std::vector<float>& d0) {
  Guarded ga = input(a, dt, dev), gb = input(b, dt, dev), gbias = input(bias, dt, dev);
  Guarded gd(c.batch * c.m * c.n, dt, dev);
  if (c.accumulate) gd.set(d0);
  GemmParams p;
  p.a = ga.data();
  p.b = gb.data();
  p.d = gd.data();
  p.m = c.m;
  p.n = c.n;
  p.k = c.k;
  p.lda = c.k;
  p.ldb = c.b_transposed ? c.k : c.n;
  p.ldd = c.n;
  p.b_transposed = c.b_transposed;
  p.batch = c.batch;
  p.stride_a = c.m * c.k;
  p.stride_b = c.n * c.k;
  p.stride_d = c.m * c.n;
  p.epilogue = c.epi;
  const bool has_bias = c.epi == GemmEpilogue::Bias || c.epi == GemmEpilogue::BiasGeluTanh;
  p.bias = has_bias ? gbias.data() : nullptr;
  p.accumulate = c.accumulate;
  p.dtype = p.out_dtype = dt;
  p.device = dev;
  gemm(p, rt::current_stream(dev));
  return gd.payload();
}

std::vector<double> ref_gemm(const GemmCase& c, const std::vector<float>& a, const std::vector<float>& b,
                             const std::vector<float>& bias, const std::vector<float>& d0) {
  std::vector<double> d(static_cast<size_t>(c.batch * c.m * c.n));
  const bool has_bias = c.epi == GemmEpilogue::Bias || c.epi == GemmEpilogue::BiasGeluTanh;
  const bool gelu = c.epi == GemmEpilogue::GeluTanh || c.epi == GemmEpilogue::BiasGeluTanh;
  for (int64_t bi = 0; bi < c.batch; ++bi)
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t j = 0; j < c.n; ++j) {
        double s = 0;
        for (int64_t p = 0; p < c.k; ++p) {
          const double bv = c.b_transposed ? b[bi * c.n * c.k + j * c.k + p] : b[bi * c.n * c.k + p * c.n + j];
          s += static_cast<double>(a[bi * c.m * c.k + i * c.k + p]) * bv;
        }
        if (has_bias) s += bias[j];
        if (gelu) s = 0.5 * s * (1.0 + std::tanh(0.7978845608028654 * (s + 0.044715 * s * s * s)));
        const size_t o = static_cast<size_t>(bi * c.m * c.n + i * c.n + j);
        if (c.accumulate) s += d0[o];
        d[o] = s;
      }
  return d;
}

std::vector<GemmCase> gemm_cases() {
  std::vector<GemmCase> cases;
  const int64_t shapes[][3] = {{1, 1, 1}, {5, 7, 11}, {13, 5, 7}, {64, 48, 32}, {33, 130, 70}, {128, 96, 256}};
  for (auto& s : shapes)
    for (GemmEpilogue e : {GemmEpilogue::None, GemmEpilogue::Bias, GemmEpilogue::GeluTanh, GemmEpilogue::BiasGeluTanh})
      for (bool bt : {true, false}) cases.push_back({s[0], s[1], s[2], 1, bt, e, false});
  cases.push_back({7, 13, 5, 3, true, GemmEpilogue::Bias, false});
  cases.push_back({16, 24, 40, 4, false, GemmEpilogue::None, false});
  cases.push_back({11, 5, 13, 1, true, GemmEpilogue::Bias, true});
  cases.push_back({32, 64, 16, 2, true, GemmEpilogue::None, true});
  return cases;
}

// The branch-free CPU math that the CPU kernels use instead of libm (kernels/cpu_math.h).
TEST(CpuMath, ExpGeluSiluAgainstLibm) {
  double exp_err = 0, gelu_err = 0, silu_err = 0;
  for (double x = -87.0; x <= 88.0; x += 0.00731) {
    const float xf = static_cast<float>(x);
    const double ref = std::exp(static_cast<double>(xf));
    exp_err = std::max(exp_err, std::fabs(cpu::exp_fast(xf) - ref) / ref);
  }
  for (double x = -30.0; x <= 30.0; x += 0.00113) {
    const float xf = static_cast<float>(x);
    const double u = 0.7978845608028654 * (xf + 0.044715 * xf * xf * xf);
    const double gelu = 0.5 * xf * (1.0 + std::tanh(u)), silu = xf / (1.0 + std::exp(-double(xf)));
    gelu_err = std::max(gelu_err, std::fabs(cpu::gelu_tanh_fast(xf) - gelu) / (std::fabs(gelu) + 1e-6));
    silu_err = std::max(silu_err, std::fabs(cpu::silu_fast(xf) - silu) / (std::fabs(silu) + 1e-6));
  }
  EXPECT_LT(exp_err, 2e-7);
  EXPECT_LT(gelu_err, 3e-6);
  EXPECT_LT(silu_err, 3e-6);
  // Clamped outside the range: finite and normal; GELU's tails are 0 and x.
  EXPECT_GT(cpu::exp_fast(-1000.f), 0.f);
  EXPECT_TRUE(std::isfinite(cpu::exp_fast(1000.f)));
  EXPECT_GE(cpu::exp_fast(-1000.f), std::numeric_limits<float>::min());
  EXPECT_LT(std::fabs(cpu::gelu_tanh_fast(-100.f)), 1e-30f);
  EXPECT_FLOAT_EQ(cpu::gelu_tanh_fast(100.f), 100.f);
}

TEST(Gemm, CpuMatchesDoubleReference) {
  for (DType dt : kAllTypes) {
    for (const GemmCase& c : gemm_cases()) {
      const auto a = random_values(c.batch * c.m * c.k, 1, dt), b = random_values(c.batch * c.n * c.k, 2, dt);
      const auto bias = random_values(c.n, 3, dt), d0 = random_values(c.batch * c.m * c.n, 4, dt);
      const auto out = run_gemm(c, dt, Device::cpu(), a, b, bias, d0);
      ASSERT_TRUE(test::all_finite(out));
      EXPECT_LE(nmse(out, ref_gemm(c, a, b, bias, d0)), test::dtype_nmse_tol(dt) + 1e-12)
          << dtype_name(dt) << " m=" << c.m << " n=" << c.n << " k=" << c.k << " epi=" << int(c.epi);
    }
  }
}

TEST(Gemm, CudaMatchesCpu) {
  STAVID_REQUIRE_CUDA();
  for (Device dev : gpu_if_any()) {
    for (DType dt : kAllTypes) {
      for (const GemmCase& c : gemm_cases()) {
        const auto a = random_values(c.batch * c.m * c.k, 11, dt), b = random_values(c.batch * c.n * c.k, 12, dt);
        const auto bias = random_values(c.n, 13, dt), d0 = random_values(c.batch * c.m * c.n, 14, dt);
        const auto gpu = run_gemm(c, dt, dev, a, b, bias, d0);
        const auto cpu = run_gemm(c, dt, Device::cpu(), a, b, bias, d0);
        ASSERT_TRUE(test::all_finite(gpu));
        EXPECT_LE(nmse(gpu, cpu), 2 * test::dtype_nmse_tol(dt) + 1e-12)
            << dtype_name(dt) << " m=" << c.m << " n=" << c.n << " k=" << c.k << " epi=" << int(c.epi)
            << " bt=" << c.b_transposed << " batch=" << c.batch << " acc=" << c.accumulate;
      }
    }
  }
}

TEST(Gemm, RejectsBadParams) {
  GemmParams p;
  float x = 0;
  p.a = p.b = p.d = &x;
  p.m = p.n = p.k = 2;
  p.lda = 1;  // < k
  p.ldb = p.ldd = 2;
  EXPECT_THROW(gemm(p, Stream::cpu()), Error);
  p.lda = 2;
  p.epilogue = GemmEpilogue::Bias;  // no bias pointer
  EXPECT_THROW(gemm(p, Stream::cpu()), Error);
  p.epilogue = GemmEpilogue::GeluTanh;
  p.accumulate = true;
  EXPECT_THROW(gemm(p, Stream::cpu()), Error);
}

// ---------------- norms ----------------

struct NormCase {
  NormKind kind;
  int64_t rows, dim;
  bool affine, modulated;
  int64_t rows_per_group;
};

struct NormData {
  std::vector<float> x, w, b, mod;  // mod: [groups, 2*dim] = [shift | scale] like a chunked Linear output
};

NormData norm_data(const NormCase& c, DType dt, uint32_t seed) {
  const int64_t groups = (c.rows + c.rows_per_group - 1) / c.rows_per_group;
  NormData d;
  d.x = random_values(c.rows * c.dim, seed, dt, -2.f, 3.f);
  d.w = random_values(c.dim, seed + 1, dt, 0.5f, 1.5f);
  d.b = random_values(c.dim, seed + 2, dt);
  d.mod = random_values(groups * 2 * c.dim, seed + 3, dt, -0.5f, 0.5f);
  return d;
}

std::vector<float> run_norm(const NormCase& c, DType dt, Device dev, const NormData& d) {
  Guarded gx = input(d.x, dt, dev), gw = input(d.w, dt, dev), gb = input(d.b, dt, dev), gm = input(d.mod, dt, dev);
  Guarded gy(c.rows * c.dim, dt, dev);
  NormParams p;
  p.kind = c.kind;
  p.x = gx.data();
  p.y = gy.data();
  p.rows = c.rows;
  p.dim = c.dim;
  p.x_stride = p.y_stride = c.dim;
  if (c.affine) {
    p.weight = gw.data();
    if (c.kind == NormKind::LayerNorm) p.bias = gb.data();
  }
  if (c.modulated) {
    const auto* base = static_cast<const char*>(gm.data());
    p.scale = base + c.dim * dtype_size(dt);
    if (c.kind == NormKind::LayerNorm) p.shift = base;
    p.rows_per_group = c.rows_per_group;
    p.mod_stride = 2 * c.dim;
  }
  p.eps = 1e-6f;
  p.dtype = dt;
  p.device = dev;
  norm(p, rt::current_stream(dev));
  return gy.payload();
}

std::vector<double> ref_norm(const NormCase& c, const NormData& d) {
  std::vector<double> y(static_cast<size_t>(c.rows * c.dim));
  for (int64_t r = 0; r < c.rows; ++r) {
    double mean = 0, sq = 0;
    if (c.kind == NormKind::LayerNorm) {
      for (int64_t i = 0; i < c.dim; ++i) mean += d.x[r * c.dim + i];
      mean /= c.dim;
    }
    for (int64_t i = 0; i < c.dim; ++i) sq += (d.x[r * c.dim + i] - mean) * (d.x[r * c.dim + i] - mean);
    const double rstd = 1.0 / std::sqrt(sq / c.dim + 1e-6);
    const int64_t g = r / c.rows_per_group;
    for (int64_t i = 0; i < c.dim; ++i) {
      double v = (d.x[r * c.dim + i] - mean) * rstd;
      if (c.affine) {
        v *= d.w[i];
        if (c.kind == NormKind::LayerNorm) v += d.b[i];
      }
      if (c.modulated) {
        v *= 1.0 + d.mod[g * 2 * c.dim + c.dim + i];
        if (c.kind == NormKind::LayerNorm) v += d.mod[g * 2 * c.dim + i];
      }
      y[r * c.dim + i] = v;
    }
  }
  return y;
}

std::vector<NormCase> norm_cases() {
  std::vector<NormCase> cases;
  for (NormKind k : {NormKind::LayerNorm, NormKind::RmsNorm})
    for (int64_t dim : {1, 5, 7, 13, 32, 64, 128, 256, 384, 512, 768, 1000, 1024, 1536, 2048, 3072, 4096, 5120})
      for (int64_t rows : {1, 3, 11}) {
        cases.push_back({k, rows, dim, false, false, 1});
        cases.push_back({k, rows, dim, true, false, 1});
        cases.push_back({k, rows, dim, false, true, rows > 1 ? 2 : 1});
        cases.push_back({k, rows, dim, true, true, rows});
      }
  return cases;
}

TEST(Norm, CpuMatchesDoubleReference) {
  for (DType dt : kAllTypes)
    for (const NormCase& c : norm_cases()) {
      const NormData d = norm_data(c, dt, 21);
      const auto out = run_norm(c, dt, Device::cpu(), d);
      ASSERT_TRUE(test::all_finite(out));
      // dim 1 LayerNorm is exactly zero before the affine/modulation terms: compare absolute error.
      EXPECT_LE(nmse(out, ref_norm(c, d)), test::dtype_nmse_tol(dt) + 1e-10)
          << dtype_name(dt) << " kind=" << int(c.kind) << " rows=" << c.rows << " dim=" << c.dim;
    }
}

TEST(Norm, CudaMatchesCpu) {
  STAVID_REQUIRE_CUDA();
  for (Device dev : gpu_if_any())
    for (DType dt : kAllTypes)
      for (const NormCase& c : norm_cases()) {
        const NormData d = norm_data(c, dt, 31);
        const auto gpu = run_norm(c, dt, dev, d);
        const auto cpu = run_norm(c, dt, Device::cpu(), d);
        ASSERT_TRUE(test::all_finite(gpu));
        EXPECT_LE(nmse(gpu, cpu), 2 * test::dtype_nmse_tol(dt) + 1e-10)
            << dtype_name(dt) << " kind=" << int(c.kind) << " rows=" << c.rows << " dim=" << c.dim
            << " affine=" << c.affine << " mod=" << c.modulated;
      }
}

#if defined(STAVID_WITH_CUDA)
TEST(Norm, EveryCudaKernelMatchesCpu) {
  STAVID_REQUIRE_CUDA();
  // Force each kernel on shapes the selector would give to another, so every path is exercised.
  for (Device dev : gpu_if_any())
    for (DType dt : kAllTypes)
      for (int64_t dim : {64, 256, 768, 3072}) {
        const NormCase c{NormKind::LayerNorm, 9, dim, true, true, 4};
        const NormData d = norm_data(c, dt, 37);
        const auto cpu = run_norm(c, dt, Device::cpu(), d);
        for (auto k : {detail::NormCudaKernel::RowGroup, detail::NormCudaKernel::BlockRow, detail::NormCudaKernel::Generic}) {
          Guarded gx = input(d.x, dt, dev), gw = input(d.w, dt, dev), gb = input(d.b, dt, dev), gm = input(d.mod, dt, dev);
          Guarded gy(c.rows * c.dim, dt, dev);
          NormParams p;
          p.x = gx.data();
          p.y = gy.data();
          p.rows = c.rows;
          p.dim = c.dim;
          p.x_stride = p.y_stride = c.dim;
          p.weight = gw.data();
          p.bias = gb.data();
          p.shift = gm.data();
          p.scale = static_cast<const char*>(gm.data()) + c.dim * dtype_size(dt);
          p.rows_per_group = c.rows_per_group;
          p.mod_stride = 2 * c.dim;
          p.dtype = dt;
          p.device = dev;
          if (k == detail::NormCudaKernel::RowGroup && detail::select_norm_cuda_kernel(p) != k) continue;
          detail::norm_cuda_with(p, rt::current_stream(dev).cuda, k);
          const auto gpu = gy.payload();
          EXPECT_LE(nmse(gpu, cpu), 2 * test::dtype_nmse_tol(dt) + 1e-10)
              << detail::norm_cuda_kernel_name(k) << " " << dtype_name(dt) << " dim=" << dim;
        }
      }
}

#endif  // STAVID_WITH_CUDA

TEST(Norm, InPlaceAndStridedRows) {
  // y aliases x, and rows sit in a wider buffer (row stride 2*dim), on every device.
  std::vector<Device> devs{Device::cpu()};
  for (Device d : gpu_if_any()) devs.push_back(d);
  for (Device dev : devs) {
    const int64_t rows = 6, dim = 256;
    auto x = random_values(rows * 2 * dim, 41, DType::BF16);
    Guarded g = input(x, DType::BF16, dev);
    NormParams p;
    p.x = p.y = g.data();
    p.rows = rows;
    p.dim = dim;
    p.x_stride = p.y_stride = 2 * dim;
    p.dtype = DType::BF16;
    p.device = dev;
    norm(p, rt::current_stream(dev));
    auto y = g.payload();
    NormCase c{NormKind::LayerNorm, 1, dim, false, false, 1};
    for (int64_t r = 0; r < rows; ++r) {
      NormData d;
      d.x.assign(x.begin() + r * 2 * dim, x.begin() + r * 2 * dim + dim);
      std::vector<float> got(y.begin() + r * 2 * dim, y.begin() + r * 2 * dim + dim);
      EXPECT_LE(nmse(got, ref_norm(c, d)), test::dtype_nmse_tol(DType::BF16)) << dev.str();
      // the other half of each row is untouched
      for (int64_t i = dim; i < 2 * dim; ++i) ASSERT_EQ(y[r * 2 * dim + i], x[r * 2 * dim + i]);
    }
  }
}

// ---------------- element-wise ----------------

double ref_unary(UnaryOp op, double x) {
  return op == UnaryOp::GeluTanh ? 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
                                 : x / (1.0 + std::exp(-x));
}

std::vector<float> run_unary(UnaryOp op, DType dt, Device dev, const std::vector<float>& x) {
  Guarded gx = input(x, dt, dev);
  Guarded gy(static_cast<int64_t>(x.size()), dt, dev);
  UnaryParams p;
  p.op = op;
  p.x = gx.data();
  p.y = gy.data();
  p.n = static_cast<int64_t>(x.size());
  p.dtype = dt;
  p.device = dev;
  unary(p, rt::current_stream(dev));
  return gy.payload();
}

TEST(Unary, CpuAndCuda) {
  for (DType dt : kAllTypes)
    for (UnaryOp op : {UnaryOp::GeluTanh, UnaryOp::Silu})
      for (int64_t n : {1, 5, 7, 13, 1000, 65537}) {
        const auto x = random_values(n, 51, dt, -6.f, 6.f);
        std::vector<double> ref(x.size());
        for (size_t i = 0; i < x.size(); ++i) ref[i] = ref_unary(op, x[i]);
        const auto cpu = run_unary(op, dt, Device::cpu(), x);
        EXPECT_LE(nmse(cpu, ref), test::dtype_nmse_tol(dt) + 1e-12) << dtype_name(dt) << " n=" << n;
        for (Device dev : gpu_if_any()) {
          const auto gpu = run_unary(op, dt, dev, x);
          ASSERT_TRUE(test::all_finite(gpu));
          EXPECT_LE(nmse(gpu, cpu), 2 * test::dtype_nmse_tol(dt) + 1e-12) << dtype_name(dt) << " n=" << n;
        }
      }
}

struct BinaryCase {
  int64_t rows, cols, rows_per_group;
  bool broadcast_row;  // b is one [cols] vector
};

std::vector<float> run_binary(BinaryOp op, const BinaryCase& c, DType dt, Device dev, const std::vector<float>& a,
                              const std::vector<float>& b) {
  Guarded ga = input(a, dt, dev), gb = input(b, dt, dev);
  Guarded gy(c.rows * c.cols, dt, dev);
  BinaryParams p;
  p.op = op;
  p.a = ga.data();
  p.b = gb.data();
  p.y = gy.data();
  p.rows = c.rows;
  p.cols = c.cols;
  p.a_stride = p.y_stride = c.cols;
  p.b_rows_per_group = c.broadcast_row ? c.rows : c.rows_per_group;
  p.b_stride = c.broadcast_row ? 0 : c.cols;
  p.dtype = dt;
  p.device = dev;
  binary(p, rt::current_stream(dev));
  return gy.payload();
}

TEST(Binary, CpuAndCudaWithBroadcasts) {
  const BinaryCase cases[] = {{1, 1, 1, false}, {5, 7, 1, false}, {13, 11, 1, true}, {12, 256, 4, false},
                              {64, 3072, 1, true}, {9, 40, 3, false}};
  for (DType dt : kAllTypes)
    for (BinaryOp op : {BinaryOp::Add, BinaryOp::Mul})
      for (const BinaryCase& c : cases) {
        const int64_t b_rows = c.broadcast_row ? 1 : (c.rows + c.rows_per_group - 1) / c.rows_per_group;
        const auto a = random_values(c.rows * c.cols, 61, dt), b = random_values(b_rows * c.cols, 62, dt);
        std::vector<double> ref(a.size());
        for (int64_t r = 0; r < c.rows; ++r)
          for (int64_t j = 0; j < c.cols; ++j) {
            const double bv = b[(c.broadcast_row ? 0 : r / c.rows_per_group) * c.cols + j];
            ref[r * c.cols + j] = op == BinaryOp::Add ? a[r * c.cols + j] + bv : a[r * c.cols + j] * bv;
          }
        const auto cpu = run_binary(op, c, dt, Device::cpu(), a, b);
        EXPECT_LE(nmse(cpu, ref), test::dtype_nmse_tol(dt) + 1e-12);
        for (Device dev : gpu_if_any()) {
          const auto gpu = run_binary(op, c, dt, dev, a, b);
          EXPECT_LE(nmse(gpu, cpu), test::dtype_nmse_tol(dt) + 1e-12) << dtype_name(dt) << " " << c.rows << "x" << c.cols;
        }
      }
}

std::vector<float> run_gated(DType dt, Device dev, int64_t rows, int64_t cols, int64_t rpg, bool gated,
                             const std::vector<float>& x, const std::vector<float>& y, const std::vector<float>& g) {
  Guarded gx = input(x, dt, dev), gy = input(y, dt, dev), gg = input(g, dt, dev);
  GatedResidualParams p;
  p.x = gx.data();
  p.y = gy.data();
  p.gate = gated ? gg.data() : nullptr;
  p.rows = rows;
  p.cols = cols;
  p.x_stride = p.y_stride = cols;
  p.rows_per_group = rpg;
  p.gate_stride = 3 * cols;  // gate is the middle third of a wider modulation row
  if (gated) p.gate = static_cast<const char*>(gg.data()) + cols * dtype_size(dt);
  p.dtype = dt;
  p.device = dev;
  gated_residual(p, rt::current_stream(dev));
  return gx.payload();
}

TEST(GatedResidual, CpuAndCuda) {
  const int64_t shapes[][3] = {{1, 1, 1}, {7, 5, 7}, {13, 11, 4}, {32, 3072, 16}, {6, 24, 2}};
  for (DType dt : kAllTypes)
    for (auto& s : shapes)
      for (bool gated : {true, false}) {
        const int64_t rows = s[0], cols = s[1], rpg = s[2], groups = (rows + rpg - 1) / rpg;
        const auto x = random_values(rows * cols, 71, dt), y = random_values(rows * cols, 72, dt);
        const auto g = random_values(groups * 3 * cols, 73, dt);
        std::vector<double> ref(x.size());
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t j = 0; j < cols; ++j)
            ref[r * cols + j] = x[r * cols + j] + (gated ? g[(r / rpg) * 3 * cols + cols + j] : 1.0) * y[r * cols + j];
        const auto cpu = run_gated(dt, Device::cpu(), rows, cols, rpg, gated, x, y, g);
        EXPECT_LE(nmse(cpu, ref), test::dtype_nmse_tol(dt) + 1e-12);
        for (Device dev : gpu_if_any()) {
          const auto gpu = run_gated(dt, dev, rows, cols, rpg, gated, x, y, g);
          EXPECT_LE(nmse(gpu, cpu), test::dtype_nmse_tol(dt) + 1e-12) << dtype_name(dt) << " " << rows << "x" << cols;
        }
      }
}

// ---------------- softmax ----------------

std::vector<float> run_softmax(DType dt, Device dev, int64_t rows, int64_t cols, float scale, const std::vector<float>& x) {
  Guarded gx = input(x, dt, dev);
  Guarded gy(rows * cols, dt, dev);
  SoftmaxParams p;
  p.x = gx.data();
  p.y = gy.data();
  p.rows = rows;
  p.cols = cols;
  p.x_stride = p.y_stride = cols;
  p.scale = scale;
  p.dtype = dt;
  p.device = dev;
  softmax(p, rt::current_stream(dev));
  return gy.payload();
}

TEST(Softmax, CpuAndCudaIncludingMaskedRows) {
  const int64_t shapes[][2] = {{1, 1}, {5, 7}, {13, 11}, {3, 1000}, {4, 4097}};
  for (DType dt : kAllTypes)
    for (auto& s : shapes) {
      const int64_t rows = s[0], cols = s[1];
      auto x = random_values(rows * cols, 81, dt, -5.f, 5.f);
      // The last row is fully masked when there is more than one row: it must come out as zeros.
      if (rows > 1)
        for (int64_t j = 0; j < cols; ++j) x[(rows - 1) * cols + j] = -std::numeric_limits<float>::infinity();
      std::vector<double> ref(x.size(), 0.0);
      for (int64_t r = 0; r < rows; ++r) {
        if (rows > 1 && r == rows - 1) continue;
        double mx = -1e300, sum = 0;
        for (int64_t j = 0; j < cols; ++j) mx = std::max(mx, 0.7 * x[r * cols + j]);
        for (int64_t j = 0; j < cols; ++j) sum += std::exp(0.7 * x[r * cols + j] - mx);
        for (int64_t j = 0; j < cols; ++j) ref[r * cols + j] = std::exp(0.7 * x[r * cols + j] - mx) / sum;
      }
      const auto cpu = run_softmax(dt, Device::cpu(), rows, cols, 0.7f, x);
      ASSERT_TRUE(test::all_finite(cpu));
      EXPECT_LE(nmse(cpu, ref), test::dtype_nmse_tol(dt) + 1e-12);
      for (Device dev : gpu_if_any()) {
        const auto gpu = run_softmax(dt, dev, rows, cols, 0.7f, x);
        ASSERT_TRUE(test::all_finite(gpu));
        EXPECT_LE(nmse(gpu, cpu), 4 * test::dtype_nmse_tol(dt) + 1e-12) << dtype_name(dt) << " " << rows << "x" << cols;
      }
    }
}

// ---------------- tensor-level wrappers ----------------

TEST(Ops, LinearAndModulatedNormOnTensors) {
  std::vector<Device> devs{Device::cpu()};
  for (Device d : gpu_if_any()) devs.push_back(d);
  const int64_t B = 2, N = 9, D = 64, F = 48;
  const auto xv = random_values(B * N * D, 91, DType::BF16), wv = random_values(F * D, 92, DType::BF16);
  const auto bv = random_values(F, 93, DType::BF16), mv = random_values(B * 6 * D, 94, DType::BF16);
  std::vector<std::vector<float>> outs;
  for (Device dev : devs) {
    Tensor x = Tensor::from_host(xv, {B, N, D}, DType::BF16, dev);
    Tensor mod = Tensor::from_host(mv, {B, 6 * D}, DType::BF16, dev);
    Tensor shift = mod.slice(1, 0, D), scale = mod.slice(1, D, 2 * D), gate = mod.slice(1, 2 * D, 3 * D);
    Tensor h = ops::layer_norm_modulated(x, scale, shift, 1e-6f);
    Tensor y = ops::linear(h, Tensor::from_host(wv, {F, D}, DType::BF16, dev),
                           Tensor::from_host(bv, {F}, DType::BF16, dev), ops::Activation::GeluTanh);
    EXPECT_EQ(y.shape(), (Shape{B, N, F}));
    Tensor r = x.clone();
    ops::gated_residual_(r, h, gate);
    auto out = y.to_host_f32();
    auto res = r.to_host_f32();
    out.insert(out.end(), res.begin(), res.end());
    outs.push_back(out);
  }
  // Independent check of the CPU result against a double computation.
  std::vector<double> ref_h(static_cast<size_t>(B * N * D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n) {
      const float* row = &xv[(b * N + n) * D];
      double mean = 0, sq = 0;
      for (int64_t i = 0; i < D; ++i) mean += row[i];
      mean /= D;
      for (int64_t i = 0; i < D; ++i) sq += (row[i] - mean) * (row[i] - mean);
      const double rstd = 1 / std::sqrt(sq / D + 1e-6);
      for (int64_t i = 0; i < D; ++i)
        ref_h[(b * N + n) * D + i] = round_to(DType::BF16, static_cast<float>(
            (row[i] - mean) * rstd * (1 + mv[b * 6 * D + D + i]) + mv[b * 6 * D + i]));
    }
  std::vector<double> ref;
  for (int64_t r = 0; r < B * N; ++r)
    for (int64_t f = 0; f < F; ++f) {
      double s = bv[f];
      for (int64_t i = 0; i < D; ++i) s += ref_h[r * D + i] * wv[f * D + i];
      ref.push_back(0.5 * s * (1 + std::tanh(0.7978845608028654 * (s + 0.044715 * s * s * s))));
    }
  for (int64_t r = 0; r < B * N; ++r)
    for (int64_t i = 0; i < D; ++i)
      ref.push_back(xv[r * D + i] + mv[(r / N) * 6 * D + 2 * D + i] * ref_h[r * D + i]);
  EXPECT_LE(nmse(outs[0], ref), 1e-4);
  for (size_t i = 1; i < outs.size(); ++i) EXPECT_LE(nmse(outs[i], outs[0]), 1e-4);
}

TEST(Ops, ShapeErrorsAreClear) {
  Tensor x = Tensor::zeros({4, 8}, DType::F32, Device::cpu());
  Tensor w = Tensor::zeros({3, 7}, DType::F32, Device::cpu());
  try {
    ops::linear(x, w);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("does not match"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ops::add(x, Tensor::zeros({5}, DType::F32, Device::cpu())), Error);
  EXPECT_THROW(ops::add(x, Tensor::zeros({4, 8}, DType::BF16, Device::cpu())), Error);
}

}  // namespace
}  // namespace stavid
