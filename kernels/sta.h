// Sliding Tile Attention (STA): the geometry, the one tile-visit function, the element predicate
// (the test oracle), and the attention params struct. shared/spec/sta.md sections 2-4.
//
// Sequence layout: [image tokens in tiled order | text slots].
// - Canvas (T, H, W) tokens, tile (tt, th, tw), grid n_d = ceil(canvas_d / tile_d): a canvas that the
//   tile does not divide is padded up to whole tiles. Tiled slot of a token:
//     tile_id * tile_tokens + local_id, tile_id = ((t/tt)*nH + h/th)*nW + w/tw,
//     local_id = ((t%tt)*th + h%th)*tw + w%tw.
//   Padded slots (coordinates outside the canvas) are never visible as keys; their outputs are
//   dropped by untile.
// - text_slots text positions follow the img_slots = num_tiles * tile_tokens image slots; the first
//   text_valid of them are real (right padding).
// Visibility (query q, key k):
// - image q -> image k: k real and its tile within q's window: per axis, r = w/2,
//   c = clamp(q_tile, r, n-1-r), |c - k_tile| <= r (the whole axis when 2r+1 >= n);
// - image q -> text k: k < text_valid;   text q -> any k: k real image, or k < text_valid.
//
// Everything marked STA_HD is one definition used by the CPU reference, the CUDA kernels and tests.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/core/device.h"
#include "kernels/core/dtype.h"

#if defined(__CUDACC__)
#define STA_HD __host__ __device__ __forceinline__
#else
#define STA_HD inline
#endif

namespace stavid {

// A window in tiles, per axis (t, h, w). Each entry >= 1; values >= the grid mean the whole axis.
struct StaWindow {
  int32_t t = 1, h = 1, w = 1;
};

struct StaGeometry {
  int32_t canvas[3] = {0, 0, 0};  // T, H, W in tokens
  int32_t tile[3] = {1, 1, 1};    // tt, th, tw in tokens
  int32_t grid[3] = {0, 0, 0};    // tiles per axis (canvas padded up to whole tiles)
  int32_t tile_tokens = 1;
  int32_t num_tiles = 0;
  int64_t img_slots = 0;  // num_tiles * tile_tokens (>= T*H*W)
  int32_t text_slots = 0;
  int32_t text_valid = 0;

  STA_HD int64_t seq_len() const { return img_slots + text_slots; }
  STA_HD int64_t img_tokens() const { return static_cast<int64_t>(canvas[0]) * canvas[1] * canvas[2]; }
};

// Builds and validates a geometry (throws stavid::Error on non-positive sizes or text_valid outside
// [0, text_slots]). A canvas of 0 frames is allowed: text-only attention.
StaGeometry make_sta_geometry(const int32_t canvas[3], const int32_t tile[3], int32_t text_slots,
                              int32_t text_valid);
// Same, with a plain 1-D sequence: canvas (1, 1, n), tile (1, 1, block): dense attention over n
// tokens padded up to whole blocks.
StaGeometry make_dense_geometry(int64_t n, int32_t block, int32_t text_slots, int32_t text_valid);

// Key tiles visible from one query tile: a box [lo, lo + cnt) per axis, in tile coordinates.
struct StaTileRange {
  int32_t lo[3];
  int32_t cnt[3];
  STA_HD int32_t count() const { return cnt[0] * cnt[1] * cnt[2]; }
};

// Per-axis window range for a query tile coordinate q on an axis of n tiles.
STA_HD void sta_axis_range(int32_t q, int32_t n, int32_t w, int32_t* lo, int32_t* cnt) {
  const int32_t r = w / 2;
  if (2 * r + 1 >= n) {
    *lo = 0;
    *cnt = n;
    return;
  }
  int32_t c = q < r ? r : q;
  if (c > n - 1 - r) c = n - 1 - r;
  *lo = c - r;
  *cnt = 2 * r + 1;
}

STA_HD void sta_tile_coords(const StaGeometry& g, int32_t tile_id, int32_t* ct, int32_t* ch, int32_t* cw) {
  *cw = tile_id % g.grid[2];
  *ch = (tile_id / g.grid[2]) % g.grid[1];
  *ct = tile_id / (g.grid[2] * g.grid[1]);
}

// THE visit list, part 1: the key tiles an image query tile sees.
STA_HD StaTileRange sta_key_tiles(const StaGeometry& g, StaWindow w, int32_t q_tile) {
  int32_t qc[3];
  sta_tile_coords(g, q_tile, &qc[0], &qc[1], &qc[2]);
  const int32_t wd[3] = {w.t, w.h, w.w};
  StaTileRange r;
  for (int d = 0; d < 3; ++d) sta_axis_range(qc[d], g.grid[d], wd[d], &r.lo[d], &r.cnt[d]);
  return r;
}

// Every tile (text queries see all image keys).
STA_HD StaTileRange sta_all_tiles(const StaGeometry& g) {
  StaTileRange r;
  for (int d = 0; d < 3; ++d) {
    r.lo[d] = 0;
    r.cnt[d] = g.grid[d];
  }
  return r;
}

// The k-th tile of a range, raster order (t, h, w), so runs along w are adjacent in memory.
STA_HD int32_t sta_range_tile(const StaGeometry& g, const StaTileRange& r, int32_t k) {
  const int32_t kw = k % r.cnt[2];
  const int32_t kh = (k / r.cnt[2]) % r.cnt[1];
  const int32_t kt = k / (r.cnt[2] * r.cnt[1]);
  return ((r.lo[0] + kt) * g.grid[1] + (r.lo[1] + kh)) * g.grid[2] + (r.lo[2] + kw);
}

// Whether a tile holds padded positions (the canvas does not fill it).
STA_HD bool sta_tile_has_padding(const StaGeometry& g, int32_t tile_id) {
  int32_t c[3];
  sta_tile_coords(g, tile_id, &c[0], &c[1], &c[2]);
  for (int d = 0; d < 3; ++d)
    if ((c[d] + 1) * g.tile[d] > g.canvas[d]) return true;
  return false;
}

// Canvas extent of a tile along each axis: tile[d] for an inner tile, less for the last tile of an
// axis the canvas does not fill (at least 1 unless the canvas is empty on that axis).
STA_HD void sta_tile_extent(const StaGeometry& g, const int32_t c[3], int32_t v[3]) {
  for (int d = 0; d < 3; ++d) {
    const int32_t left = g.canvas[d] - c[d] * g.tile[d];
    v[d] = left < g.tile[d] ? (left > 0 ? left : 0) : g.tile[d];
  }
}

// In-canvas tokens of a tile (tile_tokens unless the tile is partial): its first slots (see below).
STA_HD int32_t sta_tile_valid_tokens(const StaGeometry& g, int32_t tile_id) {
  int32_t c[3], v[3];
  sta_tile_coords(g, tile_id, &c[0], &c[1], &c[2]);
  sta_tile_extent(g, c, v);
  return v[0] * v[1] * v[2];
}

// In-tile order (spec section 2, extended to padded tiles): the tile's in-canvas tokens first, raster
// ordered (t, h, w) over the tile's canvas extent v, then its padded slots. For a full tile v = tile, so
// this is the spec's local_id; for a partial tile the padding fills the tile's last slots, hence whole
// key / query blocks that kernels can skip instead of masking padding spread through every block.
// Canvas coordinates of an image slot; false for a padded slot (coordinates then unspecified).
STA_HD bool sta_slot_coords(const StaGeometry& g, int64_t slot, int32_t* t, int32_t* h, int32_t* w) {
  const int32_t tile_id = static_cast<int32_t>(slot / g.tile_tokens);
  const int32_t local = static_cast<int32_t>(slot % g.tile_tokens);
  int32_t c[3], v[3];
  sta_tile_coords(g, tile_id, &c[0], &c[1], &c[2]);
  sta_tile_extent(g, c, v);
  const int32_t plane = v[1] * v[2];
  if (local >= v[0] * plane) {
    *t = *h = *w = -1;
    return false;
  }
  *w = c[2] * g.tile[2] + local % v[2];
  *h = c[1] * g.tile[1] + (local / v[2]) % v[1];
  *t = c[0] * g.tile[0] + local / plane;
  return true;
}

// Whether a slot holds a real key: an in-canvas image slot or a valid text slot.
STA_HD bool sta_key_valid(const StaGeometry& g, int64_t slot) {
  if (slot >= g.img_slots) return slot - g.img_slots < g.text_valid;
  // In-canvas tokens come first in a tile.
  return slot % g.tile_tokens < sta_tile_valid_tokens(g, static_cast<int32_t>(slot / g.tile_tokens));
}

// Valid slots in [start, start + n) for a range inside one tile or inside the text slots (every kernel
// block: tile_tokens is a multiple of the block, blocks start on block boundaries). Padding comes last in a
// tile and the text tail is padding too, so the valid slots are the range's first ones: the count is the
// whole mask (== the number of slots s in the range with sta_key_valid(g, s)).
STA_HD int32_t sta_block_valid_count(const StaGeometry& g, int64_t start, int32_t n) {
  int64_t valid_end;
  if (start >= g.img_slots) {
    valid_end = g.img_slots + g.text_valid;
  } else {
    const int32_t tile_id = static_cast<int32_t>(start / g.tile_tokens);
    valid_end = static_cast<int64_t>(tile_id) * g.tile_tokens + sta_tile_valid_tokens(g, tile_id);
  }
  const int64_t k = valid_end - start;
  return k <= 0 ? 0 : (k >= n ? n : static_cast<int32_t>(k));
}

// THE visit list, part 2: key blocks of `block_n` slots for a query range. Blocks of every tile in
// the range (tile_tokens / block_n each), then ceil(text_valid / block_n) text blocks.
struct StaVisit {
  int64_t key_start;  // first key slot of the block
  bool needs_mask;    // the block holds keys that are not valid (padding or text tail)
};

STA_HD int32_t sta_text_blocks(const StaGeometry& g, int32_t block_n) {
  return (g.text_valid + block_n - 1) / block_n;
}

STA_HD int32_t sta_visit_count(const StaGeometry& g, const StaTileRange& r, int32_t block_n) {
  return r.count() * (g.tile_tokens / block_n) + sta_text_blocks(g, block_n);
}

STA_HD StaVisit sta_visit_at(const StaGeometry& g, const StaTileRange& r, int32_t block_n, int32_t j) {
  const int32_t per_tile = g.tile_tokens / block_n;
  const int32_t img_blocks = r.count() * per_tile;
  StaVisit v;
  if (j < img_blocks) {
    const int32_t tile_id = sta_range_tile(g, r, j / per_tile);
    v.key_start = static_cast<int64_t>(tile_id) * g.tile_tokens + static_cast<int64_t>(j % per_tile) * block_n;
    v.needs_mask = sta_tile_has_padding(g, tile_id);
  } else {
    const int64_t t0 = static_cast<int64_t>(j - img_blocks) * block_n;
    v.key_start = g.img_slots + t0;
    v.needs_mask = t0 + block_n > g.text_valid;
  }
  return v;
}

// Visit j + 1 given visit j (== sta_visit_at(g, r, block_n, j + 1)): blocks inside one tile and
// text blocks are consecutive, so only a tile boundary needs the full computation. For loops.
STA_HD StaVisit sta_visit_next(const StaGeometry& g, const StaTileRange& r, int32_t block_n, int32_t j,
                               const StaVisit& cur) {
  const int32_t per_tile = g.tile_tokens / block_n;
  const int32_t img_blocks = r.count() * per_tile;
  const int32_t n = j + 1;
  if (n < img_blocks && n % per_tile != 0) return {cur.key_start + block_n, cur.needs_mask};
  if (n > img_blocks) {
    const int64_t t0 = cur.key_start + block_n - g.img_slots;
    return {cur.key_start + block_n, t0 + block_n > g.text_valid};
  }
  return sta_visit_at(g, r, block_n, n);
}

// The index of the last visit whose block holds a valid key: the last text block when there are text
// blocks (there are ceil(text_valid / block_n), none of them empty), else the last block of the range's
// last tile that holds one of its in-canvas tokens (they come first in a tile); the blocks after it are
// padding only. -1 when the list is empty. Lets a producer that drops empty blocks flag the last one it
// loads (the Hopper kernel's overlap instances), with no end-of-list marker.
STA_HD int32_t sta_last_nonempty_visit(const StaGeometry& g, const StaTileRange& r, int32_t block_n) {
  const int32_t n = sta_visit_count(g, r, block_n);
  if (sta_text_blocks(g, block_n) > 0 || n == 0) return n - 1;
  const int32_t per_tile = g.tile_tokens / block_n;
  const int32_t valid = sta_tile_valid_tokens(g, sta_range_tile(g, r, r.count() - 1));
  return (r.count() - 1) * per_tile + (valid + block_n - 1) / block_n - 1;
}

// THE visit list walked in order without divisions (for a producer thread that issues every visit):
// sta_walk_begin is visit 0 (when the list is not empty), each sta_walk_next the following one, equal to
// sta_visit_at(g, r, block_n, w.j) (tests/test_sta.cc). Tiles follow each other in raster order, so the
// next block's first slot is this block's end except where the range's w-run or h x w plane ends, where
// it jumps over the tiles outside the range; a tile needs masks iff one of its coordinates is the padded
// last tile of its axis.
struct StaWalk {
  StaVisit v;               // the current visit
  int32_t j = 0;            // its index in the list
  int32_t b = 0;            // block in its tile
  int32_t k[3] = {0, 0, 0};  // its tile's offsets in the range (t, h, w); k[0] == r.cnt[0]: text blocks
};

// The padded last tile coordinate per axis (-1 when the tile divides the canvas on that axis).
STA_HD int32_t sta_padded_coord(const StaGeometry& g, int d) {
  return g.canvas[d] % g.tile[d] != 0 ? g.grid[d] - 1 : -1;
}

STA_HD bool sta_walk_tile_padded(const StaGeometry& g, const StaTileRange& r, const StaWalk& w) {
  bool padded = false;
  for (int d = 0; d < 3; ++d) padded = padded || r.lo[d] + w.k[d] == sta_padded_coord(g, d);
  return padded;
}

STA_HD StaWalk sta_walk_begin(const StaGeometry& g, const StaTileRange& r, int32_t block_n) {
  StaWalk w;
  if (r.count() > 0) {
    const int32_t tile_id = (r.lo[0] * g.grid[1] + r.lo[1]) * g.grid[2] + r.lo[2];
    w.v.key_start = static_cast<int64_t>(tile_id) * g.tile_tokens;
    w.v.needs_mask = sta_walk_tile_padded(g, r, w);
  } else {
    w.k[0] = r.cnt[0];
    w.v.key_start = g.img_slots;
    w.v.needs_mask = block_n > g.text_valid;
  }
  return w;
}

STA_HD void sta_walk_next(const StaGeometry& g, const StaTileRange& r, int32_t block_n, StaWalk& w) {
  ++w.j;
  w.v.key_start += block_n;
  if (w.k[0] == r.cnt[0]) {  // text blocks are consecutive
    w.v.needs_mask = w.v.key_start - g.img_slots + block_n > g.text_valid;
    return;
  }
  if (++w.b < g.tile_tokens / block_n) return;  // the same tile
  w.b = 0;
  // The next tile: along w (the next slots), else the next h row, else the next t plane of the range.
  if (++w.k[2] == r.cnt[2]) {
    w.k[2] = 0;
    w.v.key_start += static_cast<int64_t>(g.grid[2] - r.cnt[2]) * g.tile_tokens;
    if (++w.k[1] == r.cnt[1]) {
      w.k[1] = 0;
      w.v.key_start += static_cast<int64_t>(g.grid[1] - r.cnt[1]) * g.grid[2] * g.tile_tokens;
      if (++w.k[0] == r.cnt[0]) {  // past the last tile: the text blocks
        w.v.key_start = g.img_slots;
        w.v.needs_mask = block_n > g.text_valid;
        return;
      }
    }
  }
  w.v.needs_mask = sta_walk_tile_padded(g, r, w);
}

// The current block's valid keys (== sta_block_valid_count(g, w.v.key_start, block_n)), for masked visits.
STA_HD int32_t sta_walk_valid_count(const StaGeometry& g, const StaTileRange& r, const StaWalk& w, int32_t block_n) {
  int64_t valid;  // valid keys from the block's first slot on, in its tile or the text
  if (w.k[0] == r.cnt[0]) {
    valid = g.text_valid - (w.v.key_start - g.img_slots);
  } else {
    int64_t tokens = 1;
    for (int d = 0; d < 3; ++d)
      tokens *= r.lo[d] + w.k[d] == sta_padded_coord(g, d) ? g.canvas[d] - (g.grid[d] - 1) * g.tile[d] : g.tile[d];
    valid = tokens - static_cast<int64_t>(w.b) * block_n;
  }
  return valid <= 0 ? 0 : (valid >= block_n ? block_n : static_cast<int32_t>(valid));
}

// The key range a query slot sees (image query: its tile's window; text query: all tiles).
STA_HD StaTileRange sta_query_range(const StaGeometry& g, StaWindow w, int64_t q_slot) {
  if (q_slot >= g.img_slots) return sta_all_tiles(g);
  return sta_key_tiles(g, w, static_cast<int32_t>(q_slot / g.tile_tokens));
}

// THE ORACLE: element-wise visibility written straight from the spec, independent of the visit
// list. Queries at padded slots see what their tile sees (their outputs are dropped anyway).
STA_HD bool sta_visible(const StaGeometry& g, StaWindow w, int64_t q_slot, int64_t k_slot) {
  if (!sta_key_valid(g, k_slot)) return false;
  if (q_slot >= g.img_slots || k_slot >= g.img_slots) return true;  // text rows/cols: dense over valid keys
  int32_t q[3], k[3];
  sta_tile_coords(g, static_cast<int32_t>(q_slot / g.tile_tokens), &q[0], &q[1], &q[2]);
  sta_tile_coords(g, static_cast<int32_t>(k_slot / g.tile_tokens), &k[0], &k[1], &k[2]);
  const int32_t wd[3] = {w.t, w.h, w.w};
  for (int d = 0; d < 3; ++d) {
    const int32_t r = wd[d] / 2;
    const int32_t lo = r, hi = g.grid[d] - 1 - r;
    int32_t c = q[d] < lo ? lo : q[d];
    if (c > hi) c = hi;  // clamp(q, r, n-1-r); when lo > hi this covers the axis (spec section 3)
    const int32_t dist = c > k[d] ? c - k[d] : k[d] - c;
    if (dist > r) return false;
  }
  return true;
}

// Tiled slot of a raster position (image tokens t-major, then text); and the inverse, -1 for a pad.
STA_HD int64_t sta_slot_of_raster(const StaGeometry& g, int64_t raster) {
  const int64_t n_img = g.img_tokens();
  if (raster >= n_img) return g.img_slots + (raster - n_img);
  const int32_t w = static_cast<int32_t>(raster % g.canvas[2]);
  const int32_t h = static_cast<int32_t>((raster / g.canvas[2]) % g.canvas[1]);
  const int32_t t = static_cast<int32_t>(raster / (static_cast<int64_t>(g.canvas[2]) * g.canvas[1]));
  const int32_t c[3] = {t / g.tile[0], h / g.tile[1], w / g.tile[2]};
  const int32_t tile_id = (c[0] * g.grid[1] + c[1]) * g.grid[2] + c[2];
  int32_t v[3];
  sta_tile_extent(g, c, v);
  const int32_t local = ((t % g.tile[0]) * v[1] + h % g.tile[1]) * v[2] + w % g.tile[2];
  return static_cast<int64_t>(tile_id) * g.tile_tokens + local;
}
STA_HD int64_t sta_raster_of_slot(const StaGeometry& g, int64_t slot) {
  if (slot >= g.img_slots) return g.img_tokens() + (slot - g.img_slots);
  int32_t t, h, w;
  if (!sta_slot_coords(g, slot, &t, &h, &w)) return -1;
  return (static_cast<int64_t>(t) * g.canvas[1] + h) * g.canvas[2] + w;
}

// Fraction of image key tiles a query tile keeps, averaged over query tiles (the paper's "kept";
// 1 - sparsity), for one window.
double sta_kept_fraction(const StaGeometry& g, StaWindow w);

// ---- attention ----

// O = softmax(scale * Q K^T + mask) V over the STA mask, all heads (each with its own window) in
// one launch. Tensors are [batch, heads, seq, head_dim] with any strides on the first three axes and
// a contiguous last axis; seq = geom.seq_len() (image slots in tiled order, then text slots).
struct StaAttentionParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  int64_t q_stride[3] = {0, 0, 0};  // batch, head, seq (elements)
  int64_t k_stride[3] = {0, 0, 0};
  int64_t v_stride[3] = {0, 0, 0};
  int64_t o_stride[3] = {0, 0, 0};
  int32_t batch = 1, heads = 1, head_dim = 128;
  StaGeometry geom;
  // [heads] windows, in the memory of `device` (a device array on CUDA: no host sync per call).
  const StaWindow* windows = nullptr;
  // Optional host copy of the same windows: lets the selector validate them (each entry >= 1) and
  // the CUDA launcher order heads longest-first, without reading device memory.
  const StaWindow* host_windows = nullptr;
  float softmax_scale = 0.f;  // 0 means 1/sqrt(head_dim)
  // Optional output row map, length seq_len(): output row of each slot, -1 to drop the row. Lets the
  // kernel write straight into a compact [image tokens | text] layout (padded slots dropped), so the
  // model tiles and untiles once per forward. Null: output row = slot. Device memory on CUDA.
  const int32_t* o_row_map = nullptr;
  DType dtype = DType::BF16;
  Device device;
};

// The kernels that can run STA, and the one selector that both says whether params are supported
// and which kernel runs them. The dispatch switch has no default.
enum class StaKernel : uint8_t {
  Cpu,            // the CPU reference (any dtype, any head dim)
  PortableM128,   // sm_80+: mma.sync, 128 query rows per CTA (tile_tokens % 128 == 0)
  PortableM64,    // sm_80+: mma.sync, 64 query rows per CTA (tile_tokens % 64 == 0)
  // sm_90a: TMA + wgmma, warp-specialized (kernels/sta_hopper.cu). Selected on a compute capability
  // 9.0 device for bf16 / fp16, head_dim 64 / 128, tile_tokens % 64 == 0 (any windows, padded
  // canvases, text slots): all the params the portable kernels take. Issue 9. STAVID_STA_HOPPER=0 in
  // the environment selects the portable kernels instead (read at every call).
  // Variants of it, for timing side by side from one binary: STAVID_STA_HOPPER_VARIANT=<name>
  // (StaHopperVariant below; unset: "auto"), read at every call.
  Hopper,
};
const char* sta_kernel_name(StaKernel k);
// Throws stavid::Error (InvalidArgument or Unsupported) naming the offending parameter.
StaKernel select_sta_kernel(const StaAttentionParams& p);

void sta_attention(const StaAttentionParams& p, const Stream& stream);

// FLOPs of the visible image-image work (4 * kept * N_img^2 * d * heads * batch, the paper's
// convention), given host copies of the windows.
double sta_effective_flops(const StaAttentionParams& p, const StaWindow* host_windows);

namespace detail {
void sta_attention_cpu(const StaAttentionParams& p);
void sta_attention_cuda(const StaAttentionParams& p, StaKernel kernel, CudaStream stream);
// The Hopper kernel (StaKernel::Hopper); callable directly by tests on supported params.
void sta_attention_hopper(const StaAttentionParams& p, CudaStream stream);
// Whether `device` can run the sm_90a code (compute capability exactly 9.0).
bool sta_hopper_device(int device);
// Whether params fit the Hopper kernel (as listed at StaKernel::Hopper), ignoring the environment
// switch and the device.
bool sta_hopper_supports(const StaAttentionParams& p);

// Performance variants of the Hopper kernel, chosen with STAVID_STA_HOPPER_VARIANT (issue 9; each
// adds one change to the previous, docs/perf-notes.md "Hopper kernel" has the rationale and timings):
// - "masked": every launch runs the masked instance (the producer builds masks, consumers read a
//   per-stage flag every visit), as in the kernel of session 3's run 4: the control;
// - "lean": launches whose visits need no element mask (canvas divisible by the tile,
//   text_valid a multiple of the key block) run the unmasked instance: nothing per visit in the
//   consumers but the wait (the first milestone's loop);
// - "skip": lean, and the producer drops key blocks with no valid key and query blocks with no
//   valid row (padded slots only; their output rows are written as zeros, or dropped by o_row_map);
// - "persist": skip, on a persistent grid (SMs x CTAs per SM, capped by ":N" as in "persist:3")
//   whose CTAs take work items from a global counter, text blocks first, then the image blocks of
//   each batch x head in decreasing visit count (host_windows), so heads with different windows
//   balance;
// - "deep": skip, with a 3-stage K/V ring (and one Q buffer) on 128-row CTAs (tiles of a multiple of
//   128 tokens; 64-row CTAs keep 2 stages), not persistent;
// - "pingpong": skip, with FA3's inter-warpgroup ping-pong on 128-row CTAs: the two consumer
//   warpgroups take turns (named barriers) so that one's GEMMs run while the other runs its softmax;
//   64-row CTAs (one consumer warpgroup) run as "skip". Not chosen by "auto" (session 8: 13-15%
//   slower than "skip" on the paper shapes);
// - "pingpong-deep": pingpong on deep's 3-stage ring (the turns halve the producer's window to refill
//   a stage; 64-row CTAs run as "skip"). Not chosen by "auto" (session 8: 13-15% slower than "skip");
// - "tail": skip, and launches whose only masked visits are the text tail (the canvas divisible by the
//   tile, text_valid not a multiple of the key block) run the UNMASKED instance too: the text tail is
//   every work item's last visit (text key blocks come last in the visit list), so its consumers mask
//   the columns at and past text_valid % key block on that visit from the launch's arguments (no mask
//   words, no per-stage flags, no end-of-item stage). 128-row CTAs only (64-row CTAs run it as "skip");
// - "overlap": deep, with FA3's intra-warpgroup pipelining in the consumers (block j's Q K^T and block
//   j - 1's P V issued back to back, block j's softmax under that P V), on unmasked, text-tail-only (as
//   "tail") and masked launches alike; 64-row CTAs run it as "skip". Session 9: without spills at
//   d = 128 once the consumers' waits no longer trap, and 8-11% faster than "deep";
// - "overlap-pp": overlap, with the two consumer warpgroups also taking turns to issue (FA3's full
//   schedule: ping-pong and intra-warpgroup overlap); 64-row CTAs run it as "skip". Session 9: the
//   fastest on every case timed (0.5-4% ahead of "overlap"), so "auto" picks it on 128-row CTAs;
// - "overlap-pp-masked": overlap-pp forced through its masked instance (as "masked" is lean's), to time
//   the masked instance's own cost on launches that need no mask;
// - "auto" (the default): per launch, the variant measured fastest on launches of its kind (sessions 4,
//   8 and 9, docs/perf-notes.md): "overlap-pp" on 128-row CTAs (every launch kind: unmasked, text tail,
//   padded canvases, mixed windows); on 64-row CTAs "persist" when the heads' windows differ
//   (host_windows; the longest-first order balances them), else "skip".
struct StaHopperVariant {
  enum Kind : uint8_t {
    Masked, Lean, Skip, Persist, Deep, Auto, PingPong, PingPongDeep, Tail, Overlap, OverlapPingPong,
    OverlapPingPongMasked
  } kind = Auto;
  int32_t max_ctas = 0;  // "persist:N": at most N CTAs (0: no cap); tests use it to give CTAs many items
};
// Parses STAVID_STA_HOPPER_VARIANT (unset or empty: auto); throws InvalidArgument on an unknown name.
StaHopperVariant sta_hopper_variant();
// Key block of the Hopper kernel's CTA shapes: 128 keys with 128 query rows (tile_tokens % 128 == 0),
// 64 with 64 rows.
inline constexpr int32_t kHopperKeyBlock128 = 128, kHopperKeyBlock64 = 64;
// Whether any visit of a launch with key blocks of block_n needs an element mask (StaVisit::needs_mask):
// a tile with padded slots, or a text block that valid text does not fill.
bool sta_hopper_needs_masks(const StaGeometry& g, int32_t block_n);
// The valid keys of the text tail when it is a launch's ONLY masked visit (no tile has padded slots and
// text_valid % block_n != 0): text_valid % block_n; 0 otherwise (no mask, or masks elsewhere too).
int32_t sta_hopper_text_tail_only(const StaGeometry& g, int32_t block_n);
// The variant a launch of p runs: v itself, or for "auto" the concrete choice (see Auto above):
// "overlap-pp" on 128-row CTAs; on 64-row CTAs "persist" when host_windows differ between heads,
// "skip" otherwise.
StaHopperVariant sta_hopper_resolve(const StaAttentionParams& p, StaHopperVariant v);
// The name the variant is selected by ("persist:3" for a capped persistent grid).
std::string sta_hopper_variant_name(const StaHopperVariant& v);
}  // namespace detail

// ---- tile / untile ----

// Row permutation between raster order [image tokens (t,h,w) | text] and tiled order
// [image slots | text], per batch item. Rows are `row_elems` contiguous elements; padded slots are
// written as zeros by tile and skipped by untile. src and dst must not overlap.
struct StaPermuteParams {
  const void* src = nullptr;
  void* dst = nullptr;
  int32_t batch = 1;
  int64_t row_elems = 0;
  int64_t src_batch_stride = 0, dst_batch_stride = 0;  // elements
  int64_t src_row_stride = 0, dst_row_stride = 0;      // elements (>= row_elems)
  StaGeometry geom;
  bool to_tiled = true;  // raster -> tiled (tile) or tiled -> raster (untile)
  DType dtype = DType::BF16;
  Device device;
};
void sta_permute(const StaPermuteParams& p, const Stream& stream);

namespace detail {
void sta_permute_cpu(const StaPermuteParams& p);
void sta_permute_cuda(const StaPermuteParams& p, CudaStream stream);
}  // namespace detail

}  // namespace stavid
