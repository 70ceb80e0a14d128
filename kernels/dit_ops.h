// Op families specific to the video DiT: patchify / unpatchify between a latent video and token rows
// (optionally in a permuted row order), and the fused attention-input preparation (per-head q/k
// RMSNorm, 3-D RoPE on image tokens, scatter into the attention's [B, H, S, Dh] slot layout).
#pragma once

#include <cstdint>

#include "kernels/core/device.h"
#include "kernels/core/dtype.h"

namespace stavid {

// Token row r of batch item b holds patch (t, h, w) of the latent, features in (c, kt, kh, kw) order
// (spec 2.2; unpatchify in 2.8 is the exact inverse). Tokens are raster-ordered (t, h, w); with
// row_of_token the token of raster index i lives at row row_of_token[i] instead.
struct PatchifyParams {
  const void* src = nullptr;  // latent [B, C, T, H, W] contiguous (patchify) or token rows (unpatchify)
  void* dst = nullptr;
  int32_t batch = 1, channels = 0, frames = 0, height = 0, width = 0;  // latent sizes
  int32_t pt = 1, ph = 1, pw = 1;                                     // patch size
  int64_t token_batch_stride = 0, token_row_stride = 0;               // elements, token side
  const int32_t* row_of_token = nullptr;  // [T/pt * H/ph * W/pw] or null; device memory on CUDA
  bool inverse = false;                   // false: latent -> tokens; true: tokens -> latent
  DType latent_dtype = DType::F32;
  DType token_dtype = DType::F32;
  Device device;
};
void patchify(const PatchifyParams& p, const Stream& stream);

// Fused preparation of attention inputs from projected [q | k | v] rows (each heads*head_dim wide):
//   q, k: RMSNorm over head_dim with weight (fp32, rounded to the storage type), then RoPE on image
//         rows (interleaved pairs, fp32, rounded); v: copied.
// Output: q, k, v as [B, H, S, Dh] contiguous, S = img_slots + txt_rows. Image slot s takes image
// row img_row_of_slot[s] (zeros where it is -1: padding); text slot img_slots + t takes text row t.
struct QkvPrepareParams {
  const void* img = nullptr;  // [B][img_rows] rows of >= 3*H*Dh elements
  int64_t img_rows = 0, img_row_stride = 0, img_batch_stride = 0;
  const void* txt = nullptr;  // [B][txt_rows] rows, may be null when txt_rows == 0
  int64_t txt_rows = 0, txt_row_stride = 0, txt_batch_stride = 0;
  int32_t batch = 1, heads = 1, head_dim = 0;
  // [head_dim] weights; null pointers skip the norm for that stream (q and k together).
  const void* q_norm_img = nullptr;
  const void* k_norm_img = nullptr;
  const void* q_norm_txt = nullptr;
  const void* k_norm_txt = nullptr;
  float eps = 1e-6f;
  // [img_rows, head_dim/2] fp32 tables indexed by image row; null skips RoPE.
  const float* rope_cos = nullptr;
  const float* rope_sin = nullptr;
  const int32_t* img_row_of_slot = nullptr;  // [img_slots]; null means slot == row
  int64_t img_slots = 0;
  void* q = nullptr;
  void* k = nullptr;
  void* v = nullptr;
  DType dtype = DType::BF16;
  Device device;
};
void qkv_prepare(const QkvPrepareParams& p, const Stream& stream);

namespace detail {
void patchify_cpu(const PatchifyParams& p);
void patchify_cuda(const PatchifyParams& p, CudaStream s);
void qkv_prepare_cpu(const QkvPrepareParams& p);
void qkv_prepare_cuda(const QkvPrepareParams& p, CudaStream s);
}  // namespace detail
}  // namespace stavid
