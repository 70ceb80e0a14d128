// Op families of the causal 3-D VAE decoder (shared/spec/hunyuan-video.md section 4). Tensors are
// [B, C, T, H, W] contiguous (NCTHW): a conv is a GEMM [Cout, Cin*k^3] x [Cin*k^3, T*H*W] per batch
// item, which lands directly in NCTHW.
#pragma once

#include <cstdint>

#include "kernels/core/device.h"
#include "kernels/core/dtype.h"

namespace stavid {

// im2col for a causal 3-D convolution with replicate padding: time padded by kt-1 frames in front
// (replicating frame 0, or taken from `prev` when given: the last kt-1 input frames of the previous
// temporal chunk), H and W by kh/2, kw/2 on both sides (replicated edges); stride 1.
// col[(ci*kt + dt)*kh*kw + dh*kw + dw][t*H*W + h*W + w] for output frames [t0, t0 + nt).
struct CausalIm2colParams {
  const void* x = nullptr;     // one batch item [Cin, T, H, W]
  const void* prev = nullptr;  // [Cin, kt-1, H, W] or null (replicate frame 0)
  void* col = nullptr;         // [Cin*kt*kh*kw, nt*H*W]
  int32_t cin = 0, frames = 0, height = 0, width = 0;
  int32_t kt = 3, kh = 3, kw = 3;
  int32_t t0 = 0, nt = 0;
  DType dtype = DType::F32;
  Device device;
};
void causal_im2col(const CausalIm2colParams& p, const Stream& stream);

// GroupNorm over [B, C, N] (N = T*H*W) with G groups, affine per channel, optional SiLU after.
// Statistics in fp32/double over (C/G) x N elements per (b, g). When `stats` is given it holds
// precomputed [B, G] (mean, rstd) pairs (fp32) and is used instead of computing them (a chunked
// decode normalizes every chunk with whole-tensor statistics).
struct GroupNormParams {
  const void* x = nullptr;
  void* y = nullptr;  // may alias x
  int32_t batch = 1, channels = 0, groups = 1;
  int64_t n = 0;  // elements per channel
  const void* weight = nullptr;  // [C] or null
  const void* bias = nullptr;    // [C] or null
  const float* stats = nullptr;  // [B, G, 2] (mean, rstd) or null
  float eps = 1e-6f;
  bool silu = false;
  DType dtype = DType::F32;
  Device device;
};
void group_norm(const GroupNormParams& p, const Stream& stream);

// Per (b, g): sum and sum of squares of the group's elements, ADDED into `sums` [B, G, 2] (double).
// A chunked decode accumulates these over chunks, then derives (mean, rstd).
struct GroupSumsParams {
  const void* x = nullptr;
  int32_t batch = 1, channels = 0, groups = 1;
  int64_t n = 0;
  double* sums = nullptr;  // host for the CPU, device memory for CUDA
  DType dtype = DType::F32;
  Device device;
};
void group_sums(const GroupSumsParams& p, const Stream& stream);

// Nearest upsampling by (ft, fh, fw) with the causal first-frame rule: frame 0 is upsampled only in
// space; frames 1..T-1 by the full factor. Output frames: 1 + ft*(T-1) when `first_is_video_start`,
// else ft*T (a later temporal chunk: every frame is upsampled fully).
struct UpsampleParams {
  const void* x = nullptr;  // [B, C, T, H, W]
  void* y = nullptr;        // [B, C, T', H*fh, W*fw]
  int32_t batch = 1, channels = 0, frames = 0, height = 0, width = 0;
  int32_t ft = 1, fh = 2, fw = 2;
  bool first_is_video_start = true;
  DType dtype = DType::F32;
  Device device;
};
void upsample_causal(const UpsampleParams& p, const Stream& stream);
inline int32_t upsampled_frames(const UpsampleParams& p) {
  return p.first_is_video_start ? 1 + p.ft * (p.frames - 1) : p.ft * p.frames;
}

namespace detail {
void causal_im2col_cpu(const CausalIm2colParams& p);
void causal_im2col_cuda(const CausalIm2colParams& p, CudaStream s);
void group_norm_cpu(const GroupNormParams& p);
void group_norm_cuda(const GroupNormParams& p, CudaStream s);
void group_sums_cpu(const GroupSumsParams& p);
void group_sums_cuda(const GroupSumsParams& p, CudaStream s);
void upsample_causal_cpu(const UpsampleParams& p);
void upsample_causal_cuda(const UpsampleParams& p, CudaStream s);
}  // namespace detail
}  // namespace stavid
