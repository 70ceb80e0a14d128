// DiT op families on CUDA.
// patchify: one thread per (batch, token, feature) element, grid-stride; conversion in registers.
// qkv_prepare: one block per (slot, batch item), one warp per (head, q|k|v) item; a lane holds up
// to kMaxPairsPerLane interleaved pairs, so RMSNorm is a warp reduction and RoPE pairs never cross
// lanes. Padded slots are written as zeros. Output rows are head_dim contiguous elements.
#include "kernels/cuda_utils.cuh"
#include "kernels/dit_ops.h"

namespace stavid::detail {
namespace {

constexpr int kMaxPairsPerLane = 4;  // head_dim <= 256

template <typename L, typename K>
__global__ void patchify_kernel(PatchifyParams p, int64_t total) {
  const int32_t tt = p.frames / p.pt, th = p.height / p.ph, tw = p.width / p.pw;
  const int64_t ntok = static_cast<int64_t>(tt) * th * tw;
  const int64_t feat = static_cast<int64_t>(p.channels) * p.pt * p.ph * p.pw;
  const int64_t plane = static_cast<int64_t>(p.height) * p.width, vol = plane * p.frames;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const int64_t f = i % feat, tok = (i / feat) % ntok, b = i / (feat * ntok);
    const int64_t row = p.row_of_token ? p.row_of_token[tok] : tok;
    const int32_t w = static_cast<int32_t>(tok % tw), h = static_cast<int32_t>((tok / tw) % th);
    const int32_t t = static_cast<int32_t>(tok / (static_cast<int64_t>(tw) * th));
    const int32_t ow = static_cast<int32_t>(f % p.pw), oh = static_cast<int32_t>((f / p.pw) % p.ph);
    const int32_t ot = static_cast<int32_t>((f / (p.pw * p.ph)) % p.pt);
    const int64_t c = f / (static_cast<int64_t>(p.pw) * p.ph * p.pt);
    const int64_t li = b * p.channels * vol + c * vol + (t * p.pt + ot) * plane +
                       static_cast<int64_t>(h * p.ph + oh) * p.width + (w * p.pw + ow);
    const int64_t ti = b * p.token_batch_stride + row * p.token_row_stride + f;
    if (p.inverse) {
      cuda::st(static_cast<L*>(p.dst), li, cuda::ld(static_cast<const K*>(p.src), ti));
    } else {
      cuda::st(static_cast<K*>(p.dst), ti, cuda::ld(static_cast<const L*>(p.src), li));
    }
  }
}

template <typename T>
__global__ void qkv_prepare_kernel(QkvPrepareParams p) {
  const int64_t s = blockIdx.x;
  const int32_t b = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  const int64_t hd = p.head_dim, npairs = hd / 2, width = static_cast<int64_t>(p.heads) * hd;
  const int64_t seq = p.img_slots + p.txt_rows;
  const bool is_img = s < p.img_slots;
  const int64_t row = is_img ? (p.img_row_of_slot ? p.img_row_of_slot[s] : s) : s - p.img_slots;
  const T* src = static_cast<const T*>(is_img ? p.img : p.txt) +
                 (is_img ? b * p.img_batch_stride + row * p.img_row_stride : b * p.txt_batch_stride + row * p.txt_row_stride);
  for (int item = warp; item < p.heads * 3; item += nwarps) {
    const int h = item / 3, which = item % 3;
    T* dst = static_cast<T*>(which == 0 ? p.q : (which == 1 ? p.k : p.v)) + ((static_cast<int64_t>(b) * p.heads + h) * seq + s) * hd;
    if (row < 0) {
      for (int64_t i = lane; i < hd; i += 32) dst[i] = cuda::TypeOf<T>::from_float(0.f);
      continue;
    }
    const T* x = src + which * width + h * hd;
    float v0[kMaxPairsPerLane], v1[kMaxPairsPerLane];
    float sq = 0.f;
#pragma unroll
    for (int k = 0; k < kMaxPairsPerLane; ++k) {
      const int64_t j = lane + k * 32;
      v0[k] = v1[k] = 0.f;
      if (j < npairs) {
        v0[k] = cuda::ld(x, 2 * j);
        v1[k] = cuda::ld(x, 2 * j + 1);
        sq += v0[k] * v0[k] + v1[k] * v1[k];
      }
    }
    if (which < 2) {
      const T* w = static_cast<const T*>(which == 0 ? (is_img ? p.q_norm_img : p.q_norm_txt)
                                                    : (is_img ? p.k_norm_img : p.k_norm_txt));
      if (w) {
        const float r = rsqrtf(cuda::warp_sum(sq) / static_cast<float>(hd) + p.eps);
#pragma unroll
        for (int k = 0; k < kMaxPairsPerLane; ++k) {
          const int64_t j = lane + k * 32;
          if (j < npairs) {
            v0[k] = cuda::TypeOf<T>::to_float(cuda::TypeOf<T>::from_float(v0[k] * r * cuda::ld(w, 2 * j)));
            v1[k] = cuda::TypeOf<T>::to_float(cuda::TypeOf<T>::from_float(v1[k] * r * cuda::ld(w, 2 * j + 1)));
          }
        }
      }
      if (is_img && p.rope_cos) {
#pragma unroll
        for (int k = 0; k < kMaxPairsPerLane; ++k) {
          const int64_t j = lane + k * 32;
          if (j < npairs) {
            const float c = p.rope_cos[row * npairs + j], sn = p.rope_sin[row * npairs + j];
            const float x0 = v0[k], x1 = v1[k];
            v0[k] = x0 * c - x1 * sn;
            v1[k] = x1 * c + x0 * sn;
          }
        }
      }
    }
#pragma unroll
    for (int k = 0; k < kMaxPairsPerLane; ++k) {
      const int64_t j = lane + k * 32;
      if (j < npairs) {
        cuda::st(dst, 2 * j, v0[k]);
        cuda::st(dst, 2 * j + 1, v1[k]);
      }
    }
  }
}
}  // namespace

void patchify_cuda(const PatchifyParams& p, CudaStream s) {
  const int64_t total = static_cast<int64_t>(p.batch) * p.channels * p.frames * p.height * p.width;
  STAVID_DISPATCH_DTYPE(p.latent_dtype, {
    using L = T;
    STAVID_DISPATCH_DTYPE(p.token_dtype, {
      patchify_kernel<L, T><<<cuda::grid_for(total, 256), 256, 0, s>>>(p, total);
    });
  });
  STAVID_CUDA_CHECK_LAUNCH();
}

void qkv_prepare_cuda(const QkvPrepareParams& p, CudaStream s) {
  STAVID_CHECK(p.head_dim <= 2 * 32 * kMaxPairsPerLane, "qkv_prepare: head_dim ", p.head_dim, " > ",
               2 * 32 * kMaxPairsPerLane, " on CUDA");
  const int64_t seq = p.img_slots + p.txt_rows;
  STAVID_CHECK(seq < (int64_t(1) << 31) && p.batch <= 65535, "qkv_prepare: sequence or batch too large");
  const dim3 grid(static_cast<unsigned>(seq), static_cast<unsigned>(p.batch));
  STAVID_DISPATCH_DTYPE(p.dtype, { qkv_prepare_kernel<T><<<grid, 128, 0, s>>>(p); });
  STAVID_CUDA_CHECK_LAUNCH();
}

}  // namespace stavid::detail
