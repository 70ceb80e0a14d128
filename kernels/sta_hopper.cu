// STA attention, Hopper path (sm_90a): TMA + wgmma, warp-specialized. bf16 and fp16, d = 64 and 128,
// tiles of a multiple of 64 tokens, any per-head windows, padded canvases and text slots, image and
// text queries in one launch. The selector's choice on compute capability 9.0 (STAVID_STA_HOPPER=0
// opts out, kernels/sta.cc); it sends it only params it supports (detail::sta_hopper_supports).
//
// Two CTA shapes (HopperCfg), both with a query block of BM rows that lies inside one tile (or
// inside the text), so all its rows share one key range:
// - tile_tokens % 128 == 0: 3 warpgroups (384 threads), BM = 128 query rows (2 consumer
//   warpgroups x 64), key blocks of BN = 128, one CTA per SM;
// - tile_tokens % 128 == 64: 2 warpgroups (256 threads), BM = 64 (1 consumer warpgroup), BN = 64,
//   two CTAs per SM (so one CTA's softmax overlaps the other's wgmma).
// Work items: one query block of one batch x head (decode_item): first every (text query block,
// batch x head), heads fastest (text blocks see every key: the longest work starts first), then the
// image blocks head-major (a wave's CTAs share one head's K/V in L2). Either one CTA per item, or
// (variant "persist") a persistent grid whose CTAs take items from a global counter, the image
// blocks of the batch x heads with the most visits first. The variants (StaHopperVariant, kernels/
// sta.h) are picked at run time; two instances per CTA shape and ring depth (and per ping-pong
// setting on 128-row CTAs), all with one producer thread that walks THE visit list and loads:
// - the unmasked one, for launches where no visit needs an element mask (canvas divisible by the
//   tile, text_valid a multiple of BN): the consumers only wait on each stage and run the dense loop
//   a fixed number of times;
// - the masked one: the producer also builds each masked block's mask from a count of valid keys,
//   each stage carries a flag word the consumers test once (mask words read only on masked blocks),
//   and an end-of-item stage ends the loop, so the producer may drop blocks without a valid key
//   ("skip").
// - Warpgroup 0, the producer, gives registers back (setmaxnreg.dec). Its thread 0 walks the visit
//   list of each work item (sta_query_range, then sta_walk_begin / sta_walk_next, kernels/sta.h: no
//   division per visit, which put the producer on the loop's critical path (session 10: 2.6-3.5% on
//   every case); blocks of BN keys; the other 127 threads exit); per item it writes the item's header
//   (HopperItem) into one of the Q buffers (two, or one with a 3-stage ring) and loads Q there (q_full; the consumers
//   release the buffer on q_empty), then issues TMA loads (cp.async.bulk.tensor.4d, 128-byte swizzle)
//   of each K and V block into a ring of 2 stages (3 for the variant "deep" on 128-row CTAs): it
//   waits on the stage's `empty` mbarrier, arms its `full` mbarrier with the byte count
//   (arrive.expect_tx) and the TMA completes the transaction.
// - Element masks: only the producer knows which visits need them (StaVisit::needs_mask: tiles with
//   padded slots, the text tail). A tile's padding comes last (sta.h), so a block's valid keys are its
//   first n (sta_block_valid_count) and the BN-bit valid mask is a prefix, built from n by the one
//   producer thread (no per-key ballots: no warp needed); a block with n == BN runs unmasked. The
//   producer stores the mask with the stage's flag before the arrive on `full` (release; the
//   consumers' wait acquires it); the overlap instances pass n itself in the flag word instead. Keys
//   past the sequence read as zero (TMA out-of-bounds fill) and are invalid in the mask too; keys that exist in memory but are invisible (padded slots, text slots
//   past text_valid) are masked. With skip_empty, a block whose mask is all zero is not loaded at
//   all, and a query block of padded slots only visits nothing (its rows, dropped by untile, come out
//   as zeros).
// - The consumers (setmaxnreg.inc) own 64 query rows each and run a dense loop over the visits.
//   Per visit: wait `full` (try_wait.parity), S = Q K^T with d / 16 wgmma m64nBNk16 (A and B from
//   shared memory through matrix descriptors of the 128B-swizzled K-major layout TMA writes); only
//   on stages flagged masked, invalid columns of S become -inf; online softmax
//   in the exp2 domain on the fp32 accumulator fragment (a row with no valid key so far keeps
//   m = -inf and adds nothing: no NaN); O += P V with BN / 16 wgmma m64nDk16 whose A operand is P in
//   registers (the mma.sync A fragment layout) and whose B operand is V from shared memory
//   (MN-major, transposed by the descriptor), then every consumer thread arrives on `empty`.
// - Epilogue: rows past the sequence and rows the o_row_map drops (padded slots) are not written,
//   as in the portable kernel.
// Shared memory: Q [kQBufs][d / 64 boxes][BM rows][64 cols], K and V [kStages][d / 64 boxes][BN][64]. A
// box is one TMA box: 64 16-bit values = 128 bytes per row, the 128B swizzle atom width; rows are
// 128 bytes apart and the swizzle repeats every 8 rows (1024 bytes), so every region is 1024-byte
// aligned. d = 128, BN = 128: 2 x 32 KB + 2 x 64 KB, or 32 KB + 3 x 64 KB ("deep").
//
// - Variant "pingpong" (128-row CTAs): the two consumer warpgroups take turns on the tensor cores
//   through two named barriers, so one runs its softmax while the other's P V and next Q K^T run
//   (protocol at the kernel's template).
// - Variants "overlap" and "overlap-pp" (128-row CTAs, 3-stage ring; "auto" runs overlap-pp there):
//   FA3's intra-warpgroup pipelining, block j's Q K^T and block j - 1's P V issued back to back and
//   block j's softmax under that P V, without and with the turns of "pingpong" (protocol at the
//   kernel's template). Their consumers wait without the watchdog trap (mbar_wait_spin), which would
//   hold them to 168 registers.
// Not yet here: lazy rescaling, a TMA store, the overlap on 64-row CTAs.
#include <cuda.h>  // CUtensorMap and its enums only: the driver entry point is fetched at run time
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>
#include <vector>
#include <type_traits>

#include "kernels/core/cuda_check.h"
#include "kernels/core/error.h"
#include "kernels/cuda_utils.cuh"
#include "kernels/sta.h"

namespace stavid::detail {

// Compile-time shape of one kernel instance: storage type T (bf16 or fp16), head dim kD (64 or
// 128), kConsumers consumer warpgroups of 64 query rows, key blocks of kBN, a K/V ring of kStages. (Outside the anonymous
// namespace: members used only by the sm_90a body would warn as unreferenced in other passes.)
template <typename T, int kD_, int kConsumers_, int kBN_, int kStages_ = 2>
struct HopperCfg {
  using Type = T;
  static constexpr int kD = kD_, kConsumers = kConsumers_, kBN = kBN_;
  static constexpr int kBM = 64 * kConsumers;  // query rows per CTA
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kCtasPerSm = kConsumers == 1 ? 2 : 1;
  // setmaxnreg targets: 128 x 40 + 256 x 232 = 64,512 registers for one 384-thread CTA per SM;
  // 128 x 40 + 128 x 216 = 32,768 (half the file) for each of two 256-thread CTAs.
  static constexpr uint32_t kProducerRegs = 40, kConsumerRegs = kConsumers == 2 ? 232 : 216;
  static constexpr int kBoxes = kD / 64;                       // 64-column TMA boxes per row
  static constexpr int kQBox = kBM * 128, kKvBox = kBN * 128;  // bytes of one box
  static constexpr int kQBytes = kBoxes * kQBox, kKvBytes = kBoxes * kKvBox;
  static constexpr int kStages = kStages_;  // K/V ring
  // Two Q buffers with a 2-stage ring: the next work item's Q loads while the consumers finish this
  // one (persistent grid). A 3-stage ring (d = 128: 3 x 64 KB) leaves room for one.
  static constexpr int kQBufs = kStages == 2 ? 2 : 1;
  static constexpr int kSmemQ = 0;
  static constexpr int kSmemK = kSmemQ + kQBufs * kQBytes;
  static constexpr int kSmemV = kSmemK + kStages * kKvBytes;
  static constexpr int kSmemBytes = kSmemV + kStages * kKvBytes + 1024;  // + slack to align the base to 1024
  static constexpr int kMaskWords = kBN / 32;
  static_assert(kD == 64 || kD == 128, "head dim");
  static_assert((kConsumers == 2 && kBN == 128) || (kConsumers == 1 && kBN == 64), "CTA shape");
  // Per CTA: dynamic + 1 KB static + the 1 KB the SM reserves; 228 KB per SM.
  static_assert(kCtasPerSm * (kSmemBytes + 2048) <= 228 * 1024, "shared memory");
};

namespace {

constexpr int kHopperMaxOrdered = 256;  // batch x heads the longest-first order covers

using cuda::fast_exp2;
using cuda::pack2;
using cuda::smem_u32;

template <typename T>
struct HopperArgs {
  T* o;
  int64_t os[3];
  StaGeometry g;
  const StaWindow* windows;
  const int32_t* o_row_map;
  int32_t heads;
  int32_t batch_heads;
  int32_t text_qblocks;  // ceil(text_slots / BM) per batch x head
  int32_t img_qblocks;   // img_slots / BM per batch x head
  int32_t items;         // work items, (text_qblocks + img_qblocks) x batch_heads (HopperItem order)
  float scale_log2;
  // Persistent grid: after item blockIdx.x a CTA takes gridDim.x + atomicAdd(counter, 1) until past
  // `items`. Otherwise each CTA runs item blockIdx.x alone.
  int32_t* counter;
  bool persistent;
  bool skip_empty;  // drop blocks without a valid slot (masked instance only: no other has any)
  // kTail instance (variant "tail"): the valid keys of every work item's last visit (the text tail,
  // text_valid % BN); 0 in every other instance.
  int32_t tail_valid;
  bool ordered;     // image items by batch x head in bh_order (longest first) instead of 0, 1, ...
  int16_t bh_order[kHopperMaxOrdered];
};

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define STAVID_HOPPER_DEVICE 1
#endif

#if defined(STAVID_HOPPER_DEVICE)
// ---- PTX wrappers (sm_90a) ----

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}
// Spins until the phase with the given parity has completed. Draft watchdog: a wait longer than
// about 2^34 cycles (~10 s) traps, so a barrier bug fails the launch instead of hanging the GPU.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  if (mbar_try_wait(bar, parity)) return;
  const long long t0 = clock64();
  while (!mbar_try_wait(bar, parity))
    if (clock64() - t0 > (1ll << 34)) __trap();
}
// The overlap instances' consumer wait: a plain spin, no watchdog. A trap on the consumers' path makes
// ptxas allocate the code after setmaxnreg.inc within the launch-bounds average (168 registers for 384
// threads) instead of the setmaxnreg value (session 9: a toy overlap loop spills 72 bytes with the
// trapping wait and none without). A consumer hang leaves the producer waiting on `empty`, whose
// watchdog traps. The other instances keep the trapping wait: without it their consumers ran 1-4.5%
// slower (session 9, device run 1: skip dense 296.8 vs 283.4 ms).
__device__ __forceinline__ void mbar_wait_spin(uint32_t bar, uint32_t parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}
template <bool kSpin>
__device__ __forceinline__ void consumer_wait(uint32_t bar, uint32_t parity) {
  if constexpr (kSpin) mbar_wait_spin(bar, parity);
  else mbar_wait(bar, parity);
}

// One 4-D TMA box {64 cols, rows, 1 head, 1 batch} at coordinates (c0, row, head, batch) into shared
// memory, completing its bytes of the transaction on `bar`. Rows past the tensor are zero.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int32_t c0,
                                            int32_t row, int32_t head, int32_t batch) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, "
      "%5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(row), "r"(head), "r"(batch), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void tma_prefetch_desc(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// wgmma shared-memory matrix descriptor, 128-byte swizzle (layout type 1 in bits 62-63): start
// address >> 4 (bits 0-13), leading byte offset >> 4 (bits 16-29), stride byte offset >> 4 (bits
// 32-45), base offset 0 (every tile is 1024-byte aligned and the k-steps move within the atom).
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((addr & 0x3FFFF) >> 4);
  d |= static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16;
  d |= static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32;
  d |= static_cast<uint64_t>(1) << 62;
  return d;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accumulator reads/writes across the asynchronous wgmma.
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

template <uint32_t kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <uint32_t kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// Named barrier `id` over kThreads threads (bar.sync / bar.arrive, both .aligned: every thread of a
// warp executes them); id 0 is __syncthreads. bar.arrive does not wait; bar.sync waits until kThreads
// threads have arrived or synced since the barrier's last completion. The id is a register operand,
// so ptxas reports all 16 barriers as used (only the 128-row CTAs use it, one per SM anyway); the
// alternative, immediate ids behind a branch on the warpgroup, made the masked d = 128 ping-pong
// instance spill (16-36 bytes).
template <uint32_t kThreads>
__device__ __forceinline__ void named_bar_sync(uint32_t id) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(kThreads) : "memory");
}
template <uint32_t kThreads>
__device__ __forceinline__ void named_bar_arrive(uint32_t id) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "n"(kThreads) : "memory");
}

// ---- wgmma (fp32 accumulators, bf16 or fp16 inputs) ----

// "+f" operands over 32 or 64 consecutive accumulator floats, and their register lists in the asm.
#define STAVID_ACC8(p) \
  "+f"((p)[0]), "+f"((p)[1]), "+f"((p)[2]), "+f"((p)[3]), "+f"((p)[4]), "+f"((p)[5]), "+f"((p)[6]), "+f"((p)[7])
#define STAVID_ACC32(p) STAVID_ACC8(p), STAVID_ACC8((p) + 8), STAVID_ACC8((p) + 16), STAVID_ACC8((p) + 24)
#define STAVID_ACC64(p) STAVID_ACC32(p), STAVID_ACC32((p) + 32)
#define STAVID_REGS32                                                                                          \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define STAVID_REGS64                                                                                          \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "  \
  "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
// D (+)= A * B^T, A and B from shared memory (K-major descriptors); operand `sc` != 0 accumulates.
#define STAVID_WGMMA_SS(shape, ty, regs, a, b, sc)                                                                     \
  "{\n.reg .pred p;\nsetp.ne.b32 p, " sc ", 0;\nwgmma.mma_async.sync.aligned." shape ".f32." ty "." ty " " regs ", " a \
  ", " b ", p, 1, 1, 0, 0;\n}\n"
// D += A * B, A from registers, B from shared memory transposed (MN-major: tnspB = 1).
#define STAVID_WGMMA_RS(shape, ty, regs, a, b)                                                                    \
  "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\nwgmma.mma_async.sync.aligned." shape ".f32." ty "." ty " " regs ", " a \
  ", " b ", p, 1, 1, 1;\n}\n"

template <typename T>
constexpr bool kIsF16 = std::is_same_v<T, __half>;

// S (64 x N, fp32) (+)= A (64 x 16, smem descriptor, K-major) * B (N x 16, smem descriptor,
// K-major)^T. scale_d == 0 overwrites d.
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  if constexpr (N == 128) {
    if constexpr (kIsF16<T>)
      asm volatile(STAVID_WGMMA_SS("m64n128k16", "f16", STAVID_REGS64, "%64", "%65", "%66")
                   : STAVID_ACC64(d)
                   : "l"(desc_a), "l"(desc_b), "r"(scale_d));
    else
      asm volatile(STAVID_WGMMA_SS("m64n128k16", "bf16", STAVID_REGS64, "%64", "%65", "%66")
                   : STAVID_ACC64(d)
                   : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  } else {
    static_assert(N == 64, "wgmma_ss shape");
    if constexpr (kIsF16<T>)
      asm volatile(STAVID_WGMMA_SS("m64n64k16", "f16", STAVID_REGS32, "%32", "%33", "%34")
                   : STAVID_ACC32(d)
                   : "l"(desc_a), "l"(desc_b), "r"(scale_d));
    else
      asm volatile(STAVID_WGMMA_SS("m64n64k16", "bf16", STAVID_REGS32, "%32", "%33", "%34")
                   : STAVID_ACC32(d)
                   : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  }
}

// O (64 x N, fp32) += A (64 x 16, registers: the mma.sync m16n8k16 A fragment per warp) * B (16 x
// N, smem descriptor, MN-major: V stored [keys][d], d contiguous, so B is transposed: tnspB = 1).
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b) {
  if constexpr (N == 128) {
    if constexpr (kIsF16<T>)
      asm volatile(STAVID_WGMMA_RS("m64n128k16", "f16", STAVID_REGS64, "{%64, %65, %66, %67}", "%68")
                   : STAVID_ACC64(d)
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
    else
      asm volatile(STAVID_WGMMA_RS("m64n128k16", "bf16", STAVID_REGS64, "{%64, %65, %66, %67}", "%68")
                   : STAVID_ACC64(d)
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
  } else {
    static_assert(N == 64, "wgmma_rs shape");
    if constexpr (kIsF16<T>)
      asm volatile(STAVID_WGMMA_RS("m64n64k16", "f16", STAVID_REGS32, "{%32, %33, %34, %35}", "%36")
                   : STAVID_ACC32(d)
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
    else
      asm volatile(STAVID_WGMMA_RS("m64n64k16", "bf16", STAVID_REGS32, "{%32, %33, %34, %35}", "%36")
                   : STAVID_ACC32(d)
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
  }
}

template <typename Cfg>
__device__ __forceinline__ uint64_t desc_q(uint32_t sq, int cw, int ks) {
  // A operand, K-major: rows of the consumer's 64-row slice, k-step ks (16 cols = 32 bytes).
  return smem_desc(sq + (ks / 4) * Cfg::kQBox + cw * 64 * 128 + (ks % 4) * 32, 16, 1024);
}
template <typename Cfg>
__device__ __forceinline__ uint64_t desc_k(uint32_t sk, int ks) {
  // B operand of Q K^T, K-major: BN key rows, k-step ks over the head dim.
  return smem_desc(sk + (ks / 4) * Cfg::kKvBox + (ks % 4) * 32, 16, 1024);
}
template <typename Cfg>
__device__ __forceinline__ uint64_t desc_v(uint32_t sv, int kk) {
  // B operand of P V, MN-major (N = head dim contiguous): k-step kk covers keys [16 kk, 16 kk + 16):
  // 8 keys 128 bytes apart, the next 8 at SBO = 1024; head-dim columns 64-127 (d = 128) live in the
  // other TMA box, LBO = one box.
  return smem_desc(sv + kk * 16 * 128, Cfg::kKvBox, 1024);
}
#endif  // STAVID_HOPPER_DEVICE

#if defined(STAVID_HOPPER_DEVICE)
// A work item: one query block of one batch x head. Item order: every (text query block, batch x
// head), heads fastest (text blocks see every key: the longest work starts first), then the image
// blocks of each batch x head in turn (a wave's CTAs share one head's K/V in L2), in bh_order when
// `ordered` (decreasing visit count).
template <int kBM, typename T>
__device__ __forceinline__ void decode_item(const HopperArgs<T>& a, int item, int* bh, int32_t* q_start) {
  const int text_items = a.text_qblocks * a.batch_heads;
  if (item < text_items) {
    *bh = item % a.batch_heads;
    *q_start = static_cast<int32_t>(a.g.img_slots) + static_cast<int32_t>(item / a.batch_heads) * kBM;
  } else {
    const int idx = item - text_items, rank = idx / a.img_qblocks;
    *bh = a.ordered ? a.bh_order[rank] : rank;
    *q_start = (idx % a.img_qblocks) * kBM;
  }
}

// Header of the work item in a Q buffer (bh < 0: no more work), written by the producer before its
// arrive on the buffer's q_full (release; the consumers' wait acquires it).
struct HopperItem {
  int32_t bh, q_start, visits;
};
// Per K/V stage, masked instance: what the consumers do with it.
constexpr uint32_t kStageMasked = 1;  // apply the stage's valid mask
constexpr uint32_t kStageEnd = 2;     // no data: the work item has no more visits
constexpr uint32_t kStageLast = 4;    // overlap instances: the work item's last visit (no kStageEnd stage)
constexpr int kStageCountShift = 8;   // overlap instances: the block's valid keys, flags >> 8 (masked blocks)
// Ping-pong (kPingPong): consumer warpgroup cw's turn is named barrier kBarTurn0 + cw, over the
// 2 x 128 consumer threads. Id 0 is __syncthreads; the kernel uses no other named barrier.
constexpr uint32_t kBarTurn0 = 1, kTurnThreads = 256;
__device__ __forceinline__ void turn_wait(int cw) {  // until warpgroup cw's turn
  named_bar_sync<kTurnThreads>(kBarTurn0 + cw);
}
__device__ __forceinline__ void turn_pass(int cw) {  // from warpgroup cw to the other
  named_bar_arrive<kTurnThreads>(kBarTurn0 + 1 - cw);
}

// ---- the consumers' per-block steps on the S accumulator fragment (64 x BN per warpgroup) ----
// Thread rows: lane / 4 (values 4 n + 0, 1) and lane / 4 + 8 (4 n + 2, 3) of the warp's 16 rows; this
// thread's columns are 8 n + 2 (lane % 4) + e, e in {0, 1}.

// The text tail (kTail instance): columns at and past `valid` become -inf (text slots past text_valid,
// or rows past the sequence, zero-filled).
template <int kBN>
__device__ __forceinline__ void mask_tail(float (&s)[kBN / 2], int32_t valid, int lane) {
#pragma unroll
  for (int n = 0; n < kBN / 8; ++n)
#pragma unroll
    for (int e = 0; e < 2; ++e)
      if (8 * n + 2 * (lane % 4) + e >= valid) s[4 * n + e] = s[4 * n + 2 + e] = -INFINITY;
}

// A masked stage's valid keys (bit i of word w: key 32 w + i): column 8 n + 2 (lane % 4) + e is bit
// 8 (n % 4) + 2 (lane % 4) + e of word n / 4.
template <int kBN>
__device__ __forceinline__ void mask_words(float (&s)[kBN / 2], const uint32_t* words, int lane) {
  uint32_t valid[kBN / 32];
#pragma unroll
  for (int w = 0; w < kBN / 32; ++w) valid[w] = words[w] >> (2 * (lane % 4));
#pragma unroll
  for (int n = 0; n < kBN / 8; ++n)
#pragma unroll
    for (int e = 0; e < 2; ++e)
      if (!((valid[n / 4] >> (8 * (n % 4) + e)) & 1u)) s[4 * n + e] = s[4 * n + 2 + e] = -INFINITY;
}

// Online softmax in the exp2 domain: S becomes P (unnormalized), the row maxima m and sums l move on,
// alpha is the factor the running O takes. A row whose keys so far are all masked keeps m = -inf:
// alpha 0, base 0, P = 0 (no NaN).
template <int kBN>
__device__ __forceinline__ void online_softmax(float (&s)[kBN / 2], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                               float scale_log2) {
#pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < kBN / 8; ++n) mx = fmaxf(mx, fmaxf(s[4 * n + 2 * rh], s[4 * n + 2 * rh + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m[rh], mx * scale_log2);
    alpha[rh] = m[rh] == -INFINITY ? 0.f : fast_exp2(m[rh] - m_new);
    m[rh] = m_new;
    const float base_m = m_new == -INFINITY ? 0.f : m_new;
    float sum = 0.f;
#pragma unroll
    for (int n = 0; n < kBN / 8; ++n) {
      const float p0 = fast_exp2(s[4 * n + 2 * rh] * scale_log2 - base_m);
      const float p1 = fast_exp2(s[4 * n + 2 * rh + 1] * scale_log2 - base_m);
      s[4 * n + 2 * rh] = p0;
      s[4 * n + 2 * rh + 1] = p1;
      sum += p0 + p1;
    }
    l[rh] = l[rh] * alpha[rh] + sum;
  }
}

template <int kD>
__device__ __forceinline__ void rescale_o(float (&o)[kD / 2], const float (&alpha)[2]) {
#pragma unroll
  for (int n = 0; n < kD / 8; ++n) {
    o[4 * n + 0] *= alpha[0];
    o[4 * n + 1] *= alpha[0];
    o[4 * n + 2] *= alpha[1];
    o[4 * n + 3] *= alpha[1];
  }
}

// P (T) in the wgmma A-fragment layout: k-step kk takes S columns [16 kk, 16 kk + 16), i.e. the
// accumulator n-tiles 2 kk and 2 kk + 1.
template <typename T, int kBN>
__device__ __forceinline__ void pack_p(uint32_t (&pa)[kBN / 16][4], const float (&s)[kBN / 2]) {
#pragma unroll
  for (int kk = 0; kk < kBN / 16; ++kk) {
    pa[kk][0] = pack2<T>(s[8 * kk + 0], s[8 * kk + 1]);
    pa[kk][1] = pack2<T>(s[8 * kk + 2], s[8 * kk + 3]);
    pa[kk][2] = pack2<T>(s[8 * kk + 4], s[8 * kk + 5]);
    pa[kk][3] = pack2<T>(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

// Keeps an asynchronous P V's A fragment allocated until its wait.
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(d[i][j])::"memory");
}
#endif  // STAVID_HOPPER_DEVICE

// kMasked: the instance for launches with masked visits (kernel comment at the top). The unmasked
// instance runs launches where no visit needs a mask: consumers that only wait on each stage (the
// loop count comes with the work item). Both have one producer thread.
// kPingPong (variant "pingpong", 128-row CTAs only): the two consumer warpgroups take turns on the
// tensor cores, FA3's inter-warpgroup schedule (its warp_scheduler_barrier_sync / _arrive without the
// intra-warpgroup overlap). A warpgroup's turn covers its P V of one visit and its Q K^T of the next:
// it syncs on its own named barrier (kBarTurn0 + cw) before each P V, and arrives on the other's
// right after issuing each Q K^T, so that one warpgroup's GEMMs run while the other runs its softmax.
// Once per CTA, before its first item, cw 1 arrives on turn 0 (cw 0 goes first; FA3's mma_init). Then
// per work item, both warpgroups alike (n visits = K/V blocks with data; the masked instance's
// end-of-item stage is not one and touches no turn):
//   sync(own turn); n x [Q K^T, arrive(other's turn), softmax, sync(own turn), P V]; arrive(other's turn)
// So per item each warpgroup syncs n + 1 times on its turn and the other arrives n + 1 times on it
// (0 visits included: one sync and one arrive each); the turns strictly alternate, so a barrier never
// holds the arrivals of two phases. The one extra arrival (the start's) moves from item to item: cw 1's
// arrive at the end of an item is what cw 0's sync at the start of the next one consumes (persistent
// grid), and after the last item it stays pending on turn 0 at exit (as in FA3: every bar.sync has its
// arrivals; the barrier state goes with the CTA). No register is added beyond the barrier id: S still
// becomes P in place before P V (no second S accumulator).
// kTail (variant "tail", unmasked instance of 128-row CTAs with a 2-stage ring only): the launch's one
// masked visit is the text tail, every item's last visit; the consumers mask its columns at and past
// a.tail_valid. A template parameter, so the other instances compile exactly as before. (The overlap
// instances take the text tail too: their loop peels the item's last visit off, so the loop body carries no
// tail check; session 10: text 2.4% faster than with the check in the loop.)
// kOverlap (variant "overlap", 128-row CTAs with the 3-stage ring, no ping-pong): FA3's intra-warpgroup
// pipelining. After block 0's S and softmax, per visit j >= 1 a consumer warpgroup issues S_j = Q K_j^T,
// rescales O to block j - 1's row maxima while it runs, issues O += P_{j-1} V_{j-1}, waits for the S
// group only (wgmma groups complete in order), runs block j's masks and softmax while that P V is on
// the tensor cores, then waits for it, releases stage j - 1 and converts S_j to P_j; the last block's
// P V follows the loop. It holds two stages at a time, hence the third. (In the SASS, ptxas hoists the
// wait_group 0 above most of the softmax, so the softmax runs after this warpgroup's P V; the other
// warpgroup's GEMMs fill the gap. A loop with two P buffers and no wait_group 0 after the softmax
// overlaps it for real, and measured within 2% of this one, 720p 3% slower: session 9, not kept.) The masked overlap
// instances end an item on the stage the producer flagged kStageLast (sta_last_nonempty_visit) instead of an
// end-of-item stage, whose publication would wait for a free stage while the consumers wait for it. Live at the
// softmax: O (d / 2 floats), S (BN / 2) and P_{j-1} (BN / 4 registers), 160 at d = 128, which fits the consumers'
// setmaxnreg budget only because their waits do not trap (mbar_wait_spin).
// kOverlap with kPingPong (variant "overlap-pp", FA3's full schedule at d = 128): the two warpgroups also
// take turns issuing, a turn being one visit's pair of issues (block 0's Q K^T alone, then S_j with
// P_{j-1} V_{j-1}, then the last P V alone): n + 1 turns per item of n visits for each warpgroup, so the
// turns alternate as in the ping-pong protocol above (items without visits take none).
template <typename Cfg, bool kMasked, bool kPingPong = false, bool kTail = false, bool kOverlap = false>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kCtasPerSm)
    sta_hopper_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                      const __grid_constant__ CUtensorMap tm_v,
                      const __grid_constant__ HopperArgs<typename Cfg::Type> a) {
#if defined(STAVID_HOPPER_DEVICE)
  using T = typename Cfg::Type;
  constexpr int kD = Cfg::kD, kBM = Cfg::kBM, kBN = Cfg::kBN, kBoxes = Cfg::kBoxes, kStages = Cfg::kStages;
  static_assert(!kPingPong || Cfg::kConsumers == 2, "ping-pong needs two consumer warpgroups");
  static_assert(!kTail || !kMasked, "the text tail mask is the unmasked instance's");
  static_assert(!kOverlap || (Cfg::kConsumers == 2 && kStages >= 3),
                "overlap: 128-row CTAs holding two stages of a ring of three or more");
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  // full[kStages], empty[kStages], q_full[kQBufs], q_empty[kQBufs]
  __shared__ __align__(8) uint64_t bars[2 * (kStages + Cfg::kQBufs)];
  __shared__ HopperItem s_item[Cfg::kQBufs];
  // Masked instance, per stage: kStage* flags and the valid keys of the block in flight (bit i of
  // word w: key 32 w + i), written only for masked blocks.
  __shared__ uint32_t s_flags[kStages];
  __shared__ __align__(16) uint32_t s_valid[kStages][Cfg::kMaskWords];
  __shared__ StaTileRange s_range;  // the producer's current item (it has 40 registers)
  __shared__ int32_t s_next;        // the producer's next item (persistent grid)
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t sq = base + Cfg::kSmemQ, sk = base + Cfg::kSmemK, sv = base + Cfg::kSmemV;
  const uint32_t full0 = smem_u32(&bars[0]), empty0 = smem_u32(&bars[kStages]);
  const uint32_t q_full0 = smem_u32(&bars[2 * kStages]), q_empty0 = smem_u32(&bars[2 * kStages + Cfg::kQBufs]);
  const StaGeometry& g = a.g;
  const int wg = threadIdx.x / 128;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full0 + 8 * s, 1);                        // the producer's arrive(.expect_tx)
      // every consumer thread; in the overlap instances one lane per consumer warp
      mbar_init(empty0 + 8 * s, Cfg::kConsumers * (kOverlap ? 4 : 128));
    }
    for (int s = 0; s < Cfg::kQBufs; ++s) {
      mbar_init(q_full0 + 8 * s, 1);
      mbar_init(q_empty0 + 8 * s, Cfg::kConsumers * 128);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {
    // ---- producer: one thread walks THE visit list of each work item and issues the loads ----
    setmaxnreg_dec<Cfg::kProducerRegs>();
    if (threadIdx.x == 0) {
      tma_prefetch_desc(&tm_q);
      tma_prefetch_desc(&tm_k);
      tma_prefetch_desc(&tm_v);
      uint32_t slot = 0;  // K/V stages filled so far: stage slot % kStages, its (slot / kStages)-th use
      int item = blockIdx.x;
      for (int k = 0;; ++k) {
        const int qb = k % Cfg::kQBufs;
        const uint32_t q_full = q_full0 + 8 * qb;
        if (k >= Cfg::kQBufs)  // item k - kQBufs is done with the buffer
          mbar_wait(q_empty0 + 8 * qb, (k / Cfg::kQBufs - 1) & 1);
        if (item >= a.items) {
          s_item[qb].bh = -1;
          mbar_arrive(q_full);
          break;
        }
        int bh;
        int32_t q_start;
        decode_item<kBM>(a, item, &bh, &q_start);
        const int b = bh / a.heads, h = bh % a.heads;
        s_range = sta_query_range(g, a.windows[h], q_start);
        const StaTileRange& r = s_range;
        int n_visits = sta_visit_count(g, r, kBN);
        bool load_q = true;
        if constexpr (kMasked) {
          // A query block of padded slots only (the last block of a tile padded in t): its rows are
          // dropped, so it visits nothing and its rows come out as zeros.
          if (a.skip_empty && q_start < g.img_slots && sta_tile_has_padding(g, q_start / g.tile_tokens)) {
            if (sta_block_valid_count(g, q_start, kBM) == 0) {
              n_visits = 0;
              load_q = false;
            }
          }
        }
        s_item[qb] = HopperItem{bh, q_start, n_visits};
        if (load_q) {
          mbar_arrive_expect_tx(q_full, Cfg::kQBytes);
#pragma unroll
          for (int x = 0; x < kBoxes; ++x)
            tma_load_4d(sq + qb * Cfg::kQBytes + x * Cfg::kQBox, &tm_q, q_full, 64 * x, q_start, h, b);
        } else {
          mbar_arrive(q_full);
        }
        // The next item, fetched while the Q load flies and the ring is still full of the last
        // item's blocks; kept in shared memory (the producer has 40 registers).
        if (a.persistent) s_next = static_cast<int>(gridDim.x) + atomicAdd(a.counter, 1);
        // The visit list, walked without divisions (sta_walk_next: a tile change costs a few compares),
        // except in the masked per-visit instances, where the walk's state spilled 4-8 bytes of the
        // producer's 40 registers: they keep sta_visit_next (a division per visit, three more per tile).
        constexpr bool kWalk = !kMasked || kOverlap;
        StaWalk walk = sta_walk_begin(g, r, kBN);
        StaVisit v{};
        // Masked overlap instance: the item's last visit with data is flagged kStageLast instead of an
        // end-of-item stage following it (whose round trip the overlapped loop would wait for). The
        // blocks after it are padding only, so with skip_empty it is the last one loaded.
        [[maybe_unused]] int32_t last = n_visits - 1;
        if constexpr (kMasked && kOverlap)
          if (a.skip_empty) last = sta_last_nonempty_visit(g, r, kBN);
        for (int j = 0; j < n_visits; ++j) {
          if constexpr (kWalk) {
            if (j > 0) sta_walk_next(g, r, kBN, walk);
            v = walk.v;
          } else {
            v = j == 0 ? sta_visit_at(g, r, kBN, 0) : sta_visit_next(g, r, kBN, j - 1, v);
          }
          [[maybe_unused]] int32_t n_valid = kBN;
          if constexpr (kMasked) {
            // The block's valid keys, counted before the wait below (while the stage may still be in
            // use). Rows past the sequence are invalid and zero in memory.
            if (v.needs_mask) {
              // The valid keys are the block's first n (padding last in a tile, sta.h), so the count is
              // the mask: bit i of word w is key 32 w + i.
              const int32_t n =
                  kWalk ? sta_walk_valid_count(g, r, walk, kBN) : sta_block_valid_count(g, v.key_start, kBN);
              if (a.skip_empty && n == 0) continue;  // padded slots only: nothing to load or add
              // A block of a padded tile whose keys are all real (n == BN): the consumers take the unmasked
              // path (v itself keeps its flag: the walk carries it to the tile's next block).
              n_valid = n;
            }
          }
          const int st = slot % kStages;
          if (slot >= kStages) mbar_wait(empty0 + 8 * st, (slot / kStages - 1) & 1);
          if constexpr (kMasked) {
            // Published by the arrive below (release). The overlap instances take the block's valid count
            // in the flag word's upper bits (a prefix mask, as the text tail's) instead of mask words.
            const bool masked = n_valid < kBN;
            s_flags[st] = (masked ? kStageMasked : 0) | (kOverlap && j == last ? kStageLast : 0) |
                          (kOverlap ? static_cast<uint32_t>(n_valid) << kStageCountShift : 0u);
            if (!kOverlap && masked)
#pragma unroll
              for (int w = 0; w < Cfg::kMaskWords; ++w) {  // bit i of word w: key 32 w + i (a prefix of n_valid)
                const int32_t k = n_valid - 32 * w;
                s_valid[st][w] = k >= 32 ? 0xffffffffu : (k <= 0 ? 0u : (1u << k) - 1u);
              }
          }
          const int32_t key = static_cast<int32_t>(v.key_start);
          const uint32_t bar = full0 + 8 * st;
          mbar_arrive_expect_tx(bar, 2 * Cfg::kKvBytes);
#pragma unroll
          for (int x = 0; x < kBoxes; ++x) {
            tma_load_4d(sk + st * Cfg::kKvBytes + x * Cfg::kKvBox, &tm_k, bar, 64 * x, key, h, b);
            tma_load_4d(sv + st * Cfg::kKvBytes + x * Cfg::kKvBox, &tm_v, bar, 64 * x, key, h, b);
          }
          ++slot;
        }
        if constexpr (kMasked && !kOverlap) {
          // The end of the item's visits takes a stage of its own (the consumers release it too).
          const int st = slot % kStages;
          if (slot >= kStages) mbar_wait(empty0 + 8 * st, (slot / kStages - 1) & 1);
          s_flags[st] = kStageEnd;
          mbar_arrive(full0 + 8 * st);
          ++slot;
        }
        item = a.persistent ? s_next : a.items;
      }
    }
    return;
  }

  // ---- consumers ----
  setmaxnreg_inc<Cfg::kConsumerRegs>();
  const int cw = wg - 1;  // consumer warpgroup: query rows [64 cw, 64 cw + 64)
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int32_t seq_len = static_cast<int32_t>(g.seq_len());
  uint32_t slot = 0;  // K/V stages consumed so far, as the producer counts them
  if constexpr (kPingPong)
    if (cw == 1) turn_pass(1);  // the first turn is cw 0's
  for (int k = 0;; ++k) {
    const int qb = k % Cfg::kQBufs;
    consumer_wait<kOverlap>(q_full0 + 8 * qb, (k / Cfg::kQBufs) & 1);
    const HopperItem it = s_item[qb];
    if (it.bh < 0) break;
    if constexpr (kPingPong && !kOverlap) turn_wait(cw);  // this item's first turn (protocol at the template)
    const uint32_t sqb = sq + qb * Cfg::kQBytes;
    float o[kD / 2], s[kBN / 2];
#pragma unroll
    for (int i = 0; i < kD / 2; ++i) o[i] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    if constexpr (kOverlap) {
      // FA3's intra-warpgroup pipelining (protocol at the kernel's template). next_stage waits for the
      // item's visit j and says whether there is one (unmasked: j < it.visits; masked: none when the item
      // has no visit, else until the one the producer flagged kStageLast).
      bool ended = false;
      auto next_stage = [&](int j, int& st, uint32_t& flags) {
        if (kMasked ? (j == 0 ? it.visits == 0 : ended) : j >= it.visits) return false;
        st = slot % kStages;
        mbar_wait_spin(full0 + 8 * st, (slot / kStages) & 1);
        ++slot;
        if constexpr (kMasked) {
          flags = s_flags[st];
          ended = (flags & kStageLast) != 0;
        }
        return true;
      };
      // Block j's masks on S (a prefix of valid keys: the text tail, or the count in a masked stage's
      // flags), then its softmax.
      // `tail`: whether the block is the text tail (a bool, or std::true_type / std::false_type where it is
      // known at compile time: the loop's visits).
      auto softmax_block = [&](auto tail, uint32_t flags, float (&alpha)[2]) {
        if (kTail && tail) mask_tail<kBN>(s, a.tail_valid, lane);
        if (kMasked && (flags & kStageMasked))
          mask_tail<kBN>(s, static_cast<int32_t>(flags >> kStageCountShift), lane);
        online_softmax<kBN>(s, m, l, alpha, a.scale_log2);
      };
      auto issue_qk = [&](int st) {
        const uint32_t skj = sk + st * Cfg::kKvBytes;
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kD / 16; ++ks)
          wgmma_ss<T, kBN>(s, desc_q<Cfg>(sqb, cw, ks), desc_k<Cfg>(skj, ks), ks > 0);
        wgmma_commit();
      };
      auto issue_pv = [&](const uint32_t (&pa)[kBN / 16][4], int st) {
        const uint32_t svj = sv + st * Cfg::kKvBytes;
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBN / 16; ++kk) wgmma_rs<T, kD>(o, pa[kk], desc_v<Cfg>(svj, kk));
        wgmma_commit();
      };
      int cur = 0;
      uint32_t flags = 0;
      if (next_stage(0, cur, flags)) {
        if constexpr (kPingPong) turn_wait(cw);
        issue_qk(cur);
        if constexpr (kPingPong) turn_pass(cw);
        wgmma_wait<0>();
        fence_regs(s);
        float alpha[2];
        softmax_block(it.visits == 1, flags, alpha);  // O is zero: its alpha is not needed
        uint32_t pa[kBN / 16][4];
        pack_p<T, kBN>(pa, s);
        int nst = 0;
        // One visit j >= 1 (stage nst waited for). The text tail instance peels its last visit (the tail, with
        // the mask) off the loop, so the loop's own visits carry no tail check.
        auto visit = [&](auto tail_step) {
          if constexpr (kPingPong) turn_wait(cw);
          issue_qk(nst);             // S_j = Q K_j^T
          rescale_o<kD>(o, alpha);   // under it: O to block j - 1's maximum
          issue_pv(pa, cur);         // O += P_{j-1} V_{j-1}
          if constexpr (kPingPong) turn_pass(cw);
          wgmma_wait<1>();           // S_j done (groups complete in order)
          fence_regs(s);
          softmax_block(tail_step, flags, alpha);  // under the P V
          wgmma_wait<0>();
          fence_regs(o);
          fence_regs(pa);
          // The warp's reads of stage j - 1 are done: its wgmma groups have completed (the wait is
          // warp-converged), and its loads of the stage's flags fed block j - 1's softmax.
          if (lane == 0) mbar_arrive(empty0 + 8 * cur);
          pack_p<T, kBN>(pa, s);
          cur = nst;
        };
        if constexpr (kTail) {
          int j = 1;
          for (; j < it.visits - 1 && next_stage(j, nst, flags); ++j) visit(std::false_type{});
          if (j == it.visits - 1 && next_stage(j, nst, flags)) visit(std::true_type{});
        } else {
          for (int j = 1; next_stage(j, nst, flags); ++j) visit(std::false_type{});
        }
        rescale_o<kD>(o, alpha);
        if constexpr (kPingPong) turn_wait(cw);
        issue_pv(pa, cur);
        if constexpr (kPingPong) turn_pass(cw);
        wgmma_wait<0>();
        fence_regs(o);
        fence_regs(pa);
        if (lane == 0) mbar_arrive(empty0 + 8 * cur);
      }
    }
    // The other instances, one visit at a time. Unmasked: exactly it.visits stages. Masked: stages until
    // the one flagged kStageEnd.
    for (int j = 0; !kOverlap && (kMasked || j < it.visits); ++j) {
      const int st = slot % kStages;
      mbar_wait(full0 + 8 * st, (slot / kStages) & 1);
      ++slot;
      uint32_t flags = 0;
      if constexpr (kMasked) {
        flags = s_flags[st];
        if (flags & kStageEnd) {
          mbar_arrive(empty0 + 8 * st);
          break;
        }
      }
      const uint32_t skj = sk + st * Cfg::kKvBytes, svj = sv + st * Cfg::kKvBytes;

      // S = Q K^T (64 x BN per consumer warpgroup)
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks)
        wgmma_ss<T, kBN>(s, desc_q<Cfg>(sqb, cw, ks), desc_k<Cfg>(skj, ks), ks > 0);
      wgmma_commit();
      // Ping-pong: Q K^T is issued, the turn passes to the other warpgroup (its P V and next Q K^T
      // queue behind this Q K^T while this warpgroup runs the softmax).
      if constexpr (kPingPong) turn_pass(cw);
      wgmma_wait<0>();
      fence_regs(s);

      // kTail instance (variant "tail"): the item's last visit is the text tail.
      if constexpr (kTail)
        if (j == it.visits - 1) mask_tail<kBN>(s, a.tail_valid, lane);
      // Element masks, only on blocks the producer flagged (padded slots, the text tail).
      if (kMasked && (flags & kStageMasked)) mask_words<kBN>(s, s_valid[st], lane);
      float alpha[2];
      online_softmax<kBN>(s, m, l, alpha, a.scale_log2);
      rescale_o<kD>(o, alpha);
      // O += P V: P from registers, V from shared memory.
      uint32_t pa[kBN / 16][4];
      pack_p<T, kBN>(pa, s);
      // Ping-pong: wait for this warpgroup's turn (the other has issued its Q K^T), which lasts
      // through this P V and the next visit's Q K^T.
      if constexpr (kPingPong) turn_wait(cw);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk) wgmma_rs<T, kD>(o, pa[kk], desc_v<Cfg>(svj, kk));
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(o);
      mbar_arrive(empty0 + 8 * st);  // this thread's reads of the stage are done
    }
    // Ping-pong: this warpgroup's last turn of the item is over (its last P V has completed).
    if constexpr (kPingPong && !kOverlap) turn_pass(cw);
    mbar_arrive(q_empty0 + 8 * qb);  // the item's last Q K^T has completed: the buffer is free

    // Epilogue: normalize and store pairs straight from the accumulator fragment.
    const int b = it.bh / a.heads, h = it.bh % a.heads;
    T* ob = a.o + b * a.os[0] + h * a.os[1];
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      float sum = l[rh];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inv = sum > 0.f ? 1.f / sum : 0.f;
      const int32_t q_slot = it.q_start + cw * 64 + warp * 16 + rh * 8 + lane / 4;
      if (q_slot >= seq_len) continue;
      const int64_t row = a.o_row_map ? static_cast<int64_t>(a.o_row_map[q_slot]) : q_slot;
      if (row < 0) continue;
      T* orow = ob + row * a.os[2] + (lane % 4) * 2;
#pragma unroll
      for (int n = 0; n < kD / 8; ++n)
        *reinterpret_cast<uint32_t*>(orow + 8 * n) = pack2<T>(o[4 * n + 2 * rh] * inv, o[4 * n + 2 * rh + 1] * inv);
    }
  }
#endif  // STAVID_HOPPER_DEVICE
}

// ---- host side ----

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled through the runtime's driver entry point (no link against libcuda).
EncodeTiledFn encode_tiled_fn() {
  static EncodeTiledFn fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult qres{};
    STAVID_CUDA_CHECK(
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &qres));
    STAVID_CHECK_CODE(qres == cudaDriverEntryPointSuccess && ptr, ErrorCode::Unsupported,
                      "STA Hopper: the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<EncodeTiledFn>(ptr);
  }();
  return fn;
}

// A 4-D map over [batch, heads, seq, d] 16-bit values with element strides `st` (batch, head, seq),
// boxes of {64 cols, rows, 1, 1} with the 128-byte swizzle; out-of-range rows read as zero.
CUtensorMap make_map(const void* ptr, const int64_t st[3], int64_t seq, int32_t heads, int32_t batch, int32_t d,
                     int32_t rows, DType dtype) {
  CUtensorMap map;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(d), static_cast<cuuint64_t>(seq),
                              static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(batch)};
  // A size-1 axis may carry any stride (even 0); the map needs a positive multiple of 16 bytes.
  auto bytes = [](int64_t s) { return static_cast<cuuint64_t>(s > 0 ? s * 2 : 16); };
  const cuuint64_t strides[3] = {bytes(st[2]), bytes(st[1]), bytes(st[0])};
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(rows), 1, 1};
  const cuuint32_t estr[4] = {1, 1, 1, 1};
  const CUtensorMapDataType type =
      dtype == DType::F16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const CUresult r = encode_tiled_fn()(&map, type, 4, const_cast<void*>(ptr), dims,
                                       strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                       CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                       CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  STAVID_CHECK_CODE(r == CUDA_SUCCESS, ErrorCode::Unsupported, "STA Hopper: cuTensorMapEncodeTiled failed (",
                    static_cast<int>(r), ") for strides ", st[0], ", ", st[1], ", ", st[2]);
  return map;
}

// The persistent grid's work counter of one stream on the current device (zeroed before each launch
// on that stream; launches on one stream run in order, so one counter per stream suffices).
int32_t* persistent_counter(cudaStream_t stream) {
  static std::mutex mu;
  static std::map<std::pair<int, cudaStream_t>, int32_t*> counters;
  int device = 0;
  STAVID_CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mu);
  int32_t*& c = counters[{device, stream}];
  if (!c) STAVID_CUDA_CHECK(cudaMalloc(&c, sizeof(int32_t)));
  return c;
}

// Launches one kernel instance, with the variant's options, for params the selector accepted.
template <typename Cfg, bool kMasked, bool kPingPong, bool kTail = false, bool kOverlap = false>
void launch_hopper(const StaAttentionParams& p, const StaHopperVariant& var, cudaStream_t stream,
                   int32_t tail_valid = 0) {
  using T = typename Cfg::Type;
  auto kernel = sta_hopper_kernel<Cfg, kMasked, kPingPong, kTail, kOverlap>;
  static std::atomic<uint64_t> configured{0};
  cuda::once_per_device(configured, p.device.index, [&] {
    STAVID_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes));
    // All of the unified L1 as shared memory, so kCtasPerSm CTAs fit on an SM.
    STAVID_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  });
  const int64_t seq = p.geom.seq_len();
  const CUtensorMap tq = make_map(p.q, p.q_stride, seq, p.heads, p.batch, Cfg::kD, Cfg::kBM, p.dtype);
  const CUtensorMap tk = make_map(p.k, p.k_stride, seq, p.heads, p.batch, Cfg::kD, Cfg::kBN, p.dtype);
  const CUtensorMap tv = make_map(p.v, p.v_stride, seq, p.heads, p.batch, Cfg::kD, Cfg::kBN, p.dtype);
  HopperArgs<T> a{};
  a.o = static_cast<T*>(p.o);
  for (int i = 0; i < 3; ++i) a.os[i] = p.o_stride[i];
  a.g = p.geom;
  a.windows = p.windows;
  a.o_row_map = p.o_row_map;
  a.heads = p.heads;
  a.batch_heads = p.batch * p.heads;
  const int64_t img_qblocks = p.geom.img_slots / Cfg::kBM;
  const int64_t text_qblocks = (p.geom.text_slots + Cfg::kBM - 1) / Cfg::kBM;
  const int64_t items = (img_qblocks + text_qblocks) * p.batch * p.heads;
  STAVID_CHECK(items < (int64_t(1) << 31), "STA Hopper: ", items, " work items exceed one launch's grid");
  a.img_qblocks = static_cast<int32_t>(img_qblocks);
  a.text_qblocks = static_cast<int32_t>(text_qblocks);
  a.items = static_cast<int32_t>(items);
  const float scale = p.softmax_scale > 0.f ? p.softmax_scale : 1.f / sqrtf(static_cast<float>(p.head_dim));
  a.scale_log2 = scale * 1.4426950408889634f;
  // Every variant after "lean" drops empty blocks (var is resolved: never "auto" here).
  a.skip_empty = var.kind != StaHopperVariant::Masked && var.kind != StaHopperVariant::Lean;
  a.persistent = var.kind == StaHopperVariant::Persist;
  a.tail_valid = kTail ? tail_valid : 0;
  int64_t ctas = items;
  if (a.persistent) {
    int device = 0, sms = 0;
    STAVID_CUDA_CHECK(cudaGetDevice(&device));
    STAVID_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    ctas = std::min<int64_t>(items, static_cast<int64_t>(sms) * Cfg::kCtasPerSm);
    if (var.max_ctas > 0) ctas = std::min<int64_t>(ctas, var.max_ctas);
    a.counter = persistent_counter(stream);
    STAVID_CUDA_CHECK(cudaMemsetAsync(a.counter, 0, sizeof(int32_t), stream));
    // Longest first: batch x heads by decreasing visit count (every query tile of a head sees the
    // same number of key tiles), stable, so equal heads keep their order.
    if (p.host_windows && a.batch_heads <= kHopperMaxOrdered) {
      std::vector<int64_t> tiles(p.heads);
      for (int h = 0; h < p.heads; ++h) {
        const StaWindow w = p.host_windows[h];
        const int32_t wd[3] = {w.t, w.h, w.w};
        tiles[h] = 1;
        for (int d = 0; d < 3; ++d) tiles[h] *= std::min(2 * (wd[d] / 2) + 1, p.geom.grid[d]);
      }
      std::vector<int16_t> order(a.batch_heads);
      for (int i = 0; i < a.batch_heads; ++i) order[i] = static_cast<int16_t>(i);
      std::stable_sort(order.begin(), order.end(),
                       [&](int16_t x, int16_t y) { return tiles[x % p.heads] > tiles[y % p.heads]; });
      std::copy(order.begin(), order.end(), a.bh_order);
      a.ordered = true;
    }
  }
  kernel<<<static_cast<unsigned>(ctas), Cfg::kThreads, Cfg::kSmemBytes, stream>>>(tq, tk, tv, a);
  STAVID_CUDA_CHECK_LAUNCH();
}

// The unmasked instance unless the variant is "masked" or a visit needs a mask; with "tail" on 128-row
// CTAs, the kTail unmasked instance when the text tail is the only masked visit (64-row CTAs run "tail"
// as "skip": the tail mask cost their 128-register consumers a spill); with "overlap" on 128-row CTAs
// (3-stage ring), the overlapped consumers of the same three kinds (unmasked, text tail, masked).
template <typename Cfg, bool kPingPong = false>
void launch_hopper_masking(const StaAttentionParams& p, const StaHopperVariant& var, cudaStream_t stream) {
  if constexpr (Cfg::kConsumers == 2 && Cfg::kStages == 3) {
    if (var.kind == StaHopperVariant::Overlap || var.kind == StaHopperVariant::OverlapPingPong ||
        var.kind == StaHopperVariant::OverlapPingPongMasked) {
      const bool force_masked = var.kind == StaHopperVariant::OverlapPingPongMasked;
      const int32_t tail = force_masked ? 0 : sta_hopper_text_tail_only(p.geom, Cfg::kBN);
      if (tail)
        launch_hopper<Cfg, false, kPingPong, true, true>(p, var, stream, tail);
      else if (force_masked || sta_hopper_needs_masks(p.geom, Cfg::kBN))
        launch_hopper<Cfg, true, kPingPong, false, true>(p, var, stream);
      else
        launch_hopper<Cfg, false, kPingPong, false, true>(p, var, stream);
      return;
    }
  }
  if constexpr (Cfg::kConsumers == 2 && Cfg::kStages == 2 && !kPingPong) {
    if (var.kind == StaHopperVariant::Tail) {
      if (const int32_t tail = sta_hopper_text_tail_only(p.geom, Cfg::kBN)) {
        launch_hopper<Cfg, false, false, true>(p, var, stream, tail);
        return;
      }
    }
  }
  if (var.kind == StaHopperVariant::Masked || sta_hopper_needs_masks(p.geom, Cfg::kBN))
    launch_hopper<Cfg, true, kPingPong>(p, var, stream);
  else
    launch_hopper<Cfg, false, kPingPong>(p, var, stream);
}

// 128-row CTAs for tiles of a multiple of 128 tokens (a 3-stage ring for the variants "deep" and
// "overlap", the consumers' ping-pong for "pingpong", both for "pingpong-deep" and "overlap-pp"), 64-row
// CTAs (two per SM, whose shared memory leaves no room for a third stage; one consumer warpgroup, so the
// ping-pong and overlap variants run them as "skip") otherwise.
template <typename T, int kD>
void launch_hopper_for(const StaAttentionParams& p, StaHopperVariant var, cudaStream_t stream) {
  using Rows64 = HopperCfg<T, kD, 1, 64>;
  using Rows128 = HopperCfg<T, kD, 2, 128>;
  static_assert(Rows64::kBN == kHopperKeyBlock64 && Rows128::kBN == kHopperKeyBlock128);
  var = sta_hopper_resolve(p, var);
  if (p.geom.tile_tokens % 128 != 0) launch_hopper_masking<Rows64>(p, var, stream);
  else if (var.kind == StaHopperVariant::Deep || var.kind == StaHopperVariant::Overlap)
    launch_hopper_masking<HopperCfg<T, kD, 2, 128, 3>>(p, var, stream);
  else if (var.kind == StaHopperVariant::PingPong) launch_hopper_masking<Rows128, true>(p, var, stream);
  else if (var.kind == StaHopperVariant::PingPongDeep || var.kind == StaHopperVariant::OverlapPingPong ||
           var.kind == StaHopperVariant::OverlapPingPongMasked)
    launch_hopper_masking<HopperCfg<T, kD, 2, 128, 3>, true>(p, var, stream);
  else launch_hopper_masking<Rows128>(p, var, stream);
}

template <typename T>
void launch_hopper_dim(const StaAttentionParams& p, const StaHopperVariant& var, cudaStream_t stream) {
  if (p.head_dim == 128) launch_hopper_for<T, 128>(p, var, stream);
  else launch_hopper_for<T, 64>(p, var, stream);
}

}  // namespace

bool sta_hopper_device(int device) {
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return major == 9 && minor == 0;  // sm_90a code runs on exactly compute capability 9.0
}

void sta_attention_hopper(const StaAttentionParams& p, CudaStream stream) {
  STAVID_CHECK_CODE(sta_hopper_supports(p), ErrorCode::Unsupported,
                    "STA Hopper: this kernel takes bf16 or fp16, head_dim 64 or 128 and tiles of a multiple of "
                    "64 tokens");
  const StaHopperVariant var = sta_hopper_variant();
  if (p.dtype == DType::F16) launch_hopper_dim<__half>(p, var, stream);
  else launch_hopper_dim<__nv_bfloat16>(p, var, stream);
}

}  // namespace stavid::detail
