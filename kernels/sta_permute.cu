// STA tile / untile on CUDA: a row permutation between raster order [image (t,h,w) | text] and tiled
// order [image slots | text] (kernels/sta.h), per batch item.
//
// Policy:
// - One warp per destination row, 8 warps per block; grid (row groups, batch). The source row comes
//   from sta_raster_of_slot (tile) or sta_slot_of_raster (untile), the same inline functions the CPU
//   path uses.
// - Vector path: 16-byte copies when both base pointers are 16-byte aligned and every row and batch
//   stride is a multiple of 16 bytes; the row's tail (row bytes not a multiple of 16) is copied by
//   element. Otherwise a scalar path copies element by element. Both copy bits, never convert, so
//   the result equals the CPU permute bit for bit.
// - Tile writes zeros into padded slots (no source row); untile never visits them.
// - Memory-bound: each source row is read once and each destination row written once.
#include "kernels/cuda_utils.cuh"
#include "kernels/sta.h"

namespace stavid::detail {
namespace {

constexpr int kWarpsPerBlock = 8;

template <typename T, bool kVector>
__global__ void sta_permute_kernel(const T* __restrict__ src, T* __restrict__ dst, StaGeometry g, int64_t dst_rows,
                                   int64_t row_elems, int64_t src_batch_stride, int64_t dst_batch_stride,
                                   int64_t src_row_stride, int64_t dst_row_stride, bool to_tiled) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= dst_rows) return;
  const int64_t b = blockIdx.y;
  const int64_t from = to_tiled ? sta_raster_of_slot(g, row) : sta_slot_of_raster(g, row);
  T* d = dst + b * dst_batch_stride + row * dst_row_stride;
  const T* s = from >= 0 ? src + b * src_batch_stride + from * src_row_stride : nullptr;

  int64_t done = 0;
  if constexpr (kVector) {
    constexpr int kV = cuda::kVec16<T>;
    const int64_t vecs = row_elems / kV;
    auto* dv = reinterpret_cast<uint4*>(d);
    if (s != nullptr) {
      const auto* sv = reinterpret_cast<const uint4*>(s);
      for (int64_t i = lane; i < vecs; i += 32) dv[i] = sv[i];
    } else {
      for (int64_t i = lane; i < vecs; i += 32) dv[i] = make_uint4(0u, 0u, 0u, 0u);
    }
    done = vecs * kV;
  }
  if (s != nullptr) {
    for (int64_t i = done + lane; i < row_elems; i += 32) d[i] = s[i];
  } else {
    const T zero = cuda::TypeOf<T>::from_float(0.f);
    for (int64_t i = done + lane; i < row_elems; i += 32) d[i] = zero;
  }
}

template <typename T>
void launch_sta_permute(const StaPermuteParams& p, CudaStream stream) {
  const StaGeometry& g = p.geom;
  const int64_t dst_rows = p.to_tiled ? g.seq_len() : g.img_tokens() + g.text_slots;
  if (dst_rows == 0) return;
  constexpr int64_t kBytes = sizeof(T);
  const bool vector = cuda::aligned16(p.src) && cuda::aligned16(p.dst) && (p.src_row_stride * kBytes) % 16 == 0 &&
                      (p.dst_row_stride * kBytes) % 16 == 0 && (p.src_batch_stride * kBytes) % 16 == 0 &&
                      (p.dst_batch_stride * kBytes) % 16 == 0 && p.row_elems * kBytes >= 16;
  const int64_t blocks = (dst_rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  STAVID_CHECK(blocks <= 0x7fffffffLL, "sta_permute: too many rows for one launch: ", dst_rows);
  STAVID_CHECK(p.batch <= 65535, "sta_permute: batch ", p.batch, " exceeds one launch's grid (65535)");
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(p.batch));
  const dim3 block(32 * kWarpsPerBlock);
  const auto* src = static_cast<const T*>(p.src);
  auto* dst = static_cast<T*>(p.dst);
  if (vector) {
    sta_permute_kernel<T, true><<<grid, block, 0, stream>>>(src, dst, g, dst_rows, p.row_elems, p.src_batch_stride,
                                                            p.dst_batch_stride, p.src_row_stride, p.dst_row_stride,
                                                            p.to_tiled);
  } else {
    sta_permute_kernel<T, false><<<grid, block, 0, stream>>>(src, dst, g, dst_rows, p.row_elems, p.src_batch_stride,
                                                             p.dst_batch_stride, p.src_row_stride, p.dst_row_stride,
                                                             p.to_tiled);
  }
  STAVID_CUDA_CHECK_LAUNCH();
}

}  // namespace

void sta_permute_cuda(const StaPermuteParams& p, CudaStream stream) {
  STAVID_DISPATCH_DTYPE(p.dtype, { launch_sta_permute<T>(p, stream); });
}

}  // namespace stavid::detail
