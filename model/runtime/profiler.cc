#include "model/runtime/profiler.h"

#include <chrono>
#include <sstream>

#include "kernels/core/error.h"
#include "kernels/gemm.h"

#if defined(STAVID_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace stavid::rt {

struct KernelProfiler::Record {
  std::string op;
  bool cuda = false;
#if defined(STAVID_WITH_CUDA)
  cudaEvent_t start = nullptr, stop = nullptr;
#endif
  std::chrono::steady_clock::time_point t0;
  double cpu_ms = 0;
};

KernelProfiler::KernelProfiler() {
  STAVID_CHECK(kernel_observer() == nullptr, "KernelProfiler: another observer is installed");
  set_kernel_observer(this);
}

KernelProfiler::~KernelProfiler() {
  set_kernel_observer(nullptr);
  for (Record* r : records_) {
#if defined(STAVID_WITH_CUDA)
    if (r->start) cudaEventDestroy(r->start);
    if (r->stop) cudaEventDestroy(r->stop);
#endif
    delete r;
  }
}

namespace {
const char* epilogue_name(GemmEpilogue e) {
  switch (e) {
    case GemmEpilogue::None: return "none";
    case GemmEpilogue::Bias: return "bias";
    case GemmEpilogue::GeluTanh: return "gelu_tanh";
    case GemmEpilogue::BiasGeluTanh: return "bias_gelu_tanh";
  }
  return "?";
}
}  // namespace

void KernelProfiler::begin(const char* op, const void* params, const Stream& stream) {
  auto* r = new Record;
  r->op = op;
  if (r->op == "gemm") {
    const auto& g = *static_cast<const GemmParams*>(params);
    std::ostringstream key;
    key << g.m << "x" << g.n << "x" << g.k << "x" << g.batch << dtype_name(g.dtype) << epilogue_name(g.epilogue);
    auto [it, inserted] = gemms_.try_emplace(key.str(), GemmShape{g.m, g.n, g.k, g.batch, dtype_name(g.dtype),
                                                                  dtype_name(g.out_dtype), epilogue_name(g.epilogue), 0});
    ++it->second.count;
  }
#if defined(STAVID_WITH_CUDA)
  if (stream.device.is_cuda()) {
    r->cuda = true;
    cudaEventCreate(&r->start);
    cudaEventCreate(&r->stop);
    cudaEventRecord(r->start, stream.cuda);
  }
#endif
  r->t0 = std::chrono::steady_clock::now();
  records_.push_back(r);
  open_.push_back(r);
}

void KernelProfiler::end(const char*, const Stream& stream) {
  if (open_.empty()) return;
  Record* r = open_.back();
  open_.pop_back();
#if defined(STAVID_WITH_CUDA)
  if (r->cuda) {
    cudaEventRecord(r->stop, stream.cuda);
    return;
  }
#endif
  (void)stream;
  r->cpu_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - r->t0).count();
}

std::map<std::string, KernelProfiler::OpTotal> KernelProfiler::totals() {
  std::map<std::string, OpTotal> out;
  for (Record* r : records_) {
    double ms = r->cpu_ms;
#if defined(STAVID_WITH_CUDA)
    if (r->cuda) {
      cudaEventSynchronize(r->stop);
      float t = 0;
      cudaEventElapsedTime(&t, r->start, r->stop);
      ms = t;
    }
#endif
    OpTotal& o = out[r->op];
    o.ms += ms;
    ++o.calls;
  }
  return out;
}

std::vector<KernelProfiler::GemmShape> KernelProfiler::gemm_shapes() const {
  std::vector<GemmShape> v;
  for (const auto& [key, g] : gemms_) v.push_back(g);
  return v;
}

}  // namespace stavid::rt
