// GEMM on CUDA through cuBLASLt. Row-major D[m,n] = A[m,k] . op(B) is issued as the column-major
// product D^T[n,m] = op(B)^T . A^T, so cuBLASLt's "A" is our B and its "B" is our A, and the bias
// (one value per row of D^T) broadcasts over our rows. Compute in fp32 (CUBLAS_COMPUTE_32F) for every
// storage type; bias and GELU-tanh run in cuBLASLt's epilogue. One handle per device; one 32 MiB
// workspace per (device, stream) so concurrent streams never share scratch; the heuristic's choice
// is cached per problem key so steady state makes no heuristic queries.
#include <cublasLt.h>

#include <cstring>
#include <mutex>
#include <unordered_map>

#include "kernels/core/cuda_check.h"
#include "kernels/gemm.h"

namespace stavid::detail {
namespace {

constexpr size_t kWorkspaceBytes = 32u << 20;

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
  }
  return CUDA_R_32F;
}

struct DeviceState {
  cublasLtHandle_t handle = nullptr;
  std::unordered_map<CudaStream, void*> workspace;
};

struct AlgoKey {
  int device;
  int64_t m, n, k, lda, ldb, ldd, batch, sa, sb, sd;
  uint8_t dtype, out_dtype, epilogue, flags;  // flags: b_transposed | accumulate<<1 | misalign<<2
  bool operator==(const AlgoKey& o) const { return std::memcmp(this, &o, sizeof(AlgoKey)) == 0; }
};
struct AlgoKeyHash {
  size_t operator()(const AlgoKey& k) const {
    const auto* b = reinterpret_cast<const unsigned char*>(&k);
    size_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof(AlgoKey); ++i) h = (h ^ b[i]) * 1099511628211ull;
    return h;
  }
};

std::mutex g_mu;
std::unordered_map<int, DeviceState> g_devices;
std::unordered_map<AlgoKey, cublasLtMatmulAlgo_t, AlgoKeyHash> g_algos;

// Finds or creates the handle and this stream's workspace. Caller holds g_mu.
DeviceState& device_state(int device, CudaStream s, void** workspace) {
  DeviceState& st = g_devices[device];
  if (st.handle == nullptr) STAVID_CUBLAS_CHECK(cublasLtCreate(&st.handle));
  auto it = st.workspace.find(s);
  if (it == st.workspace.end()) {
    void* ws = nullptr;
    STAVID_CUDA_CHECK(cudaMalloc(&ws, kWorkspaceBytes));
    it = st.workspace.emplace(s, ws).first;
  }
  *workspace = it->second;
  return st;
}

// RAII holders for the cuBLASLt descriptors.
struct OpDesc {
  cublasLtMatmulDesc_t d = nullptr;
  ~OpDesc() { if (d) cublasLtMatmulDescDestroy(d); }
};
struct Layout {
  cublasLtMatrixLayout_t d = nullptr;
  ~Layout() { if (d) cublasLtMatrixLayoutDestroy(d); }
};
struct Pref {
  cublasLtMatmulPreference_t d = nullptr;
  ~Pref() { if (d) cublasLtMatmulPreferenceDestroy(d); }
};

void make_layout(Layout& l, cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                 int64_t stride) {
  STAVID_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l.d, t, static_cast<uint64_t>(rows),
                                                 static_cast<uint64_t>(cols), ld));
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    STAVID_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l.d, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
    STAVID_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l.d, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }
}

cublasLtEpilogue_t lt_epilogue(GemmEpilogue e) {
  switch (e) {
    case GemmEpilogue::None: return CUBLASLT_EPILOGUE_DEFAULT;
    case GemmEpilogue::Bias: return CUBLASLT_EPILOGUE_BIAS;
    case GemmEpilogue::GeluTanh: return CUBLASLT_EPILOGUE_GELU;
    case GemmEpilogue::BiasGeluTanh: return CUBLASLT_EPILOGUE_GELU_BIAS;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}

// 16-byte misalignment of any operand changes which algorithms are legal; it is part of the key.
uint8_t misaligned(const GemmParams& p) {
  auto bad = [](const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15u) != 0; };
  return (bad(p.a) || bad(p.b) || bad(p.d) || (p.bias && bad(p.bias))) ? 1 : 0;
}
}  // namespace

void gemm_cuda(const GemmParams& p, CudaStream s) {
  int prev = -1;
  STAVID_CUDA_CHECK(cudaGetDevice(&prev));
  if (prev != p.device.index) STAVID_CUDA_CHECK(cudaSetDevice(p.device.index));
  struct Restore {
    int dev, prev;
    ~Restore() { if (dev != prev) cudaSetDevice(prev); }
  } restore{p.device.index, prev};

  const int64_t b_stride = p.batch > 1 ? p.stride_b : 0;
  OpDesc op;
  STAVID_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op.d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = p.b_transposed ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
  STAVID_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.d, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  STAVID_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.d, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  const cublasLtEpilogue_t epi = lt_epilogue(p.epilogue);
  STAVID_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (p.bias) {
    const cudaDataType_t bt = cuda_type(p.out_dtype);
    STAVID_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias, sizeof(p.bias)));
    STAVID_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.d, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
    if (p.batch > 1) {
      const int64_t zero = 0;  // one bias for every batch item
      STAVID_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.d, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &zero, sizeof(zero)));
    }
  }

  Layout la, lb, lc;
  const cudaDataType_t it = cuda_type(p.dtype), ot = cuda_type(p.out_dtype);
  make_layout(la, it, p.b_transposed ? p.k : p.n, p.b_transposed ? p.n : p.k, p.ldb, p.batch, b_stride);
  make_layout(lb, it, p.k, p.m, p.lda, p.batch, p.stride_a);
  make_layout(lc, ot, p.n, p.m, p.ldd, p.batch, p.stride_d);

  const AlgoKey key{p.device.index, p.m, p.n, p.k, p.lda, p.ldb, p.ldd, p.batch, p.stride_a, b_stride,
                    p.stride_d, static_cast<uint8_t>(p.dtype), static_cast<uint8_t>(p.out_dtype),
                    static_cast<uint8_t>(p.epilogue),
                    static_cast<uint8_t>((p.b_transposed ? 1 : 0) | (p.accumulate ? 2 : 0) | (misaligned(p) << 2))};
  void* workspace = nullptr;
  cublasLtHandle_t handle = nullptr;
  cublasLtMatmulAlgo_t algo;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    DeviceState& st = device_state(p.device.index, s, &workspace);
    handle = st.handle;
    auto found = g_algos.find(key);
    if (found != g_algos.end()) {
      algo = found->second;
    } else {
      Pref pref;
      STAVID_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.d));
      const size_t ws = kWorkspaceBytes;
      STAVID_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.d, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
      cublasLtMatmulHeuristicResult_t result{};
      int count = 0;
      STAVID_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle, op.d, la.d, lb.d, lc.d, lc.d, pref.d, 1, &result, &count));
      STAVID_CHECK_CODE(count > 0, ErrorCode::Unsupported, "gemm: cuBLASLt has no algorithm for m=", p.m,
                        " n=", p.n, " k=", p.k, " dtype=", dtype_name(p.dtype), " out=", dtype_name(p.out_dtype),
                        " epilogue=", static_cast<int>(p.epilogue));
      algo = result.algo;
      g_algos.emplace(key, algo);
    }
  }
  const float alpha = p.alpha, beta = p.accumulate ? 1.f : 0.f;
  STAVID_CUBLAS_CHECK(cublasLtMatmul(handle, op.d, &alpha, p.b, la.d, p.a, lb.d, &beta, p.d, lc.d, p.d,
                                     lc.d, &algo, workspace, kWorkspaceBytes, s));
}

}  // namespace stavid::detail
