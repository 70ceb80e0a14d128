// Op-family benchmark: one JSON object per line on stdout.
//   {"bench":"gemm","variant":"bias","m":..,"n":..,"k":..,"dtype":"bf16","ms":..,"tflops":..}
//   {"bench":"norm","variant":"layernorm_mod","rows":..,"dim":..,"ms":..,"gbps":..}
// Times are medians over repeated runs (CUDA events on the GPU, steady_clock on the CPU), after
// warm-up. Bandwidth counts each input read once and each output written once; GEMM FLOPs are
// 2*m*n*k. The device-copy line is the bandwidth ceiling the memory-bound ops are judged against.
//
// Usage: bench_ops [--cpu] [--rows N] [--dim D] [--ffn F] [--reps R]
//   defaults (GPU): rows 115200 (30x48x80 latent tokens), dim 3072, ffn 12288.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/core/error.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"
#include "kernels/softmax.h"
#include "model/runtime/cuda_runtime.h"
#include "model/runtime/tensor.h"
#include "bench/bench_util.h"

#if defined(STAVID_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace stavid {
namespace {

struct Options {
  bool cpu = false;
  int64_t rows = 115200, dim = 3072, ffn = 12288;
  int reps = 20;
};

using bench::device_name;
using bench::time_ms;

void emit(const std::string& fields, double ms, const std::string& dev) {
  std::printf("{%s,\"ms\":%.5f,\"device\":\"%s\"}\n", fields.c_str(), ms, dev.c_str());
  std::fflush(stdout);
}

std::string kv(const char* k, double v) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "\"%s\":%.6g", k, v);
  return buf;
}
std::string ks(const char* k, const std::string& v) { return std::string("\"") + k + "\":\"" + v + "\""; }

void run(const Options& o) {
  const Device dev = o.cpu ? Device::cpu() : Device::cuda(0);
  const std::string dname = device_name(dev);
  const Stream s = rt::current_stream(dev);
  const DType dt = o.cpu ? DType::F32 : DType::BF16;
  const std::string dts = dtype_name(dt);
  const double esz = static_cast<double>(dtype_size(dt));

  // Inputs are random (never zeros: zeros run faster than real data on tensor cores).
  Tensor x = Tensor::randn({o.rows, o.dim}, 1, dt, dev);
  Tensor y = Tensor::empty({o.rows, o.dim}, dt, dev);

  // ---- device copy: the bandwidth ceiling ----
  {
    const double bytes = 2.0 * o.rows * o.dim * esz;
    const double ms = time_ms(dev, o.reps, [&] {
      rt::copy_bytes(y.data(), dev, x.data(), dev, x.nbytes(), s);
    });
    emit(ks("bench", "copy") + "," + kv("bytes", bytes) + "," + kv("gbps", bytes / ms / 1e6), ms, dname);
  }

  // ---- norms ----
  Tensor mod = Tensor::randn({1, 6 * o.dim}, 2, dt, dev);
  // kernel < 0: the selector's choice; otherwise a forced detail::NormCudaKernel.
  auto norm_case = [&](const char* variant, NormKind kind, bool modulated, int64_t rows, int64_t dim, int kernel) {
    NormParams p;
    p.kind = kind;
    p.x = x.data();
    p.y = y.data();
    p.rows = rows;
    p.dim = dim;
    p.x_stride = p.y_stride = dim;
    if (modulated) {
      p.shift = mod.data();
      p.scale = static_cast<char*>(mod.data()) + o.dim * static_cast<int64_t>(esz);
      p.rows_per_group = rows;
      p.mod_stride = 6 * o.dim;
    }
    p.dtype = dt;
    p.device = dev;
    std::string kname = "cpu";
#if defined(STAVID_WITH_CUDA)
    if (dev.is_cuda()) {
      const auto k = kernel < 0 ? detail::select_norm_cuda_kernel(p) : static_cast<detail::NormCudaKernel>(kernel);
      kname = detail::norm_cuda_kernel_name(k);
    }
#endif
    const double bytes = norm_bytes(p);
    const double ms = time_ms(dev, o.reps, [&] {
#if defined(STAVID_WITH_CUDA)
      if (dev.is_cuda() && kernel >= 0) {
        detail::norm_cuda_with(p, s.cuda, static_cast<detail::NormCudaKernel>(kernel));
        return;
      }
#endif
      norm(p, s);
    });
    emit(ks("bench", "norm") + "," + ks("variant", variant) + "," + ks("kernel", kname) + "," +
             kv("forced", kernel >= 0) + "," + kv("rows", static_cast<double>(rows)) + "," +
             kv("dim", static_cast<double>(dim)) + "," + ks("dtype", dts) + "," + kv("gbps", bytes / ms / 1e6),
         ms, dname);
  };
  norm_case("layernorm_mod", NormKind::LayerNorm, true, o.rows, o.dim, -1);
#if defined(STAVID_WITH_CUDA)
  if (dev.is_cuda())
    for (auto k : {detail::NormCudaKernel::BlockRow, detail::NormCudaKernel::Generic})
      norm_case("layernorm_mod", NormKind::LayerNorm, true, o.rows, o.dim, static_cast<int>(k));
#endif
  norm_case("layernorm", NormKind::LayerNorm, false, o.rows, o.dim, -1);
  norm_case("rmsnorm_head", NormKind::RmsNorm, false, o.rows * o.dim / 128, 128, -1);

  // ---- element-wise ----
  {
    GatedResidualParams p;
    p.x = y.data();
    p.y = x.data();
    p.gate = static_cast<char*>(mod.data()) + 2 * o.dim * static_cast<int64_t>(esz);
    p.rows = o.rows;
    p.cols = o.dim;
    p.x_stride = p.y_stride = o.dim;
    p.rows_per_group = o.rows;
    p.gate_stride = 6 * o.dim;
    p.dtype = dt;
    p.device = dev;
    const double bytes = 3.0 * o.rows * o.dim * esz;
    const double ms = time_ms(dev, o.reps, [&] { gated_residual(p, s); });
    emit(ks("bench", "gated_residual") + "," + ks("dtype", dts) + "," + kv("gbps", bytes / ms / 1e6), ms, dname);
  }
  {
    UnaryParams p;
    p.op = UnaryOp::GeluTanh;
    p.x = x.data();
    p.y = y.data();
    p.n = x.numel();
    p.dtype = dt;
    p.device = dev;
    const double bytes = 2.0 * x.numel() * esz;
    const double ms = time_ms(dev, o.reps, [&] { unary(p, s); });
    emit(ks("bench", "gelu_tanh") + "," + ks("dtype", dts) + "," + kv("gbps", bytes / ms / 1e6), ms, dname);
  }
  {
    SoftmaxParams p;
    p.x = x.data();
    p.y = y.data();
    p.rows = o.rows * o.dim / 4096;
    p.cols = 4096;
    p.x_stride = p.y_stride = 4096;
    p.dtype = dt;
    p.device = dev;
    const double bytes = 2.0 * p.rows * p.cols * esz;
    const double ms = time_ms(dev, o.reps, [&] { softmax(p, s); });
    emit(ks("bench", "softmax") + "," + kv("cols", 4096) + "," + ks("dtype", dts) + "," + kv("gbps", bytes / ms / 1e6),
         ms, dname);
  }

  // ---- GEMM at the DiT's MLP shape: [rows, dim] x [ffn, dim]^T ----
  x = Tensor();
  y = Tensor();
  Tensor a = Tensor::randn({o.rows, o.dim}, 3, dt, dev);
  Tensor w = Tensor::randn({o.ffn, o.dim}, 4, dt, dev);
  Tensor bias = Tensor::randn({o.ffn}, 5, dt, dev);
  Tensor d = Tensor::empty({o.rows, o.ffn}, dt, dev);
  for (GemmEpilogue e : {GemmEpilogue::None, GemmEpilogue::Bias, GemmEpilogue::BiasGeluTanh}) {
    GemmParams p;
    p.a = a.data();
    p.b = w.data();
    p.d = d.data();
    p.m = o.rows;
    p.n = o.ffn;
    p.k = o.dim;
    p.lda = o.dim;
    p.ldb = o.dim;
    p.ldd = o.ffn;
    p.epilogue = e;
    if (e != GemmEpilogue::None) p.bias = bias.data();
    p.dtype = p.out_dtype = dt;
    p.device = dev;
    const double ms = time_ms(dev, std::max(3, o.reps / 2), [&] { gemm(p, s); }, 2);
    const char* variant = e == GemmEpilogue::None ? "none" : (e == GemmEpilogue::Bias ? "bias" : "bias_gelu_tanh");
    emit(ks("bench", "gemm") + "," + ks("variant", variant) + "," + kv("m", static_cast<double>(p.m)) + "," +
             kv("n", static_cast<double>(p.n)) + "," + kv("k", static_cast<double>(p.k)) + "," + ks("dtype", dts) +
             "," + kv("tflops", gemm_flops(p) / ms / 1e9),
         ms, dname);
  }
}
}  // namespace
}  // namespace stavid

int main(int argc, char** argv) {
  stavid::Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::atoll(argv[++i]) : 0LL; };
    if (a == "--cpu") o.cpu = true;
    else if (a == "--rows") o.rows = next();
    else if (a == "--dim") o.dim = next();
    else if (a == "--ffn") o.ffn = next();
    else if (a == "--reps") o.reps = static_cast<int>(next());
    else {
      std::fprintf(stderr, "usage: bench_ops [--cpu] [--rows N] [--dim D] [--ffn F] [--reps R]\n");
      return 2;
    }
  }
  if (!o.cpu && !stavid::rt::cuda_available()) {
    std::fprintf(stderr, "bench_ops: no CUDA device; running the reduced CPU benchmark\n");
    o.cpu = true;
  }
  if (o.cpu && o.rows == 115200) {
    o.rows = 1024;
    o.reps = 5;
  }
  try {
    stavid::run(o);
  } catch (const stavid::Error& e) {
    std::fprintf(stderr, "bench_ops: %s\n", e.what());
    return 1;
  }
  return 0;
}
