// Element-wise families on CUDA. Policy: grid-stride loops; 16-byte vector access when every pointer
// is 16-byte aligned and each row is a whole number of vectors, scalar access otherwise. fp32 math.
#include <algorithm>

#include "kernels/cuda_utils.cuh"
#include "kernels/elementwise.h"

namespace stavid::detail {
namespace {

using cuda::kVec16;
constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ float apply_unary(UnaryOp op, float x) {
  return op == UnaryOp::GeluTanh ? gelu_tanh_f(x) : silu_f(x);
}

template <typename T, bool kVector>
__global__ void unary_kernel(UnaryOp op, const T* x, T* y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if constexpr (kVector) {
    constexpr int V = kVec16<T>;
    for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n / V; i += stride) {
      float v[V];
      cuda::load_vec(x + i * V, v);
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] = apply_unary<T>(op, v[j]);
      cuda::store_vec(y + i * V, v);
    }
  } else {
    for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
      cuda::st(y, i, apply_unary<T>(op, cuda::ld(x, i)));
  }
}

// Row-structured binary / gated-residual kernels index a [rows, cols] grid in units of W elements
// (W = vector width or 1); cols % W == 0 is guaranteed by the launcher.
template <typename T, int W>
__global__ void binary_kernel(BinaryOp op, const T* a, const T* b, T* y, int64_t rows, int64_t cols,
                              int64_t a_stride, int64_t y_stride, int64_t b_rpg, int64_t b_stride,
                              int64_t b_col_stride) {
  const int64_t units_per_row = cols / W;
  const int64_t total = rows * units_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t u = blockIdx.x * blockDim.x + threadIdx.x; u < total; u += stride) {
    const int64_t r = u / units_per_row, c = (u % units_per_row) * W;
    const int64_t bo = (r / b_rpg) * b_stride + c * b_col_stride;
    if constexpr (W > 1) {
      float va[W], vb[W];
      cuda::load_vec(a + r * a_stride + c, va);
      cuda::load_vec(b + bo, vb);
#pragma unroll
      for (int j = 0; j < W; ++j) va[j] = op == BinaryOp::Add ? va[j] + vb[j] : va[j] * vb[j];
      cuda::store_vec(y + r * y_stride + c, va);
    } else {
      const float va = cuda::ld(a, r * a_stride + c), vb = cuda::ld(b, bo);
      cuda::st(y, r * y_stride + c, op == BinaryOp::Add ? va + vb : va * vb);
    }
  }
}

template <typename T, int W>
__global__ void gated_residual_kernel(T* x, const T* y, const T* gate, int64_t rows, int64_t cols,
                                      int64_t x_stride, int64_t y_stride, int64_t rpg,
                                      int64_t gate_stride, float scale) {
  const int64_t units_per_row = cols / W;
  const int64_t total = rows * units_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t u = blockIdx.x * blockDim.x + threadIdx.x; u < total; u += stride) {
    const int64_t r = u / units_per_row, c = (u % units_per_row) * W;
    const int64_t go = (r / rpg) * gate_stride + c;
    if constexpr (W > 1) {
      float vx[W], vy[W], vg[W];
      cuda::load_vec(x + r * x_stride + c, vx);
      cuda::load_vec(y + r * y_stride + c, vy);
      if (gate) {
        cuda::load_vec(gate + go, vg);
      } else {
#pragma unroll
        for (int j = 0; j < W; ++j) vg[j] = 1.f;
      }
#pragma unroll
      for (int j = 0; j < W; ++j) vx[j] += scale * vg[j] * vy[j];
      cuda::store_vec(x + r * x_stride + c, vx);
    } else {
      const float g = scale * (gate ? cuda::ld(gate, go) : 1.f);
      cuda::st(x, r * x_stride + c, cuda::ld(x, r * x_stride + c) + g * cuda::ld(y, r * y_stride + c));
    }
  }
}

struct CopyShape {
  int ndim;
  int64_t sizes[kMaxCopyDims];
  int64_t src_strides[kMaxCopyDims];
  int64_t dst_strides[kMaxCopyDims];
};

template <typename S, typename D>
__global__ void strided_copy_kernel(const S* src, D* dst, CopyShape sh, int64_t total) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    int64_t rem = i, so = 0, dof = 0;
    for (int d = sh.ndim - 1; d >= 0; --d) {
      const int64_t idx = rem % sh.sizes[d];
      rem /= sh.sizes[d];
      so += idx * sh.src_strides[d];
      dof += idx * sh.dst_strides[d];
    }
    if constexpr (std::is_same_v<S, D>) {
      dst[dof] = src[so];
    } else {
      cuda::st(dst, dof, cuda::ld(src, so));
    }
  }
}

template <typename T>
__global__ void fill_kernel(T* y, int64_t n, float value) {
  const T v = cuda::TypeOf<T>::from_float(value);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) y[i] = v;
}

// Per-block partial sums in fp32 over a grid-stride range, then one double atomicAdd per block.
template <typename T>
__global__ void abs_sums_kernel(const T* a, const T* b, int64_t n, double* out) {
  __shared__ float scratch[32];
  float diff = 0.f, mag = 0.f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const float x = cuda::ld(a, i), y = b ? cuda::ld(b, i) : 0.f;
    diff += fabsf(x - y);
    mag += fabsf(y);
  }
  diff = cuda::block_sum(diff, scratch);
  mag = cuda::block_sum(mag, scratch);
  if (threadIdx.x == 0) {
    atomicAdd(&out[0], static_cast<double>(diff));
    atomicAdd(&out[1], static_cast<double>(mag));
  }
}

// One block per (row chunk, group): threads stride over the group's columns of their rows; one
// double atomicAdd per block.
template <typename T>
__global__ void group_sq_diff_kernel(GroupSqDiffParams p, int64_t rows_per_block) {
  __shared__ float scratch[32];
  const int64_t g = blockIdx.y;
  const int64_t r0 = blockIdx.x * rows_per_block, r1 = min(p.rows, r0 + rows_per_block);
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  float acc = 0.f;
  const int64_t n = (r1 - r0) * p.group;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t r = r0 + i / p.group, c = g * p.group + i % p.group;
    const float d = cuda::ld(a, r * p.a_stride + c) - cuda::ld(b, r * p.b_stride + c);
    acc += d * d;
  }
  acc = cuda::block_sum(acc, scratch);
  if (threadIdx.x == 0) atomicAdd(&p.out[g], static_cast<double>(acc));
}

bool all_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p && !cuda::aligned16(p)) return false;
  return true;
}
}  // namespace

void unary_cuda(const UnaryParams& p, CudaStream s) {
  STAVID_DISPATCH_DTYPE(p.dtype, {
    constexpr int V = kVec16<T>;
    const auto* x = static_cast<const T*>(p.x);
    auto* y = static_cast<T*>(p.y);
    const int64_t vec_n = all_aligned({p.x, p.y}) ? p.n / V * V : 0;
    if (vec_n > 0) unary_kernel<T, true><<<cuda::grid_for(vec_n / V, kThreads), kThreads, 0, s>>>(p.op, x, y, vec_n);
    if (vec_n < p.n)
      unary_kernel<T, false><<<cuda::grid_for(p.n - vec_n, kThreads), kThreads, 0, s>>>(p.op, x + vec_n, y + vec_n, p.n - vec_n);
    STAVID_CUDA_CHECK_LAUNCH();
  });
}

void binary_cuda(const BinaryParams& p, CudaStream s) {
  STAVID_DISPATCH_DTYPE(p.dtype, {
    constexpr int V = kVec16<T>;
    const auto* a = static_cast<const T*>(p.a);
    const auto* b = static_cast<const T*>(p.b);
    auto* y = static_cast<T*>(p.y);
    const bool vec = all_aligned({p.a, p.b, p.y}) && p.cols % V == 0 && p.a_stride % V == 0 &&
                     p.y_stride % V == 0 && p.b_stride % V == 0 && p.b_col_stride == 1;
    if (vec) {
      binary_kernel<T, V><<<cuda::grid_for(p.rows * p.cols / V, kThreads), kThreads, 0, s>>>(
          p.op, a, b, y, p.rows, p.cols, p.a_stride, p.y_stride, p.b_rows_per_group, p.b_stride, p.b_col_stride);
    } else {
      binary_kernel<T, 1><<<cuda::grid_for(p.rows * p.cols, kThreads), kThreads, 0, s>>>(
          p.op, a, b, y, p.rows, p.cols, p.a_stride, p.y_stride, p.b_rows_per_group, p.b_stride, p.b_col_stride);
    }
    STAVID_CUDA_CHECK_LAUNCH();
  });
}

void gated_residual_cuda(const GatedResidualParams& p, CudaStream s) {
  STAVID_DISPATCH_DTYPE(p.dtype, {
    constexpr int V = kVec16<T>;
    auto* x = static_cast<T*>(p.x);
    const auto* y = static_cast<const T*>(p.y);
    const auto* g = static_cast<const T*>(p.gate);
    const bool vec = all_aligned({p.x, p.y, p.gate}) && p.cols % V == 0 && p.x_stride % V == 0 &&
                     p.y_stride % V == 0 && (p.gate == nullptr || p.gate_stride % V == 0);
    if (vec) {
      gated_residual_kernel<T, V><<<cuda::grid_for(p.rows * p.cols / V, kThreads), kThreads, 0, s>>>(
          x, y, g, p.rows, p.cols, p.x_stride, p.y_stride, p.rows_per_group, p.gate_stride, p.scale);
    } else {
      gated_residual_kernel<T, 1><<<cuda::grid_for(p.rows * p.cols, kThreads), kThreads, 0, s>>>(
          x, y, g, p.rows, p.cols, p.x_stride, p.y_stride, p.rows_per_group, p.gate_stride, p.scale);
    }
    STAVID_CUDA_CHECK_LAUNCH();
  });
}

void strided_copy_cuda(const CopyParams& p, CudaStream s) {
  CopyShape sh{};
  sh.ndim = p.ndim;
  int64_t total = 1;
  for (int d = 0; d < p.ndim; ++d) {
    sh.sizes[d] = p.sizes[d];
    sh.src_strides[d] = p.src_strides[d];
    sh.dst_strides[d] = p.dst_strides[d];
    total *= p.sizes[d];
  }
  // Both sides dense in the same order and the same type: a plain device copy.
  bool dense = p.src_dtype == p.dst_dtype;
  int64_t expect = 1;
  for (int d = p.ndim - 1; d >= 0 && dense; --d) {
    if (p.sizes[d] != 1 && (p.src_strides[d] != expect || p.dst_strides[d] != expect)) dense = false;
    expect *= p.sizes[d];
  }
  if (dense) {
    STAVID_CUDA_CHECK(cudaMemcpyAsync(p.dst, p.src, static_cast<size_t>(total) * dtype_size(p.src_dtype),
                                      cudaMemcpyDeviceToDevice, s));
    return;
  }
  const unsigned grid = cuda::grid_for(total, kThreads);
  STAVID_DISPATCH_DTYPE(p.src_dtype, {
    using S = T;
    STAVID_DISPATCH_DTYPE(p.dst_dtype, {
      strided_copy_kernel<S, T><<<grid, kThreads, 0, s>>>(static_cast<const S*>(p.src),
                                                          static_cast<T*>(p.dst), sh, total);
    });
  });
  STAVID_CUDA_CHECK_LAUNCH();
}

void group_sq_diff_cuda(const GroupSqDiffParams& p, CudaStream s) {
  const int64_t groups = p.cols / p.group;
  STAVID_CHECK(groups <= 65535, "group_sq_diff: too many groups");
  const int64_t rows_per_block = std::max<int64_t>(1, 8192 / p.group);
  const dim3 grid(static_cast<unsigned>((p.rows + rows_per_block - 1) / rows_per_block), static_cast<unsigned>(groups));
  STAVID_DISPATCH_DTYPE(p.dtype, { group_sq_diff_kernel<T><<<grid, 256, 0, s>>>(p, rows_per_block); });
  STAVID_CUDA_CHECK_LAUNCH();
}

void abs_sums_cuda(const AbsSumsParams& p, CudaStream s) {
  STAVID_CUDA_CHECK(cudaMemsetAsync(p.out, 0, 2 * sizeof(double), s));
  const unsigned grid = cuda::grid_for(p.n, kThreads, 1024);
  STAVID_DISPATCH_DTYPE(p.dtype, {
    abs_sums_kernel<T><<<grid, kThreads, 0, s>>>(static_cast<const T*>(p.a), static_cast<const T*>(p.b), p.n, p.out);
  });
  STAVID_CUDA_CHECK_LAUNCH();
}

void fill_cuda(const FillParams& p, CudaStream s) {
  STAVID_DISPATCH_DTYPE(p.dtype, {
    fill_kernel<T><<<cuda::grid_for(p.n, kThreads), kThreads, 0, s>>>(static_cast<T*>(p.y), p.n, p.value);
  });
  STAVID_CUDA_CHECK_LAUNCH();
}

}  // namespace stavid::detail
