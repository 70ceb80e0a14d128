// Row norms (LayerNorm, RMSNorm) with optional affine and adaLN modulation, fp32 statistics.
//
// Kernels (select_norm_cuda_kernel picks one; see norm.h):
// - RowGroup: a group of L = 8, 16 or 32 lanes owns a row and holds it in registers as 16-byte
//   vectors (N per lane, compile-time), so x is read once and y written once and reductions are
//   shuffles only (no shared memory, no __syncthreads). Several rows per block. This is the path for
//   the DiT's shapes (dim 3072 -> 32 lanes x 12 vectors of bf16; head dim 128 -> 16 lanes x 1).
// - BlockRow: one block per row, up to 4 vectors per thread in registers, block reductions. For
//   vectorizable dims that RowGroup has no instance for.
// - Generic: one block per row, three passes over global memory. Any dim, stride or alignment.
// Statistics: mean first, then the centred sum of squares from registers (two-pass, no cancellation).
// y may alias x: every read of a row completes before its first write.
#include "kernels/cuda_utils.cuh"
#include "kernels/norm.h"

namespace stavid::detail {
namespace {

using cuda::kVec16;

constexpr int kBlockRowMaxVec = 4;
constexpr int kRowGroupThreads = 128;

template <typename T>
struct NormArgs {
  const T* x;
  T* y;
  const T* weight;
  const T* bias;
  const T* scale;
  const T* shift;
  int64_t rows, dim, x_stride, y_stride, rows_per_group, mod_stride;
  float eps;
  bool layer;
};

template <typename T>
NormArgs<T> make_args(const NormParams& p) {
  return {static_cast<const T*>(p.x), static_cast<T*>(p.y), static_cast<const T*>(p.weight),
          static_cast<const T*>(p.bias), static_cast<const T*>(p.scale), static_cast<const T*>(p.shift),
          p.rows, p.dim, p.x_stride, p.y_stride, p.rows_per_group, p.mod_stride, p.eps,
          p.kind == NormKind::LayerNorm};
}

// Applies affine and modulation to one normalized 16-byte vector and stores it.
template <typename T>
__device__ __forceinline__ void finish_vec(const NormArgs<T>& a, const float (&v)[kVec16<T>], float mean,
                                           float rstd, int64_t c0, int64_t g, T* y) {
  constexpr int V = kVec16<T>;
  float w[V], b[V], sc[V], sh[V], o[V];
  if (a.weight) cuda::load_vec(a.weight + c0, w);
  if (a.bias) cuda::load_vec(a.bias + c0, b);
  if (a.scale) cuda::load_vec(a.scale + g + c0, sc);
  if (a.shift) cuda::load_vec(a.shift + g + c0, sh);
#pragma unroll
  for (int j = 0; j < V; ++j) {
    float t = (v[j] - mean) * rstd;
    if (a.weight) t *= w[j];
    if (a.bias) t += b[j];
    if (a.scale) t *= 1.f + sc[j];
    if (a.shift) t += sh[j];
    o[j] = t;
  }
  cuda::store_vec(y + c0, o);
}

template <int L>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = L / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// L lanes per row, N vectors per lane; dim == L * N * V exactly.
template <typename T, int L, int N>
__global__ void __launch_bounds__(kRowGroupThreads) norm_rowgroup_kernel(NormArgs<T> a) {
  constexpr int V = kVec16<T>;
  const int lane = threadIdx.x % L;
  const int64_t group_row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / L;
  // Groups past the last row (last block only) compute on the last row and store nothing: no lane
  // may leave before the shuffles, which name the whole warp.
  const bool valid = group_row < a.rows;
  const int64_t row = valid ? group_row : a.rows - 1;
  const T* x = a.x + row * a.x_stride;
  T* y = a.y + row * a.y_stride;
  float v[N][V];
#pragma unroll
  for (int i = 0; i < N; ++i) cuda::load_vec(x + (i * L + lane) * V, v[i]);
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < V; ++j) sum += v[i][j];
  const float inv_dim = 1.f / static_cast<float>(a.dim);
  const float mean = a.layer ? group_sum<L>(sum) * inv_dim : 0.f;
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float d = v[i][j] - mean;
      sq += d * d;
    }
  const float rstd = rsqrtf(group_sum<L>(sq) * inv_dim + a.eps);
  const int64_t g = (row / a.rows_per_group) * a.mod_stride;
  if (!valid) return;
#pragma unroll
  for (int i = 0; i < N; ++i) finish_vec(a, v[i], mean, rstd, static_cast<int64_t>(i * L + lane) * V, g, y);
}

template <typename T>
__global__ void norm_blockrow_kernel(NormArgs<T> a) {
  constexpr int V = kVec16<T>;
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* x = a.x + row * a.x_stride;
  T* y = a.y + row * a.y_stride;
  const int nvec = static_cast<int>(a.dim / V);
  float v[kBlockRowMaxVec][V];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kBlockRowMaxVec; ++i) {
    const int idx = threadIdx.x + i * blockDim.x;
    if (idx < nvec) {
      cuda::load_vec(x + idx * V, v[i]);
#pragma unroll
      for (int j = 0; j < V; ++j) sum += v[i][j];
    }
  }
  const float inv_dim = 1.f / static_cast<float>(a.dim);
  const float mean = a.layer ? cuda::block_sum(sum, scratch) * inv_dim : 0.f;
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < kBlockRowMaxVec; ++i) {
    if (threadIdx.x + i * blockDim.x < nvec) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float d = v[i][j] - mean;
        sq += d * d;
      }
    }
  }
  const float rstd = rsqrtf(cuda::block_sum(sq, scratch) * inv_dim + a.eps);
  const int64_t g = (row / a.rows_per_group) * a.mod_stride;
#pragma unroll
  for (int i = 0; i < kBlockRowMaxVec; ++i) {
    const int idx = threadIdx.x + i * blockDim.x;
    if (idx < nvec) finish_vec(a, v[i], mean, rstd, static_cast<int64_t>(idx) * V, g, y);
  }
}

template <typename T>
__global__ void norm_generic_kernel(NormArgs<T> a) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* x = a.x + row * a.x_stride;
  T* y = a.y + row * a.y_stride;
  const float inv_dim = 1.f / static_cast<float>(a.dim);
  float mean = 0.f;
  if (a.layer) {
    float s = 0.f;
    for (int64_t c = threadIdx.x; c < a.dim; c += blockDim.x) s += cuda::ld(x, c);
    mean = cuda::block_sum(s, scratch) * inv_dim;
  }
  float sq = 0.f;
  for (int64_t c = threadIdx.x; c < a.dim; c += blockDim.x) {
    const float d = cuda::ld(x, c) - mean;
    sq += d * d;
  }
  const float rstd = rsqrtf(cuda::block_sum(sq, scratch) * inv_dim + a.eps);
  const int64_t g = (row / a.rows_per_group) * a.mod_stride;
  for (int64_t c = threadIdx.x; c < a.dim; c += blockDim.x) {
    float t = (cuda::ld(x, c) - mean) * rstd;
    if (a.weight) t *= cuda::ld(a.weight, c);
    if (a.bias) t += cuda::ld(a.bias, c);
    if (a.scale) t *= 1.f + cuda::ld(a.scale, g + c);
    if (a.shift) t += cuda::ld(a.shift, g + c);
    cuda::st(y, c, t);
  }
}

bool vectorizable(const NormParams& p) {
  const int64_t V = 16 / static_cast<int64_t>(dtype_size(p.dtype));
  return p.dim % V == 0 && p.x_stride % V == 0 && p.y_stride % V == 0 &&
         (p.scale == nullptr || p.mod_stride % V == 0) && cuda::aligned16(p.x) && cuda::aligned16(p.y) &&
         cuda::aligned16(p.weight) && cuda::aligned16(p.bias) && cuda::aligned16(p.scale) &&
         cuda::aligned16(p.shift);
}

// RowGroup instances: (lanes, vectors per lane). nvec = dim / V must equal lanes * vectors.
struct GroupShape {
  int lanes, vecs;
};
constexpr GroupShape kGroupShapes[] = {{8, 1},  {16, 1}, {32, 1}, {32, 2},  {32, 3},
                                       {32, 4}, {32, 6}, {32, 8}, {32, 12}, {32, 16}};

bool row_group_shape(const NormParams& p, GroupShape* out) {
  const int64_t nvec = p.dim / (16 / static_cast<int64_t>(dtype_size(p.dtype)));
  for (const GroupShape& g : kGroupShapes) {
    if (g.lanes * g.vecs == nvec) {
      *out = g;
      return true;
    }
  }
  return false;
}

template <typename T, int L, int N>
void launch_rowgroup(const NormParams& p, cudaStream_t s) {
  const int64_t rows_per_block = kRowGroupThreads / L;
  const int64_t blocks = (p.rows + rows_per_block - 1) / rows_per_block;
  norm_rowgroup_kernel<T, L, N><<<static_cast<unsigned>(blocks), kRowGroupThreads, 0, s>>>(make_args<T>(p));
}

template <typename T>
void launch_rowgroup_for(const NormParams& p, const GroupShape& g, cudaStream_t s) {
  switch (g.lanes * 100 + g.vecs) {
    case 801: launch_rowgroup<T, 8, 1>(p, s); break;
    case 1601: launch_rowgroup<T, 16, 1>(p, s); break;
    case 3201: launch_rowgroup<T, 32, 1>(p, s); break;
    case 3202: launch_rowgroup<T, 32, 2>(p, s); break;
    case 3203: launch_rowgroup<T, 32, 3>(p, s); break;
    case 3204: launch_rowgroup<T, 32, 4>(p, s); break;
    case 3206: launch_rowgroup<T, 32, 6>(p, s); break;
    case 3208: launch_rowgroup<T, 32, 8>(p, s); break;
    case 3212: launch_rowgroup<T, 32, 12>(p, s); break;
    case 3216: launch_rowgroup<T, 32, 16>(p, s); break;
    default: STAVID_THROW(ErrorCode::Internal, "norm: no RowGroup instance for ", g.lanes, "x", g.vecs);
  }
}

int64_t blockrow_threads(const NormParams& p) {
  const int64_t nvec = p.dim / (16 / static_cast<int64_t>(dtype_size(p.dtype)));
  return ((nvec + kBlockRowMaxVec - 1) / kBlockRowMaxVec + 31) / 32 * 32;
}
}  // namespace

NormCudaKernel select_norm_cuda_kernel(const NormParams& p) {
  if (!vectorizable(p)) return NormCudaKernel::Generic;
  GroupShape g;
  if (row_group_shape(p, &g)) return NormCudaKernel::RowGroup;
  if (blockrow_threads(p) <= 1024) return NormCudaKernel::BlockRow;
  return NormCudaKernel::Generic;
}

const char* norm_cuda_kernel_name(NormCudaKernel k) {
  switch (k) {
    case NormCudaKernel::RowGroup: return "row_group";
    case NormCudaKernel::BlockRow: return "block_row";
    case NormCudaKernel::Generic: return "generic";
  }
  return "?";
}

void norm_cuda_with(const NormParams& p, CudaStream s, NormCudaKernel kernel) {
  STAVID_CHECK(p.rows <= 0x7fffffffLL, "norm: too many rows for one launch: ", p.rows);
  switch (kernel) {
    case NormCudaKernel::RowGroup: {
      GroupShape g;
      STAVID_CHECK(vectorizable(p) && row_group_shape(p, &g), "norm: the row_group kernel cannot take dim ", p.dim);
      STAVID_DISPATCH_DTYPE(p.dtype, launch_rowgroup_for<T>(p, g, s));
      break;
    }
    case NormCudaKernel::BlockRow: {
      STAVID_CHECK(vectorizable(p) && blockrow_threads(p) <= 1024, "norm: the block_row kernel cannot take dim ", p.dim);
      const unsigned threads = static_cast<unsigned>(blockrow_threads(p));
      STAVID_DISPATCH_DTYPE(p.dtype,
                            norm_blockrow_kernel<T><<<static_cast<unsigned>(p.rows), threads, 0, s>>>(make_args<T>(p)));
      break;
    }
    case NormCudaKernel::Generic:
      STAVID_DISPATCH_DTYPE(p.dtype, norm_generic_kernel<T><<<static_cast<unsigned>(p.rows), 256, 0, s>>>(make_args<T>(p)));
      break;
  }
  STAVID_CUDA_CHECK_LAUNCH();
}

void norm_cuda(const NormParams& p, CudaStream s) { norm_cuda_with(p, s, select_norm_cuda_kernel(p)); }

}  // namespace stavid::detail
