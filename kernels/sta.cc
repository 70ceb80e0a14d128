// STA host side: geometry construction, the kernel selector, dispatch, FLOP accounting.
#include "kernels/sta.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/core/error.h"
#include "kernels/core/observer.h"

namespace stavid {

StaGeometry make_sta_geometry(const int32_t canvas[3], const int32_t tile[3], int32_t text_slots,
                              int32_t text_valid) {
  StaGeometry g;
  int64_t tiles = 1, tile_tokens = 1;
  for (int d = 0; d < 3; ++d) {
    STAVID_CHECK(canvas[d] >= 0, "STA: canvas axis ", d, " is negative (", canvas[d], ")");
    STAVID_CHECK(tile[d] >= 1, "STA: tile axis ", d, " must be >= 1, got ", tile[d]);
    g.canvas[d] = canvas[d];
    g.tile[d] = tile[d];
    g.grid[d] = (canvas[d] + tile[d] - 1) / tile[d];
    tiles *= g.grid[d];
    tile_tokens *= tile[d];
  }
  STAVID_CHECK(tile_tokens <= (1 << 20), "STA: tile of ", tile_tokens, " tokens is too large");
  STAVID_CHECK(tiles * tile_tokens < (int64_t(1) << 31), "STA: canvas too large (", tiles * tile_tokens, " slots)");
  STAVID_CHECK(text_slots >= 0 && text_valid >= 0 && text_valid <= text_slots, "STA: text_valid ", text_valid,
               " must be within [0, text_slots=", text_slots, "]");
  g.tile_tokens = static_cast<int32_t>(tile_tokens);
  g.num_tiles = static_cast<int32_t>(tiles);
  g.img_slots = tiles * tile_tokens;
  g.text_slots = text_slots;
  g.text_valid = text_valid;
  return g;
}

StaGeometry make_dense_geometry(int64_t n, int32_t block, int32_t text_slots, int32_t text_valid) {
  STAVID_CHECK(n >= 0 && n < (int64_t(1) << 31), "dense attention: bad length ", n);
  const int32_t canvas[3] = {n > 0 ? 1 : 0, 1, static_cast<int32_t>(n)};
  const int32_t tile[3] = {1, 1, block};
  return make_sta_geometry(canvas, tile, text_slots, text_valid);
}

double sta_kept_fraction(const StaGeometry& g, StaWindow w) {
  const int32_t wd[3] = {w.t, w.h, w.w};
  double kept = 1.0;
  for (int d = 0; d < 3; ++d) {
    if (g.grid[d] == 0) return 0.0;
    const int32_t r = wd[d] / 2;
    kept *= static_cast<double>(std::min(2 * r + 1, g.grid[d])) / g.grid[d];
  }
  return kept;
}

double sta_effective_flops(const StaAttentionParams& p, const StaWindow* host_windows) {
  const double n = static_cast<double>(p.geom.img_tokens());
  double kept_sum = 0;
  for (int h = 0; h < p.heads; ++h) kept_sum += sta_kept_fraction(p.geom, host_windows[h]);
  return 4.0 * n * n * p.head_dim * kept_sum * p.batch;
}

const char* sta_kernel_name(StaKernel k) {
  switch (k) {
    case StaKernel::Cpu: return "cpu";
    case StaKernel::PortableM128: return "portable_m128";
    case StaKernel::PortableM64: return "portable_m64";
    case StaKernel::Hopper: return "hopper";
  }
  return "?";
}

namespace {
bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

// The Hopper kernel is the default on compute capability 9.0; STAVID_STA_HOPPER=0 opts out (the
// portable kernels then run there too, e.g. to compare them).
[[maybe_unused]] bool hopper_enabled() {
  const char* v = std::getenv("STAVID_STA_HOPPER");
  return !(v && std::strcmp(v, "0") == 0);
}
}  // namespace

namespace detail {
bool sta_hopper_supports(const StaAttentionParams& p) {
  // bf16 / fp16, d = 64 / 128, query blocks of 128 rows (tile_tokens % 128 == 0) or 64 rows
  // (tile_tokens % 64 == 0) that each lie in one tile or in the text. Windows, padded canvases and
  // text slots are all handled (element masks on the blocks the visit list flags).
  return (p.dtype == DType::BF16 || p.dtype == DType::F16) && (p.head_dim == 64 || p.head_dim == 128) &&
         p.geom.tile_tokens % 64 == 0;
}

StaHopperVariant sta_hopper_variant() {
  const char* env = std::getenv("STAVID_STA_HOPPER_VARIANT");
  StaHopperVariant v;
  if (!env || !*env) return v;
  const std::string s = env;
  const std::string name = s.substr(0, s.find(':'));
  if (name == "masked") v.kind = StaHopperVariant::Masked;
  else if (name == "lean") v.kind = StaHopperVariant::Lean;
  else if (name == "skip") v.kind = StaHopperVariant::Skip;
  else if (name == "persist") v.kind = StaHopperVariant::Persist;
  else if (name == "deep") v.kind = StaHopperVariant::Deep;
  else if (name == "auto") v.kind = StaHopperVariant::Auto;
  else if (name == "pingpong") v.kind = StaHopperVariant::PingPong;
  else if (name == "pingpong-deep") v.kind = StaHopperVariant::PingPongDeep;
  else if (name == "tail") v.kind = StaHopperVariant::Tail;
  else if (name == "overlap") v.kind = StaHopperVariant::Overlap;
  else if (name == "overlap-pp") v.kind = StaHopperVariant::OverlapPingPong;
  else if (name == "overlap-pp-masked") v.kind = StaHopperVariant::OverlapPingPongMasked;
  else
    STAVID_THROW(ErrorCode::InvalidArgument, "STAVID_STA_HOPPER_VARIANT=", s,
                 ": expected auto, masked, lean, skip, persist, persist:N, deep, pingpong, pingpong-deep, tail, "
                 "overlap, overlap-pp or overlap-pp-masked");
  if (name.size() < s.size()) {
    const std::string cap = s.substr(name.size() + 1);
    char* end = nullptr;
    const long n = std::strtol(cap.c_str(), &end, 10);
    STAVID_CHECK(v.kind == StaHopperVariant::Persist && !cap.empty() && *end == '\0' && n >= 1 && n <= (1 << 20),
                 "STAVID_STA_HOPPER_VARIANT=", s, ": only persist takes a CTA cap, persist:N with N >= 1");
    v.max_ctas = static_cast<int32_t>(n);
  }
  return v;
}

namespace {
// Whether some tile holds padded slots (the tile does not divide the canvas on some axis).
bool canvas_padded(const StaGeometry& g) {
  for (int d = 0; d < 3; ++d)
    if (g.canvas[d] % g.tile[d] != 0) return true;
  return false;
}
}  // namespace

bool sta_hopper_needs_masks(const StaGeometry& g, int32_t block_n) {
  return canvas_padded(g) || g.text_valid % block_n != 0;
}

int32_t sta_hopper_text_tail_only(const StaGeometry& g, int32_t block_n) {
  return canvas_padded(g) ? 0 : g.text_valid % block_n;
}

// "auto" resolves to what measured fastest on launches of each kind (docs/perf-notes.md, "Variants
// measured, session 4"): masked launches on 128-row CTAs gain from the 3-stage ring (720p 36.7 ->
// 35.9 ms, text 29.9-30.3 -> 29.0-30.1 ms) that costs unmasked dense launches 0.8%; the persistent
// longest-first grid balances heads with different windows (mixed 44.6 vs 45.1 ms) but costs 8% on
// long uniform launches (dense 312.6 vs 288.5 ms); "skip" is the best, or within run-to-run noise of
// it, everywhere else. Session 8 (device run 2): launches whose only masked visit is the text tail run
// "tail" (paper shape, 256 text slots with 200 valid: 28.58 ms against deep's 29.45 and skip's 29.70).
// Session 9 (device run 1): every launch on 128-row CTAs runs "overlap-pp", the fastest on every case
// timed (two interleaved passes, ms, against the best other variant): dense 262.8 (deep 288.5), (5,5,5)
// 110.3 (deep 120.9), (3,3,3) 24.2 (deep 26.2), text 26.5 (tail 28.1), 720p 6x8x8 26.5 (skip 27.7),
// mixed windows 41.6 (deep 45.1).
StaHopperVariant sta_hopper_resolve(const StaAttentionParams& p, StaHopperVariant v) {
  if (v.kind != StaHopperVariant::Auto) return v;
  StaHopperVariant r;
  if (p.geom.tile_tokens % 128 == 0) {  // 128-row CTAs
    r.kind = StaHopperVariant::OverlapPingPong;
    return r;
  }
  bool differ = false;
  for (int h = 1; p.host_windows && h < p.heads && !differ; ++h) {
    const StaWindow a = p.host_windows[0], b = p.host_windows[h];
    differ = a.t != b.t || a.h != b.h || a.w != b.w;
  }
  r.kind = differ ? StaHopperVariant::Persist : StaHopperVariant::Skip;
  return r;
}

std::string sta_hopper_variant_name(const StaHopperVariant& v) {
  switch (v.kind) {
    case StaHopperVariant::Masked: return "masked";
    case StaHopperVariant::Lean: return "lean";
    case StaHopperVariant::Skip: return "skip";
    case StaHopperVariant::Persist:
      return v.max_ctas > 0 ? "persist:" + std::to_string(v.max_ctas) : std::string("persist");
    case StaHopperVariant::Deep: return "deep";
    case StaHopperVariant::Auto: return "auto";
    case StaHopperVariant::PingPong: return "pingpong";
    case StaHopperVariant::PingPongDeep: return "pingpong-deep";
    case StaHopperVariant::Tail: return "tail";
    case StaHopperVariant::Overlap: return "overlap";
    case StaHopperVariant::OverlapPingPong: return "overlap-pp";
    case StaHopperVariant::OverlapPingPongMasked: return "overlap-pp-masked";
  }
  return "?";
}
}  // namespace detail

StaKernel select_sta_kernel(const StaAttentionParams& p) {
  const StaGeometry& g = p.geom;
  STAVID_CHECK(p.q && p.k && p.v && p.o, "STA: null Q, K, V or O pointer");
  STAVID_CHECK(p.windows, "STA: no windows array (one window per head is required)");
  STAVID_CHECK(p.batch >= 1 && p.heads >= 1, "STA: batch ", p.batch, " and heads ", p.heads, " must be >= 1");
  STAVID_CHECK(p.head_dim >= 1, "STA: head_dim must be >= 1, got ", p.head_dim);
  STAVID_CHECK(g.tile_tokens >= 1 && g.img_slots == static_cast<int64_t>(g.num_tiles) * g.tile_tokens,
               "STA: geometry not built by make_sta_geometry");
  if (p.host_windows) {
    for (int h = 0; h < p.heads; ++h) {
      const StaWindow w = p.host_windows[h];
      STAVID_CHECK(w.t >= 1 && w.h >= 1 && w.w >= 1, "STA: window of head ", h, " is (", w.t, ", ", w.h, ", ",
                   w.w, "); every axis must be >= 1 tile");
    }
  }
  if (p.device.is_cpu()) return StaKernel::Cpu;

  STAVID_CHECK_CODE(p.dtype == DType::BF16 || p.dtype == DType::F16, ErrorCode::Unsupported,
                    "STA on CUDA takes bf16 or f16, got ", dtype_name(p.dtype));
  STAVID_CHECK_CODE(p.head_dim == 64 || p.head_dim == 128, ErrorCode::Unsupported,
                    "STA on CUDA supports head_dim 64 or 128, got ", p.head_dim);
  STAVID_CHECK(g.tile_tokens % 64 == 0, "STA on CUDA needs a tile whose token count is a multiple of 64; tile (",
               g.tile[0], ", ", g.tile[1], ", ", g.tile[2], ") has ", g.tile_tokens);
  STAVID_CHECK(aligned16(p.q) && aligned16(p.k) && aligned16(p.v) && aligned16(p.o),
               "STA: Q, K, V and O must be 16-byte aligned");
  for (const int64_t* s : {p.q_stride, p.k_stride, p.v_stride, p.o_stride})
    for (int i = 0; i < 3; ++i)
      STAVID_CHECK(s[i] % 8 == 0, "STA: strides must be multiples of 8 elements (16 bytes), got ", s[i]);
  // The kernels address rows within one head with 32-bit offsets (one query block of slack).
  for (const int64_t* s : {p.q_stride, p.k_stride, p.v_stride})
    STAVID_CHECK_CODE((g.seq_len() + 128) * s[2] < (int64_t(1) << 31), ErrorCode::Unsupported, "STA on CUDA: ",
                      g.seq_len(), " slots x seq stride ", s[2], " elements exceed 2^31 per head");
#if defined(STAVID_WITH_CUDA)
  if (hopper_enabled() && detail::sta_hopper_supports(p) && detail::sta_hopper_device(p.device.index))
    return StaKernel::Hopper;
#endif
  return g.tile_tokens % 128 == 0 ? StaKernel::PortableM128 : StaKernel::PortableM64;
}

void sta_attention(const StaAttentionParams& p, const Stream& s) {
  STAVID_CHECK(s.device == p.device, "STA: params on ", p.device.str(), ", stream on ", s.device.str());
  if (p.geom.seq_len() == 0) return;
  const StaKernel k = select_sta_kernel(p);
  const ObservedDispatch observed("sta_attention", &p, s);
  switch (k) {
    case StaKernel::Cpu:
      detail::sta_attention_cpu(p);
      return;
    case StaKernel::PortableM128:
    case StaKernel::PortableM64:
#if defined(STAVID_WITH_CUDA)
      detail::sta_attention_cuda(p, k, s.cuda);
      return;
#else
      STAVID_THROW(ErrorCode::Unsupported, "STA: this build has no CUDA backend");
#endif
    case StaKernel::Hopper:
#if defined(STAVID_WITH_CUDA)
      detail::sta_attention_hopper(p, s.cuda);
      return;
#else
      STAVID_THROW(ErrorCode::Unsupported, "STA: this build has no CUDA backend");
#endif
  }
}

void sta_permute(const StaPermuteParams& p, const Stream& s) {
  const ObservedDispatch observed("sta_permute", &p, s);
  STAVID_CHECK(s.device == p.device, "sta_permute: params on ", p.device.str(), ", stream on ", s.device.str());
  STAVID_CHECK(p.src && p.dst, "sta_permute: null pointer");
  STAVID_CHECK(p.batch >= 1 && p.row_elems >= 1, "sta_permute: bad batch or row size");
  STAVID_CHECK(p.src_row_stride >= p.row_elems && p.dst_row_stride >= p.row_elems,
               "sta_permute: row stride smaller than the row");
  if (p.device.is_cpu()) {
    detail::sta_permute_cpu(p);
    return;
  }
#if defined(STAVID_WITH_CUDA)
  detail::sta_permute_cuda(p, s.cuda);
#else
  STAVID_THROW(ErrorCode::Unsupported, "sta_permute: this build has no CUDA backend");
#endif
}

}  // namespace stavid
