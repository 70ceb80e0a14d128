// VAE op families on CUDA.
// causal_im2col / upsample_causal: one thread per output element, grid-stride, index math only.
// group_sums: blocks split each (b, g) range; per-block fp32 partials, one double atomicAdd pair per
// block. group_norm: statistics from group_sums (or given), then one element-wise pass.
#include "kernels/cuda_utils.cuh"
#include "kernels/elementwise.h"
#include "kernels/vae_ops.h"

namespace stavid::detail {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void im2col_kernel(CausalIm2colParams p, int64_t total) {
  const int64_t hw = static_cast<int64_t>(p.height) * p.width, cols = p.nt * hw;
  const int32_t pad = p.kt - 1;
  const T* x = static_cast<const T*>(p.x);
  const T* prev = static_cast<const T*>(p.prev);
  T* col = static_cast<T*>(p.col);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const int64_t row = i / cols, c = i % cols;
    const int32_t w = static_cast<int32_t>(c % p.width), h = static_cast<int32_t>((c / p.width) % p.height);
    const int32_t t = static_cast<int32_t>(c / hw);
    const int32_t dw = static_cast<int32_t>(row % p.kw), dh = static_cast<int32_t>((row / p.kw) % p.kh);
    const int32_t dt = static_cast<int32_t>((row / (p.kw * p.kh)) % p.kt);
    const int64_t ci = row / (static_cast<int64_t>(p.kw) * p.kh * p.kt);
    const int32_t sh = min(max(h + dh - p.kh / 2, 0), p.height - 1);
    const int32_t sw = min(max(w + dw - p.kw / 2, 0), p.width - 1);
    const int32_t src_t = p.t0 + t + dt - pad;
    T v;
    if (src_t >= 0) {
      v = x[(ci * p.frames + src_t) * hw + sh * p.width + sw];
    } else if (prev) {
      v = prev[(ci * pad + (pad + src_t)) * hw + sh * p.width + sw];
    } else {
      v = x[ci * p.frames * hw + sh * p.width + sw];
    }
    col[i] = v;
  }
}

template <typename T>
__global__ void group_sums_kernel(GroupSumsParams p, int64_t per_block) {
  __shared__ float scratch[32];
  const int32_t bg = blockIdx.y;  // b * groups + g
  const int32_t b = bg / p.groups, g = bg % p.groups, cg = p.channels / p.groups;
  const int64_t count = cg * p.n;
  const int64_t base = (static_cast<int64_t>(b) * p.channels + g * cg) * p.n;
  const int64_t lo = blockIdx.x * per_block, hi = min(count, lo + per_block);
  const T* x = static_cast<const T*>(p.x);
  float s = 0.f, s2 = 0.f;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const float v = cuda::ld(x, base + i);
    s += v;
    s2 += v * v;
  }
  s = cuda::block_sum(s, scratch);
  s2 = cuda::block_sum(s2, scratch);
  if (threadIdx.x == 0) {
    atomicAdd(&p.sums[bg * 2], static_cast<double>(s));
    atomicAdd(&p.sums[bg * 2 + 1], static_cast<double>(s2));
  }
}

__global__ void stats_from_sums_kernel(const double* sums, float* stats, int32_t n_bg, double count, float eps) {
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n_bg) return;
  const double mean = sums[2 * i] / count;
  const double var = fmax(sums[2 * i + 1] / count - mean * mean, 0.0);
  stats[2 * i] = static_cast<float>(mean);
  stats[2 * i + 1] = static_cast<float>(1.0 / sqrt(var + eps));
}

template <typename T>
__global__ void group_norm_apply_kernel(GroupNormParams p, const float* stats, int64_t total) {
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const T* wt = static_cast<const T*>(p.weight);
  const T* bs = static_cast<const T*>(p.bias);
  const int32_t cg = p.channels / p.groups;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const int64_t bc = i / p.n;
    const int32_t c = static_cast<int32_t>(bc % p.channels), b = static_cast<int32_t>(bc / p.channels);
    const int32_t bg = b * p.groups + c / cg;
    float v = (cuda::ld(x, i) - stats[2 * bg]) * stats[2 * bg + 1];
    if (wt) v *= cuda::ld(wt, c);
    if (bs) v += cuda::ld(bs, c);
    if (p.silu) v = silu_f(v);
    cuda::st(y, i, v);
  }
}

template <typename T>
__global__ void upsample_kernel(UpsampleParams p, int32_t to, int64_t total) {
  const int32_t ho = p.height * p.fh, wo = p.width * p.fw;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const int32_t w = static_cast<int32_t>(i % wo), h = static_cast<int32_t>((i / wo) % ho);
    const int32_t t = static_cast<int32_t>((i / (static_cast<int64_t>(wo) * ho)) % to);
    const int64_t bc = i / (static_cast<int64_t>(wo) * ho * to);
    const int32_t st = p.first_is_video_start ? (t == 0 ? 0 : (t - 1) / p.ft + 1) : t / p.ft;
    y[i] = x[((bc * p.frames + st) * p.height + h / p.fh) * p.width + w / p.fw];
  }
}
}  // namespace

void causal_im2col_cuda(const CausalIm2colParams& p, CudaStream s) {
  const int64_t total = static_cast<int64_t>(p.cin) * p.kt * p.kh * p.kw * p.nt * p.height * p.width;
  STAVID_DISPATCH_DTYPE(p.dtype, { im2col_kernel<T><<<cuda::grid_for(total, kThreads), kThreads, 0, s>>>(p, total); });
  STAVID_CUDA_CHECK_LAUNCH();
}

void group_sums_cuda(const GroupSumsParams& p, CudaStream s) {
  const int64_t count = static_cast<int64_t>(p.channels / p.groups) * p.n;
  const int64_t per_block = 1 << 16;
  const dim3 grid(static_cast<unsigned>((count + per_block - 1) / per_block), static_cast<unsigned>(p.batch * p.groups));
  STAVID_DISPATCH_DTYPE(p.dtype, { group_sums_kernel<T><<<grid, kThreads, 0, s>>>(p, per_block); });
  STAVID_CUDA_CHECK_LAUNCH();
}

void group_norm_cuda(const GroupNormParams& p, CudaStream s) {
  const int32_t n_bg = p.batch * p.groups;
  // Scratch for sums (double) and stats (float): one small allocation per call, freed by the
  // stream-ordered allocator; the VAE calls this a few dozen times per decode.
  void* scratch = nullptr;
  STAVID_CUDA_CHECK(cudaMallocAsync(&scratch, static_cast<size_t>(n_bg) * (2 * sizeof(double) + 2 * sizeof(float)), s));
  double* sums = static_cast<double*>(scratch);
  float* stats = p.stats ? const_cast<float*>(p.stats) : reinterpret_cast<float*>(sums + 2 * n_bg);
  if (!p.stats) {
    STAVID_CUDA_CHECK(cudaMemsetAsync(sums, 0, static_cast<size_t>(n_bg) * 2 * sizeof(double), s));
    GroupSumsParams gs;
    gs.x = p.x;
    gs.batch = p.batch;
    gs.channels = p.channels;
    gs.groups = p.groups;
    gs.n = p.n;
    gs.sums = sums;
    gs.dtype = p.dtype;
    gs.device = p.device;
    group_sums_cuda(gs, s);
    const double count = static_cast<double>(p.channels / p.groups) * static_cast<double>(p.n);
    stats_from_sums_kernel<<<(n_bg + 127) / 128, 128, 0, s>>>(sums, stats, n_bg, count, p.eps);
    STAVID_CUDA_CHECK_LAUNCH();
  }
  const int64_t total = static_cast<int64_t>(p.batch) * p.channels * p.n;
  STAVID_DISPATCH_DTYPE(p.dtype, {
    group_norm_apply_kernel<T><<<cuda::grid_for(total, kThreads), kThreads, 0, s>>>(p, stats, total);
  });
  STAVID_CUDA_CHECK_LAUNCH();
  STAVID_CUDA_CHECK(cudaFreeAsync(scratch, s));
}

void upsample_causal_cuda(const UpsampleParams& p, CudaStream s) {
  const int32_t to = upsampled_frames(p);
  const int64_t total = static_cast<int64_t>(p.batch) * p.channels * to * p.height * p.fh * p.width * p.fw;
  STAVID_DISPATCH_DTYPE(p.dtype, { upsample_kernel<T><<<cuda::grid_for(total, kThreads), kThreads, 0, s>>>(p, to, total); });
  STAVID_CUDA_CHECK_LAUNCH();
}

}  // namespace stavid::detail
