// STA attention, portable CUDA path (sm_80 and later): FlashAttention-2 style, one launch for all
// heads (each with its own window) and for image and text queries together.
//
// Work split: one CTA per (query block of BM rows, batch x head), a 1-D grid: the text blocks of
// every head first (they see every key: the longest work starts first), then the image blocks
// head-major (a wave's CTAs share one head's K/V in L2: 13% faster dense than heads-fastest order,
// which mixed every head into each wave). A query block lies inside one tile
// (tile_tokens % BM == 0), so all its rows share one key range: the shared visit list
// (sta_query_range / sta_visit_at, kernels/sta.h) enumerates the KV blocks of BN keys to visit; the
// CTA's threads write it into shared memory (256 visits at a time) and the loop reads one int per block.
// Only blocks flagged needs_mask (tiles with padded slots, the text tail) pay for element masks.
//
// CTA: kWarps warps, each owning kMTiles x 16 query rows (M128: 4 warps x 32 rows; M64: 2 x 32), so
// every K/V fragment read from shared memory feeds kMTiles MMAs. mma.sync m16n8k16 (bf16/f16 in,
// fp32 accumulate), ldmatrix (.trans for V) from XOR-swizzled shared memory (16-byte chunk c of
// row r lives at chunk c ^ (r % 8): conflict-free ldmatrix and cp.async). Q stays in shared memory;
// K/V blocks stream through a 2-stage cp.async ring (rows past the sequence are zero-filled).
// Online softmax in the exp2 domain with a lazily moved reference max (the O rescale runs only
// when some row's max grows by more than 2^8); the row sum is kept per thread and reduced across
// the quad once at the end. Rows that have seen only masked keys keep m = -inf and add nothing.
// Registers (d=128, BN=64): O 128 + S 64 fp32 per thread; see bench notes for the ptxas report.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>

#include "kernels/core/cuda_check.h"
#include "kernels/cuda_utils.cuh"
#include "kernels/sta.h"

namespace stavid::detail {
namespace {

using cuda::fast_exp2;
using cuda::pack2;
using cuda::smem_u32;

template <typename T, int kD>
struct StaArgs {
  const T* q;
  const T* k;
  const T* v;
  T* o;
  int64_t qs[3], ks[3], vs[3], os[3];
  StaGeometry g;
  const StaWindow* windows;
  const int32_t* o_row_map;
  int32_t heads;
  int32_t text_qblocks;
  int32_t img_qblocks;
  int32_t text_kv_blocks;  // sta_text_blocks(g, kBN)
  int32_t head_major;      // image CTAs query block fastest (else batch x head fastest)
  int32_t batch_heads;
  float scale_log2;  // softmax scale * log2(e)
};

// ---- PTX wrappers ----

__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;  // 0: zero-fill, nothing read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Byte offset of 16-byte chunk `c` of row `r` in a swizzled [rows][kD] tile.
template <int kD>
__device__ __forceinline__ uint32_t swz(int r, int c) {
  return static_cast<uint32_t>((r * (kD / 8) + (c ^ (r & 7))) * 16);
}

// Copies kRows x kD tiles from global rows into a swizzled shared tile with cp.async. Thread t owns
// 16-byte chunk t % kChunks of rows t / kChunks + i * kStep; its offsets are computed once. When
// kStep is a multiple of 8 the swizzled chunk is the same for all of a thread's rows.
template <typename T, int kD, int kRows, int kThreads>
struct TileLoader {
  static constexpr int kChunks = kD / 8;
  static constexpr int kStep = kThreads / kChunks;
  static constexpr int kIters = kRows / kStep;
  static_assert(kThreads % kChunks == 0 && kRows % kStep == 0, "tile loader shape");
  // Stateless: offsets are recomputed from threadIdx at each call (a few integer ops) rather than
  // held in registers across the main loop, where the accumulators need them. Element offsets
  // within one head fit 32 bits (the selector checks seq_len x seq stride < 2^31).
  // Rows [start, start + kRows) of `base`; rows at or past seq_len are zero-filled.
  __device__ __forceinline__ static void load(uint32_t smem, const T* base, int32_t seq_stride, int32_t start,
                                              int32_t seq_len) {
    const int32_t r0 = threadIdx.x / kChunks, c = threadIdx.x % kChunks;
    const T* src = base + ((start + r0) * seq_stride + c * 8);
    const bool full = start + kRows <= seq_len;
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int32_t r = r0 + i * kStep;
      const bool valid = full || start + r < seq_len;
      cp_async_16(smem + static_cast<uint32_t>((r * kChunks + (c ^ (r & 7))) * 16), valid ? src : base, valid);
      src += kStep * seq_stride;
    }
  }
};

template <typename T, int kD, int kWarps, int kMTiles, int kBN>
__global__ void __launch_bounds__(kWarps * 32) sta_fwd_kernel(const StaArgs<T, kD> a) {
  constexpr int kThreads = kWarps * 32;
  constexpr int kBM = kWarps * kMTiles * 16;
  constexpr int kNT = kBN / 8;   // S n-tiles per block
  constexpr int kDT = kD / 8;    // O n-tiles
  constexpr int kKS = kD / 16;   // k-steps of Q K^T
  constexpr int kTileBytes = kBN * kD * 2;
  constexpr float kRescaleSlack = 8.f;  // log2 units: P stays <= 256
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t sq = smem_u32(smem);
  const uint32_t sk = sq + kBM * kD * 2;
  const uint32_t sv = sk + 2 * kTileBytes;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // 1-D grid: first every (text block, batch x head), then the image blocks head-major (query block
  // fastest), so a wave's CTAs share one head's K/V in L2.
  int bh, qb_idx;
  {
    const int bhn = a.batch_heads;
    const int idx = blockIdx.x, text_ctas = a.text_qblocks * bhn;
    if (idx < text_ctas) {
      bh = idx % bhn;
      qb_idx = idx / bhn;
    } else if (a.head_major) {
      bh = (idx - text_ctas) / a.img_qblocks;
      qb_idx = a.text_qblocks + (idx - text_ctas) % a.img_qblocks;
    } else {
      bh = (idx - text_ctas) % bhn;
      qb_idx = a.text_qblocks + (idx - text_ctas) / bhn;
    }
  }
  const int b = bh / a.heads, h = bh % a.heads;
  const StaGeometry& g = a.g;
  const int32_t seq_len = static_cast<int32_t>(g.seq_len());
  const int32_t q_start = qb_idx < a.text_qblocks ? static_cast<int32_t>(g.img_slots) + qb_idx * kBM
                                                   : (qb_idx - a.text_qblocks) * kBM;
  const T* qb = a.q + b * a.qs[0] + h * a.qs[1];
  const T* kb = a.k + b * a.ks[0] + h * a.ks[1];
  const T* vb = a.v + b * a.vs[0] + h * a.vs[1];

  // The visit list, kListCap entries at a time, in shared memory: the loop reads one int per block
  // (key start, bit 31 = needs element masks) instead of keeping the tile range and the stepping
  // state in registers. Entry kListCap repeats the next chunk's first visit, for the prefetch.
  constexpr int kListCap = 256;
  __shared__ int32_t visits[kListCap + 1];
  __shared__ StaTileRange s_range;
  if (threadIdx.x == 0) s_range = sta_query_range(g, a.windows[h], q_start);
  __syncthreads();
  const int n_visits = s_range.count() * (g.tile_tokens / kBN) + a.text_kv_blocks;
  auto fill_visits = [&](int j0) {
    const StaTileRange r = s_range;
    for (int i = threadIdx.x; i <= kListCap && j0 + i < n_visits; i += kThreads) {
      const StaVisit v = sta_visit_at(g, r, kBN, j0 + i);
      visits[i] = static_cast<int32_t>(v.key_start) | (v.needs_mask ? static_cast<int32_t>(0x80000000u) : 0);
    }
  };
  fill_visits(0);
  __syncthreads();

  // Prologue: Q, then the first K/V block.
  {
    TileLoader<T, kD, kBM, kThreads>::load(sq, qb, static_cast<int32_t>(a.qs[2]), q_start, seq_len);
  }
  cp_async_commit();
  const int32_t ks2 = static_cast<int32_t>(a.ks[2]), vs2 = static_cast<int32_t>(a.vs[2]);
  using KvLoader = TileLoader<T, kD, kBN, kThreads>;
  if (n_visits > 0) {
    const int32_t key0 = visits[0] & 0x7fffffff;
    KvLoader::load(sk, kb, ks2, key0, seq_len);
    KvLoader::load(sv, vb, vs2, key0, seq_len);
  }
  cp_async_commit();

  float o[kMTiles][kDT][4];
  float m[kMTiles][2], l[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kDT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][nt][e] = 0.f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
  }
  const int row0 = warp * kMTiles * 16;  // this warp's first row in the block
  // ldmatrix addressing. Every row a lane addresses is congruent to lane % 8 (mod 8), so its
  // swizzled chunk is (chunk ^ (lane & 7)); with chunk = 2 * step + bit, that is
  // (2 * step) ^ y for a per-lane y. Row bases are per lane; steps are compile-time constants.
  const uint32_t yq = static_cast<uint32_t>(((lane >> 4) ^ (lane & 7)) << 4);        // Q and V
  const uint32_t yk = static_cast<uint32_t>((((lane >> 3) & 1) ^ (lane & 7)) << 4);  // K
  const uint32_t q_row = sq + static_cast<uint32_t>((row0 + (lane & 15)) * kD * 2);
  const uint32_t k_row = static_cast<uint32_t>((((lane >> 4) << 3) + (lane & 7)) * kD * 2);
  const uint32_t v_row = static_cast<uint32_t>(((((lane >> 3) & 1) << 3) + (lane & 7)) * kD * 2);

  int j0 = 0;  // first visit held in `visits`
  for (int j = 0; j < n_visits; ++j) {
    const int stage = j & 1;
    const int32_t cur = visits[j - j0];
    if (j + 1 < n_visits) {
      const int32_t next_key = visits[j + 1 - j0] & 0x7fffffff;
      KvLoader::load(sk + (stage ^ 1) * kTileBytes, kb, ks2, next_key, seq_len);
      KvLoader::load(sv + (stage ^ 1) * kTileBytes, vb, vs2, next_key, seq_len);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const uint32_t skj = sk + stage * kTileBytes, svj = sv + stage * kTileBytes;

    // S = Q K^T
    float s[kMTiles][kNT][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < kKS; ++ks) {
      uint32_t qa[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
        ldmatrix_x4(q_row + mt * 16 * kD * 2 + (static_cast<uint32_t>(ks * 32) ^ yq), qa[mt]);
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t kf[4];
        ldmatrix_x4(skj + k_row + np * 16 * kD * 2 + (static_cast<uint32_t>(ks * 32) ^ yk), kf);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          mma_16816<T>(s[mt][2 * np], qa[mt], kf[0], kf[1]);
          mma_16816<T>(s[mt][2 * np + 1], qa[mt], kf[2], kf[3]);
        }
      }
    }

    // Element masks for blocks holding padded slots or the text tail.
    if (cur < 0) {
      const int32_t key_start = cur & 0x7fffffff;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t slot = key_start + nt * 8 + (lane % 4) * 2 + e;
          if (!(slot < seq_len && sta_key_valid(g, slot))) {
#pragma unroll
            for (int mt = 0; mt < kMTiles; ++mt) s[mt][nt][e] = s[mt][nt][e + 2] = -INFINITY;
          }
        }
    }

    // Online softmax in the exp2 domain with a lazily updated reference max: exponentials use a
    // per-row reference m (scaled units) that moves only when the block max exceeds it by more
    // than kRescaleSlack, so P <= 2^kRescaleSlack, and the O rescale (the costliest part of the
    // update) runs, warp-uniformly, only for the blocks where some row's reference moved. Rows
    // with no valid key yet keep m = -inf and use 0 as their base (no NaN).
    bool rescale = false;
    float alpha[kMTiles][2];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int rh = 0; rh < 2; ++rh) {
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < kNT; nt += 2) {
          mx0 = fmaxf(mx0, fmaxf(s[mt][nt][2 * rh], s[mt][nt][2 * rh + 1]));
          mx1 = fmaxf(mx1, fmaxf(s[mt][nt + 1][2 * rh], s[mt][nt + 1][2 * rh + 1]));
        }
        float mx = fmaxf(mx0, mx1);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mx_scaled = mx * a.scale_log2;
        alpha[mt][rh] = 1.f;
        if (mx_scaled > m[mt][rh] + kRescaleSlack) {
          alpha[mt][rh] = m[mt][rh] == -INFINITY ? 0.f : fast_exp2(m[mt][rh] - mx_scaled);
          m[mt][rh] = mx_scaled;
          rescale = true;
        }
        const float base = m[mt][rh] == -INFINITY ? 0.f : m[mt][rh];
        float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const float p0 = fast_exp2(s[mt][nt][2 * rh] * a.scale_log2 - base);
          const float p1 = fast_exp2(s[mt][nt][2 * rh + 1] * a.scale_log2 - base);
          s[mt][nt][2 * rh] = p0;
          s[mt][nt][2 * rh + 1] = p1;
          sum0 += p0;
          sum1 += p1;
        }
        l[mt][rh] = l[mt][rh] * alpha[mt][rh] + (sum0 + sum1);
      }
    }
    if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int nt = 0; nt < kDT; ++nt) {
          o[mt][nt][0] *= alpha[mt][0];
          o[mt][nt][1] *= alpha[mt][0];
          o[mt][nt][2] *= alpha[mt][1];
          o[mt][nt][3] *= alpha[mt][1];
        }
    }

    // O += P V
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      uint32_t pa[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        pa[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < kDT / 2; ++dp) {
        uint32_t vf[4];
        ldmatrix_x4_trans(svj + v_row + kk * 16 * kD * 2 + (static_cast<uint32_t>(dp * 32) ^ yq), vf);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          mma_16816<T>(o[mt][2 * dp], pa[mt], vf[0], vf[1]);
          mma_16816<T>(o[mt][2 * dp + 1], pa[mt], vf[2], vf[3]);
        }
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
    if (j + 1 - j0 == kListCap && j + 1 < n_visits) {  // every thread is past its reads of `visits`
      j0 += kListCap;
      fill_visits(j0);
      __syncthreads();
    }
  }
  cp_async_wait<0>();

  // Epilogue: normalize, stage the block in shared memory (over Q), write 16-byte rows.
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      float sum = l[mt][rh];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inv = sum > 0.f ? 1.f / sum : 0.f;
      const int r = row0 + mt * 16 + rh * 8 + lane / 4;
#pragma unroll
      for (int nt = 0; nt < kDT; ++nt) {
        const uint32_t val = pack2<T>(o[mt][nt][2 * rh] * inv, o[mt][nt][2 * rh + 1] * inv);
        const uint32_t addr = sq + swz<kD>(r, nt) + (lane % 4) * 4;
        asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(val));
      }
    }
  __syncthreads();
  T* ob = a.o + b * a.os[0] + h * a.os[1];
  constexpr int kChunks = kD / 8;
  for (int i = threadIdx.x; i < kBM * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const int64_t slot = q_start + r;
    if (slot >= seq_len) continue;
    const int64_t row = a.o_row_map ? static_cast<int64_t>(a.o_row_map[slot]) : slot;
    if (row < 0) continue;
    uint4 val;
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(val.x), "=r"(val.y), "=r"(val.z), "=r"(val.w)
                 : "r"(sq + swz<kD>(r, c)));
    *reinterpret_cast<uint4*>(ob + row * a.os[2] + c * 8) = val;
  }
}

template <typename T, int kD, int kWarps, int kMTiles, int kBN>
void launch(const StaAttentionParams& p, cudaStream_t stream) {
  constexpr int kBM = kWarps * kMTiles * 16;
  constexpr int kSmem = (kBM + 4 * kBN) * kD * 2;
  auto kernel = sta_fwd_kernel<T, kD, kWarps, kMTiles, kBN>;
  static std::atomic<uint64_t> configured{0};
  cuda::once_per_device(configured, p.device.index, [&] {
    STAVID_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  });
  StaArgs<T, kD> a;
  a.q = static_cast<const T*>(p.q);
  a.k = static_cast<const T*>(p.k);
  a.v = static_cast<const T*>(p.v);
  a.o = static_cast<T*>(p.o);
  for (int i = 0; i < 3; ++i) {
    a.qs[i] = p.q_stride[i];
    a.ks[i] = p.k_stride[i];
    a.vs[i] = p.v_stride[i];
    a.os[i] = p.o_stride[i];
  }
  a.g = p.geom;
  a.windows = p.windows;
  a.o_row_map = p.o_row_map;
  a.heads = p.heads;
  a.text_qblocks = static_cast<int32_t>((p.geom.text_slots + kBM - 1) / kBM);
  const float scale = p.softmax_scale > 0.f ? p.softmax_scale : 1.f / sqrtf(static_cast<float>(p.head_dim));
  a.scale_log2 = scale * 1.4426950408889634f;
  const int64_t img_qblocks = p.geom.img_slots / kBM;
  const int64_t ctas = (img_qblocks + a.text_qblocks) * p.batch * p.heads;
  STAVID_CHECK(ctas < (int64_t(1) << 31) && p.batch * p.heads <= 65535, "STA: ", ctas,
               " CTAs (batch x heads ", p.batch * p.heads, ") exceed one launch's grid");
  a.img_qblocks = static_cast<int32_t>(img_qblocks);
  a.text_kv_blocks = sta_text_blocks(p.geom, kBN);
  a.head_major = 1;
  a.batch_heads = p.batch * p.heads;
  const dim3 grid(static_cast<unsigned>(ctas));
  kernel<<<grid, kWarps * 32, kSmem, stream>>>(a);
  STAVID_CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_for(const StaAttentionParams& p, StaKernel k, cudaStream_t s) {
  const bool m128 = k == StaKernel::PortableM128;
  if (p.head_dim == 128) {
    if (m128) launch<T, 128, 4, 2, 64>(p, s);
    else launch<T, 128, 2, 2, 64>(p, s);
  } else {
    if (m128) launch<T, 64, 4, 2, 64>(p, s);
    else launch<T, 64, 2, 2, 64>(p, s);
  }
}
}  // namespace

void sta_attention_cuda(const StaAttentionParams& p, StaKernel k, CudaStream s) {
  if (p.dtype == DType::BF16) {
    launch_for<__nv_bfloat16>(p, k, s);
  } else {
    launch_for<__half>(p, k, s);
  }
}

}  // namespace stavid::detail
