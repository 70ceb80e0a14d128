// Sliding Tile Attention: geometry against the spec's numbers, THE visit list against the oracle
// (exhaustively on small geometries), the raster <-> slot bijection, tile / untile (CPU round trip;
// CUDA equal to CPU bit for bit), CPU attention against an fp64 dense reference built from the
// oracle, the CUDA kernels against the same reference under FlashAttention-3's rule, and the
// selector's errors.
//
// Tolerances: fp32 NMSE <= 1e-10 against fp64; 16-bit outputs follow the FA3 rule
//   max|out - ref64| <= 2 * max|naive16 - ref64| + 1e-3
// where naive16 rounds the scores and the probabilities to the storage type (test_util.h style).
// Inputs are rounded through the storage type before the reference sees them. Attention buffers sit
// between guard regions (NaN before/after inputs: a read past a tensor poisons the result; a
// sentinel around outputs: a write past it is caught), and outputs start as NaN.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/core/error.h"
#include "kernels/sta.h"
#include "model/runtime/cuda_runtime.h"
#include "model/runtime/tensor.h"
#include "test_util.h"

namespace stavid {
namespace {

using test::nmse;
using test::random_values;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr int64_t kGuard = 64;       // elements before and after every attention buffer
constexpr float kSentinel = 1216.f;  // exact in bf16 and f16

StaGeometry geom(std::array<int32_t, 3> canvas, std::array<int32_t, 3> tile, int32_t text_slots = 0,
                 int32_t text_valid = 0) {
  return make_sta_geometry(canvas.data(), tile.data(), text_slots, text_valid);
}

std::string geom_str(const StaGeometry& g) {
  return detail::str_cat("canvas ", g.canvas[0], "x", g.canvas[1], "x", g.canvas[2], " tile ", g.tile[0], "x",
                         g.tile[1], "x", g.tile[2], " text ", g.text_slots, "/", g.text_valid);
}
std::string window_str(StaWindow w) {
  return detail::str_cat("(", w.t, ",", w.h, ",", w.w, ")");
}

bool is_padded_slot(const StaGeometry& g, int64_t slot) {
  if (slot >= g.img_slots) return false;
  int32_t t, h, w;
  return !sta_slot_coords(g, slot, &t, &h, &w);
}

// ---------------- geometry ----------------

TEST(StaGeometry, PaperShapeAndKeptFractions) {
  const StaGeometry g = geom({30, 48, 80}, {6, 8, 8});
  EXPECT_EQ(g.grid[0], 5);
  EXPECT_EQ(g.grid[1], 6);
  EXPECT_EQ(g.grid[2], 10);
  EXPECT_EQ(g.tile_tokens, 384);
  EXPECT_EQ(g.num_tiles, 300);
  EXPECT_EQ(g.img_slots, 115200);
  EXPECT_EQ(g.img_tokens(), 115200);
  EXPECT_EQ(g.seq_len(), 115200);

  // Visible key tiles per query tile, counted through the visit list: the same for every query tile.
  auto tiles_per_query = [&](StaWindow w) {
    const int32_t first = sta_key_tiles(g, w, 0).count();
    for (int32_t q = 0; q < g.num_tiles; ++q) EXPECT_EQ(sta_key_tiles(g, w, q).count(), first) << window_str(w);
    return first;
  };
  EXPECT_EQ(tiles_per_query({3, 3, 3}), 27);  // 27/300 = 0.09 kept, 91% sparse
  EXPECT_NEAR(sta_kept_fraction(g, {3, 3, 3}), 0.09, 1e-15);
  EXPECT_EQ(tiles_per_query({5, 5, 5}), 125);  // 125/300 kept, 58.33% sparse
  EXPECT_NEAR(sta_kept_fraction(g, {5, 5, 5}), 125.0 / 300.0, 1e-15);
  EXPECT_NEAR(1.0 - sta_kept_fraction(g, {5, 5, 5}), 0.58333, 1e-5);
  EXPECT_EQ(tiles_per_query({5, 6, 10}), 300);  // even 6 and 10: the whole axis
  EXPECT_DOUBLE_EQ(sta_kept_fraction(g, {5, 6, 10}), 1.0);
  EXPECT_EQ(tiles_per_query({1, 1, 1}), 1);
  EXPECT_EQ(tiles_per_query({99, 99, 99}), 300);

  StaAttentionParams p;
  p.geom = g;
  p.heads = 24;
  p.head_dim = 128;
  const std::vector<StaWindow> w(24, StaWindow{3, 3, 3});
  EXPECT_NEAR(sta_effective_flops(p, w.data()) / (4.0 * 115200.0 * 115200.0 * 128 * 24 * 0.09), 1.0, 1e-12);
}

TEST(StaGeometry, PaddedCanvases) {
  const StaGeometry g = geom({33, 45, 80}, {6, 8, 8}, 256, 200);
  EXPECT_EQ(g.grid[0], 6);
  EXPECT_EQ(g.grid[1], 6);
  EXPECT_EQ(g.grid[2], 10);
  EXPECT_EQ(g.img_tokens(), 118800);
  EXPECT_EQ(g.img_slots, 360 * 384);
  EXPECT_EQ(g.seq_len(), 360 * 384 + 256);

  const StaGeometry g3 = geom({33, 45, 80}, {3, 8, 8});
  EXPECT_EQ(g3.grid[0], 11);
  EXPECT_EQ(g3.grid[1], 6);
  EXPECT_EQ(g3.grid[2], 10);
  EXPECT_EQ(g3.tile_tokens, 192);
  EXPECT_EQ(g3.img_slots, 660 * 192);
  // (3,3,3) on 11x6x10: 3/11 * 3/6 * 3/10.
  EXPECT_NEAR(sta_kept_fraction(g3, {3, 3, 3}), 27.0 / 660.0, 1e-15);
  // The last tile row along h holds 45 - 40 = 5 real rows of 8: tiles at h index 5 are padded.
  int32_t padded_tiles = 0;
  for (int32_t t = 0; t < g3.num_tiles; ++t) padded_tiles += sta_tile_has_padding(g3, t);
  EXPECT_EQ(padded_tiles, 11 * 10);
  int64_t padded_slots = 0;
  for (int64_t s = 0; s < g3.img_slots; ++s) padded_slots += is_padded_slot(g3, s);
  EXPECT_EQ(padded_slots, g3.img_slots - g3.img_tokens());

  const StaGeometry d = make_dense_geometry(100, 64, 7, 3);
  EXPECT_EQ(d.grid[2], 2);
  EXPECT_EQ(d.img_slots, 128);
  EXPECT_EQ(d.img_tokens(), 100);
  EXPECT_EQ(d.seq_len(), 135);
}

TEST(StaGeometry, RejectsBadInput) {
  auto message_of = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const Error& e) {
      return e.message();
    }
    return "<no error>";
  };
  EXPECT_NE(message_of([] { geom({4, 4, 4}, {0, 2, 2}); }).find("tile axis 0"), std::string::npos);
  EXPECT_NE(message_of([] { geom({4, 4, 4}, {2, 2, -1}); }).find("tile axis 2"), std::string::npos);
  EXPECT_NE(message_of([] { geom({4, 4, 4}, {2, 2, 2}, 5, 6); }).find("text_valid"), std::string::npos);
  EXPECT_NE(message_of([] { geom({4, 4, 4}, {2, 2, 2}, 5, -1); }).find("text_valid"), std::string::npos);
  EXPECT_NE(message_of([] { geom({4, -4, 4}, {2, 2, 2}); }).find("negative"), std::string::npos);
  EXPECT_NO_THROW(geom({0, 4, 4}, {1, 2, 2}, 5, 5));  // text-only attention
}

// ---------------- the visit list against the oracle ----------------

// All divisors of n up to 64, and n itself.
std::vector<int32_t> block_sizes(int32_t n) {
  std::vector<int32_t> out;
  for (int32_t b = 1; b <= std::min(n, 64); ++b)
    if (n % b == 0) out.push_back(b);
  if (n > 64) out.push_back(n);
  return out;
}

// Query rows that share one key range: the rows of each image tile, then all text rows.
template <typename Fn>
void for_each_query_block(const StaGeometry& g, Fn&& fn) {
  for (int32_t t = 0; t < g.num_tiles; ++t)
    fn(static_cast<int64_t>(t) * g.tile_tokens, static_cast<int64_t>(t + 1) * g.tile_tokens);
  if (g.text_slots > 0) fn(g.img_slots, g.seq_len());
}

// Checks the visit list of every query block for one (geometry, window), all block sizes, against
// the oracle for every query row, sta_visit_next and the walk (sta_walk_begin / sta_walk_next, with its valid
// counts) against sta_visit_at, and sta_last_nonempty_visit against the last visit with a real key. Returns
// false after the first mismatch (reported with context).
bool check_visit_list(const StaGeometry& g, StaWindow w) {
  const int64_t seq = g.seq_len();
  std::vector<uint8_t> oracle(static_cast<size_t>(seq * seq));
  for (int64_t q = 0; q < seq; ++q)
    for (int64_t k = 0; k < seq; ++k) oracle[q * seq + k] = sta_visible(g, w, q, k);
  std::vector<int32_t> hits(static_cast<size_t>(seq));
  const std::string ctx = geom_str(g) + " window " + window_str(w);
  bool ok = true;
  for (int32_t block_n : block_sizes(g.tile_tokens)) {
    for_each_query_block(g, [&](int64_t q0, int64_t q1) {
      if (!ok) return;
      const StaTileRange range = sta_query_range(g, w, q0);
      std::fill(hits.begin(), hits.end(), 0);
      const int32_t visits = sta_visit_count(g, range, block_n);
      StaVisit prev{};
      StaWalk walk = sta_walk_begin(g, range, block_n);
      int32_t last_nonempty = -1;
      for (int32_t j = 0; j < visits && ok; ++j) {
        const StaVisit v = sta_visit_at(g, range, block_n, j);
        if (j > 0) sta_walk_next(g, range, block_n, walk);
        const int32_t valid = sta_block_valid_count(g, v.key_start, block_n);
        if (walk.j != j || walk.v.key_start != v.key_start || walk.v.needs_mask != v.needs_mask ||
            sta_walk_valid_count(g, range, walk, block_n) != valid) {
          ADD_FAILURE() << ctx << " block_n " << block_n << ": the walk's visit " << walk.j << " is ("
                        << walk.v.key_start << ", " << walk.v.needs_mask << ", "
                        << sta_walk_valid_count(g, range, walk, block_n) << " valid), sta_visit_at " << j << " ("
                        << v.key_start << ", " << v.needs_mask << ", " << valid << " valid)";
          ok = false;
        }
        if (j > 0) {
          const StaVisit n = sta_visit_next(g, range, block_n, j - 1, prev);
          if (n.key_start != v.key_start || n.needs_mask != v.needs_mask) {
            ADD_FAILURE() << ctx << " block_n " << block_n << ": sta_visit_next after visit " << j - 1 << " gives ("
                          << n.key_start << ", " << n.needs_mask << "), sta_visit_at " << j << " gives (" << v.key_start
                          << ", " << v.needs_mask << ")";
            ok = false;
          }
        }
        prev = v;
        if (v.key_start < 0 || v.key_start % block_n != 0) {
          ADD_FAILURE() << ctx << " block_n " << block_n << ": visit " << j << " starts at " << v.key_start;
          ok = false;
        }
        for (int64_t k = v.key_start; k < v.key_start + block_n && ok; ++k) {
          const bool valid = k < seq && sta_key_valid(g, k);
          if (!v.needs_mask && !valid) {
            ADD_FAILURE() << ctx << " block_n " << block_n << ": visit " << j << " not marked needs_mask but key " << k
                          << " is not a real key (seq " << seq << ")";
            ok = false;
          }
          if (valid) {
            ++hits[k];
            last_nonempty = j;
          }
        }
      }
      if (ok && sta_last_nonempty_visit(g, range, block_n) != last_nonempty) {
        ADD_FAILURE() << ctx << " block_n " << block_n << ", query block at " << q0 << ": sta_last_nonempty_visit "
                      << sta_last_nonempty_visit(g, range, block_n) << ", the last visit with a real key "
                      << last_nonempty;
        ok = false;
      }
      for (int64_t q = q0; q < q1 && ok; ++q) {
        const StaTileRange rq = sta_query_range(g, w, q);
        for (int d = 0; d < 3; ++d)
          if (rq.lo[d] != range.lo[d] || rq.cnt[d] != range.cnt[d]) {
            ADD_FAILURE() << ctx << ": query " << q << " has another range than its block's first row " << q0;
            ok = false;
          }
        for (int64_t k = 0; k < seq && ok; ++k) {
          const int32_t want = oracle[q * seq + k];
          if (hits[k] != want) {
            ADD_FAILURE() << ctx << " block_n " << block_n << ": query " << q << " key " << k << " visited " << hits[k]
                          << " time(s), oracle says visible=" << want;
            ok = false;
          }
        }
      }
    });
    if (!ok) return false;
  }
  return true;
}

TEST(StaVisitList, MatchesOracleExhaustively) {
  const std::array<int32_t, 3> canvases[] = {{1, 1, 1}, {3, 5, 7}, {5, 7, 11}, {4, 4, 4}, {2, 9, 6},
                                             {6, 8, 8}, {7, 3, 5}, {1, 1, 9},  {0, 4, 4}};
  const std::array<int32_t, 3> tiles[] = {{1, 1, 1}, {2, 2, 2}, {2, 3, 4}, {3, 2, 2}, {1, 2, 3}, {4, 4, 4}};
  const StaWindow windows[] = {{1, 1, 1}, {3, 3, 3}, {2, 2, 2}, {5, 1, 3}, {1, 4, 2},
                               {9, 9, 9}, {3, 1, 7}, {2, 3, 1}, {1, 1, 5}, {6, 6, 6}};
  const std::array<int32_t, 2> texts[] = {{0, 0}, {5, 0}, {5, 1}, {5, 3}, {5, 5}, {13, 7}, {1, 1}};
  constexpr int kTexts = sizeof(texts) / sizeof(texts[0]);
  int checked = 0, i = 0;
  for (const auto& c : canvases)
    for (const auto& t : tiles)
      for (const StaWindow& w : windows) {
        // Two text configurations per (canvas, tile, window), rotating so every one meets every shape.
        for (int k : {i % kTexts, (i + 3) % kTexts}) {
          const StaGeometry g = geom(c, t, texts[k][0], texts[k][1]);
          ASSERT_TRUE(check_visit_list(g, w));
          ++checked;
        }
        ++i;
      }
  EXPECT_EQ(checked, 9 * 6 * 10 * 2);
}

TEST(StaVisitList, LargerShapesAtTileLevel) {
  // Paper and 720p grids: the tile ranges against the oracle on one representative slot per tile.
  for (const auto& [canvas, tile] : {std::pair<std::array<int32_t, 3>, std::array<int32_t, 3>>{{30, 48, 80}, {6, 8, 8}},
                                     {{33, 45, 80}, {6, 8, 8}},
                                     {{33, 45, 80}, {3, 8, 8}}}) {
    const StaGeometry g = geom(canvas, tile, 256, 200);
    for (StaWindow w : {StaWindow{3, 3, 3}, StaWindow{5, 5, 5}, StaWindow{5, 6, 10}, StaWindow{1, 6, 10},
                        StaWindow{5, 1, 10}, StaWindow{4, 2, 6}}) {
      for (int32_t q = 0; q < g.num_tiles; ++q) {
        const StaTileRange r = sta_key_tiles(g, w, q);
        std::vector<uint8_t> in_range(static_cast<size_t>(g.num_tiles), 0);
        for (int32_t k = 0; k < r.count(); ++k) in_range[sta_range_tile(g, r, k)] += 1;
        for (int32_t k = 0; k < g.num_tiles; ++k) {
          // Tile k is visible iff its first slot (always a real token) is visible from q's first slot.
          const bool want =
              sta_visible(g, w, static_cast<int64_t>(q) * g.tile_tokens, static_cast<int64_t>(k) * g.tile_tokens);
          ASSERT_EQ(in_range[k], want ? 1 : 0) << geom_str(g) << " " << window_str(w) << " q " << q << " k " << k;
        }
      }
    }
  }
}

// ---------------- raster <-> slot ----------------

TEST(StaPermuteIndex, InverseBijections) {
  const std::array<int32_t, 3> canvases[] = {{1, 1, 1}, {3, 5, 7}, {4, 4, 4}, {6, 16, 16}, {7, 10, 12}, {0, 3, 3}};
  const std::array<int32_t, 3> tiles[] = {{1, 1, 1}, {2, 2, 2}, {2, 3, 4}, {2, 8, 8}};
  for (const auto& c : canvases)
    for (const auto& t : tiles) {
      const StaGeometry g = geom(c, t, 6, 2);
      const int64_t raster_len = g.img_tokens() + g.text_slots;
      std::vector<int32_t> seen(static_cast<size_t>(g.seq_len()), 0);
      for (int64_t r = 0; r < raster_len; ++r) {
        const int64_t s = sta_slot_of_raster(g, r);
        ASSERT_TRUE(s >= 0 && s < g.seq_len()) << geom_str(g) << " raster " << r;
        ASSERT_FALSE(is_padded_slot(g, s)) << geom_str(g) << " raster " << r << " -> padded slot " << s;
        ASSERT_EQ(sta_raster_of_slot(g, s), r) << geom_str(g);
        ++seen[s];
        if (r < g.img_tokens()) {
          // The spec's formula (section 2), written out here, with the in-tile strides of the tile's
          // canvas extent (the spec's for a full tile; a partial tile's padding goes last).
          const int64_t tt = r / (int64_t(c[1]) * c[2]), hh = (r / c[2]) % c[1], ww = r % c[2];
          const int64_t tile_id = ((tt / t[0]) * g.grid[1] + hh / t[1]) * g.grid[2] + ww / t[2];
          const int64_t vh = std::min<int64_t>(t[1], c[1] - hh / t[1] * t[1]);
          const int64_t vw = std::min<int64_t>(t[2], c[2] - ww / t[2] * t[2]);
          const int64_t local = ((tt % t[0]) * vh + hh % t[1]) * vw + ww % t[2];
          ASSERT_EQ(s, tile_id * g.tile_tokens + local) << geom_str(g);
          const bool full = (tt / t[0] + 1) * t[0] <= c[0] && (hh / t[1] + 1) * t[1] <= c[1] &&
                            (ww / t[2] + 1) * t[2] <= c[2];
          if (full) {  // exactly the spec's local_id
            ASSERT_EQ(local, ((tt % t[0]) * t[1] + hh % t[1]) * t[2] + ww % t[2]);
          }
        }
      }
      // Padding last: in every tile, the in-canvas slots are exactly the first ones.
      for (int32_t tile = 0; tile < g.num_tiles; ++tile) {
        int64_t real = 0;
        for (int64_t l = 0; l < g.tile_tokens; ++l) real += !is_padded_slot(g, int64_t(tile) * g.tile_tokens + l);
        for (int64_t l = 0; l < g.tile_tokens; ++l)
          ASSERT_EQ(is_padded_slot(g, int64_t(tile) * g.tile_tokens + l), l >= real) << geom_str(g) << " tile " << tile;
      }
      int64_t unmapped = 0;
      for (int64_t s = 0; s < g.seq_len(); ++s) {
        const int64_t r = sta_raster_of_slot(g, s);
        if (r < 0) {
          ++unmapped;
          ASSERT_TRUE(is_padded_slot(g, s)) << geom_str(g) << " slot " << s;
          ASSERT_EQ(seen[s], 0);
        } else {
          ASSERT_EQ(seen[s], 1) << geom_str(g) << " slot " << s;
          ASSERT_EQ(sta_slot_of_raster(g, r), s);
        }
      }
      EXPECT_EQ(unmapped, g.img_slots - g.img_tokens()) << geom_str(g);
    }
}

// The Hopper kernel's masks: a block's valid keys are its first sta_block_valid_count(...) slots, for
// every block of a tile (block sizes that divide the tile) and of the text slots, padded canvases included.
TEST(StaPermuteIndex, BlockValidCountIsAPrefixMask) {
  const std::array<int32_t, 3> canvases[] = {{33, 45, 80}, {3, 5, 7}, {30, 48, 80}, {5, 13, 9}};
  const std::array<int32_t, 3> tiles[] = {{6, 8, 8}, {3, 8, 8}, {2, 4, 8}, {1, 8, 8}};
  for (const auto& c : canvases)
    for (const auto& t : tiles) {
      const StaGeometry g = geom(c, t, 256, 200);
      for (const int32_t n : {32, 64, 128}) {
        if (g.tile_tokens % n != 0) continue;
        for (int64_t start = 0; start < g.seq_len(); start += n) {
          const int32_t k = sta_block_valid_count(g, start, n);
          for (int32_t i = 0; i < n; ++i) {
            const int64_t s = start + i;
            ASSERT_EQ(s < g.seq_len() && sta_key_valid(g, s), i < k) << geom_str(g) << " block " << start << "+" << n;
          }
        }
      }
    }
}

// ---------------- tile / untile ----------------

struct PermuteLayout {
  int64_t row_elems, row_stride, batch_pad;
};

// Raw bytes of a [batch, rows] x row_stride buffer: random payload rows, gaps filled with 0xA5.
std::vector<uint8_t> random_rows(int32_t batch, int64_t rows, const PermuteLayout& l, DType dt, uint32_t seed,
                                 int64_t* batch_stride) {
  const size_t esz = dtype_size(dt);
  *batch_stride = rows * l.row_stride + l.batch_pad;
  std::vector<uint8_t> buf(static_cast<size_t>(batch * *batch_stride) * esz, 0xA5);
  std::mt19937 gen(seed);
  for (int32_t b = 0; b < batch; ++b)
    for (int64_t r = 0; r < rows; ++r) {
      uint8_t* row = buf.data() + static_cast<size_t>(b * *batch_stride + r * l.row_stride) * esz;
      for (size_t i = 0; i < static_cast<size_t>(l.row_elems) * esz; ++i) row[i] = static_cast<uint8_t>(gen());
    }
  return buf;
}

StaPermuteParams permute_params(const StaGeometry& g, bool to_tiled, DType dt, int32_t batch, int64_t row_elems,
                                int64_t src_row_stride, int64_t src_batch_stride, int64_t dst_row_stride,
                                int64_t dst_batch_stride) {
  StaPermuteParams p;
  p.geom = g;
  p.to_tiled = to_tiled;
  p.dtype = dt;
  p.batch = batch;
  p.row_elems = row_elems;
  p.src_row_stride = src_row_stride;
  p.src_batch_stride = src_batch_stride;
  p.dst_row_stride = dst_row_stride;
  p.dst_batch_stride = dst_batch_stride;
  return p;
}

const DType kAllTypes[] = {DType::F32, DType::BF16, DType::F16};

TEST(StaPermute, CpuRoundTrip) {
  const std::pair<std::array<int32_t, 3>, std::array<int32_t, 3>> shapes[] = {
      {{4, 4, 4}, {2, 2, 2}}, {{3, 5, 7}, {2, 2, 2}}, {{5, 7, 11}, {2, 3, 4}},
      {{1, 1, 1}, {1, 1, 1}}, {{6, 8, 8}, {2, 8, 8}}, {{7, 10, 12}, {2, 8, 8}}};
  const PermuteLayout raster_layouts[] = {{1, 1, 0}, {3, 5, 2}, {8, 8, 0}, {13, 16, 5}, {64, 67, 1}};
  int cases = 0;
  for (DType dt : kAllTypes)
    for (size_t si = 0; si < std::size(shapes); ++si)
      for (const PermuteLayout& rl : raster_layouts) {
        const StaGeometry g =
            geom(shapes[si].first, shapes[si].second, static_cast<int32_t>(si % 3) * 3, static_cast<int32_t>(si % 3));
        const size_t esz = dtype_size(dt);
        const int32_t batch = 2;
        const int64_t raster_rows = g.img_tokens() + g.text_slots;
        const PermuteLayout tl{rl.row_elems, rl.row_elems + 2, 3};  // tiled rows in their own layout
        int64_t rbs = 0, tbs = 0;
        const auto src = random_rows(batch, raster_rows, rl, dt, 7 + cases, &rbs);
        tbs = g.seq_len() * tl.row_stride + tl.batch_pad;
        std::vector<uint8_t> tiled(static_cast<size_t>(batch * tbs) * esz, 0xA5);
        StaPermuteParams p = permute_params(g, true, dt, batch, rl.row_elems, rl.row_stride, rbs, tl.row_stride, tbs);
        p.src = src.data();
        p.dst = tiled.data();
        sta_permute(p, Stream::cpu());

        const size_t row_bytes = static_cast<size_t>(rl.row_elems) * esz;
        for (int32_t b = 0; b < batch; ++b)
          for (int64_t s = 0; s < g.seq_len(); ++s) {
            const uint8_t* d = tiled.data() + static_cast<size_t>(b * tbs + s * tl.row_stride) * esz;
            const int64_t r = sta_raster_of_slot(g, s);
            if (r < 0) {
              for (size_t i = 0; i < row_bytes; ++i) ASSERT_EQ(d[i], 0) << geom_str(g) << " padded slot " << s;
            } else {
              ASSERT_EQ(std::memcmp(d, src.data() + static_cast<size_t>(b * rbs + r * rl.row_stride) * esz, row_bytes),
                        0)
                  << geom_str(g) << " slot " << s;
            }
            for (size_t i = row_bytes; i < static_cast<size_t>(tl.row_stride) * esz; ++i)
              ASSERT_EQ(d[i], 0xA5) << "tile wrote into the row gap";
          }

        std::vector<uint8_t> back(src.size(), 0xA5);
        StaPermuteParams u = permute_params(g, false, dt, batch, rl.row_elems, tl.row_stride, tbs, rl.row_stride, rbs);
        u.src = tiled.data();
        u.dst = back.data();
        sta_permute(u, Stream::cpu());
        ASSERT_EQ(back, src) << geom_str(g) << " " << dtype_name(dt) << " row " << rl.row_elems;
        ++cases;
      }
  EXPECT_EQ(cases, 3 * 6 * 5);
}

// Uploads raw bytes into a device buffer of `elems` elements (plus `shift` leading elements).
Tensor upload_bytes(const std::vector<uint8_t>& bytes, DType dt, Device dev, int64_t shift) {
  const int64_t elems = static_cast<int64_t>(bytes.size() / dtype_size(dt)) + shift;
  Tensor t = Tensor::zeros({elems}, dt, dev);
  rt::copy_bytes(static_cast<char*>(t.data()) + shift * dtype_size(dt), dev, bytes.data(), Device::cpu(), bytes.size(),
                 rt::current_stream(dev));
  return t;
}
std::vector<uint8_t> download_bytes(const Tensor& t, DType dt, int64_t shift, size_t n) {
  std::vector<uint8_t> out(n);
  rt::copy_bytes(out.data(), Device::cpu(), static_cast<const char*>(t.data()) + shift * dtype_size(dt), t.device(), n,
                 rt::current_stream(t.device()));
  return out;
}

TEST(StaPermute, CudaMatchesCpuBitForBit) {
  STAVID_REQUIRE_CUDA();
  const Device dev = Device::cuda(0);
  const std::pair<std::array<int32_t, 3>, std::array<int32_t, 3>> shapes[] = {
      {{3, 5, 7}, {2, 2, 2}}, {{6, 16, 16}, {2, 8, 8}}, {{7, 10, 12}, {2, 8, 8}}, {{1, 1, 1}, {1, 1, 1}}};
  // (row_elems, row_stride, batch_pad, base shift in elements): vector-friendly and not.
  struct Layout {
    PermuteLayout l;
    int64_t shift;
  };
  const Layout layouts[] = {{{8, 8, 0}, 0},   {{64, 64, 8}, 0},    {{256, 264, 0}, 0}, {{20, 24, 0}, 0},
                            {{13, 13, 0}, 0}, {{8, 8, 0}, 1},      {{16, 20, 1}, 0},   {{1, 1, 0}, 0},
                            {{4, 4, 0}, 0},   {{3072, 3072, 0}, 0}};
  int cases = 0;
  for (DType dt : kAllTypes)
    for (size_t si = 0; si < std::size(shapes); ++si)
      for (const Layout& lay : layouts) {
        const StaGeometry g = geom(shapes[si].first, shapes[si].second, si == 1 ? 77 : 5, si == 1 ? 50 : 5);
        const int32_t batch = 2;
        const int64_t raster_rows = g.img_tokens() + g.text_slots;
        const size_t esz = dtype_size(dt);
        for (bool to_tiled : {true, false}) {
          const int64_t src_rows = to_tiled ? raster_rows : g.seq_len();
          const int64_t dst_rows = to_tiled ? g.seq_len() : raster_rows;
          int64_t sbs = 0;
          const auto src = random_rows(batch, src_rows, lay.l, dt, 100 + cases, &sbs);
          const int64_t dbs = dst_rows * lay.l.row_stride + lay.l.batch_pad;
          const std::vector<uint8_t> dst0(static_cast<size_t>(batch * dbs) * esz, 0xA5);
          StaPermuteParams p =
              permute_params(g, to_tiled, dt, batch, lay.l.row_elems, lay.l.row_stride, sbs, lay.l.row_stride, dbs);
          std::vector<uint8_t> cpu = dst0;
          p.src = src.data();
          p.dst = cpu.data();
          p.device = Device::cpu();
          sta_permute(p, Stream::cpu());

          Tensor dsrc = upload_bytes(src, dt, dev, lay.shift), ddst = upload_bytes(dst0, dt, dev, lay.shift);
          p.src = static_cast<const char*>(dsrc.data()) + lay.shift * esz;
          p.dst = static_cast<char*>(ddst.data()) + lay.shift * esz;
          p.device = dev;
          sta_permute(p, rt::current_stream(dev));
          const auto gpu = download_bytes(ddst, dt, lay.shift, dst0.size());
          ASSERT_EQ(gpu, cpu) << geom_str(g) << " " << dtype_name(dt) << " row " << lay.l.row_elems << " stride "
                              << lay.l.row_stride << " shift " << lay.shift << (to_tiled ? " tile" : " untile");
          ++cases;
        }
      }
  EXPECT_EQ(cases, 3 * 4 * 10 * 2);
}

// ---------------- attention: reference, buffers, runner ----------------

enum class Layout { Bhsd, Bshd, BhsdPadded };

struct AttnCase {
  std::array<int32_t, 3> canvas, tile;
  int32_t text_slots = 0, text_valid = 0;
  std::vector<StaWindow> windows;  // one per head
  int32_t head_dim = 64;
  int32_t batch = 2;
  Layout layout = Layout::Bhsd;
  Layout out_layout = Layout::Bhsd;
  float scale = 0.f;
  bool set_host_windows = true;

  int32_t heads() const { return static_cast<int32_t>(windows.size()); }
  std::string str(DType dt) const {
    std::string w;
    for (const StaWindow& x : windows) w += window_str(x);
    return detail::str_cat(dtype_name(dt), " canvas ", canvas[0], "x", canvas[1], "x", canvas[2], " tile ", tile[0],
                           "x", tile[1], "x", tile[2], " text ", text_slots, "/", text_valid, " d ", head_dim,
                           " batch ", batch, " layout ", int(layout), "/", int(out_layout), " windows ", w);
  }
};

// Strides (batch, head, seq) of a [B, H, S, D] tensor stored in `layout`; `pad` elements of slack
// in the padded layout. Returns the element count that holds it.
int64_t layout_strides(Layout layout, int64_t b, int64_t h, int64_t s, int64_t d, int64_t pad, int64_t st[3]) {
  switch (layout) {
    case Layout::Bhsd:
      st[2] = d;
      st[1] = s * d;
      st[0] = h * s * d;
      break;
    case Layout::Bshd:
      st[2] = h * d;
      st[1] = d;
      st[0] = s * h * d;
      break;
    case Layout::BhsdPadded:
      st[2] = d + pad;
      st[1] = s * st[2] + pad;
      st[0] = h * st[1] + pad;
      break;
  }
  return (b - 1) * st[0] + (h - 1) * st[1] + (s - 1) * st[2] + d;
}

// A strided attention tensor on a device between guard regions.
struct AttnBuffer {
  Tensor whole;
  int64_t st[3] = {0, 0, 0};
  int64_t b, h, s, d, span;
  DType dt;

  AttnBuffer(Layout layout, int64_t b_, int64_t h_, int64_t s_, int64_t d_, int64_t pad, DType dt_)
      : b(b_), h(h_), s(s_), d(d_), dt(dt_) {
    span = layout_strides(layout, b, h, s, d, pad, st);
  }
  int64_t at(int64_t bi, int64_t hi, int64_t si, int64_t c) const {
    return kGuard + bi * st[0] + hi * st[1] + si * st[2] + c;
  }
  // Logical [B, H, S, D] values placed at their strided positions; `fill` everywhere else.
  void upload(const std::vector<float>& logical, float fill, float guard, Device dev) {
    std::vector<float> host(static_cast<size_t>(span + 2 * kGuard), fill);
    std::fill(host.begin(), host.begin() + kGuard, guard);
    std::fill(host.end() - kGuard, host.end(), guard);
    if (!logical.empty())
      for (int64_t bi = 0; bi < b; ++bi)
        for (int64_t hi = 0; hi < h; ++hi)
          for (int64_t si = 0; si < s; ++si)
            for (int64_t c = 0; c < d; ++c) host[at(bi, hi, si, c)] = logical[((bi * h + hi) * s + si) * d + c];
    whole = Tensor::from_host(host, {span + 2 * kGuard}, dt, dev);
  }
  void* data() const { return static_cast<char*>(whole.data()) + kGuard * dtype_size(dt); }
  // Logical values; fails the test if a guard changed.
  std::vector<float> download() const {
    const auto host = whole.to_host_f32();
    for (int64_t i = 0; i < kGuard; ++i) {
      EXPECT_EQ(host[i], kSentinel) << "guard before the output overwritten at " << i;
      EXPECT_EQ(host[kGuard + span + i], kSentinel) << "guard after the output overwritten at " << i;
    }
    std::vector<float> out(static_cast<size_t>(b * h * s * d));
    for (int64_t bi = 0; bi < b; ++bi)
      for (int64_t hi = 0; hi < h; ++hi)
        for (int64_t si = 0; si < s; ++si)
          for (int64_t c = 0; c < d; ++c) out[((bi * h + hi) * s + si) * d + c] = host[at(bi, hi, si, c)];
    return out;
  }
};

struct AttnInputs {
  StaGeometry g;
  std::vector<float> q, k, v;  // logical [B, H, S, D], rounded through the dtype
};

AttnInputs make_inputs(const AttnCase& c, DType dt, uint32_t seed) {
  AttnInputs in;
  in.g = geom(c.canvas, c.tile, c.text_slots, c.text_valid);
  const size_t n = static_cast<size_t>(c.batch) * c.heads() * in.g.seq_len() * c.head_dim;
  in.q = random_values(n, seed, dt, -2.f, 2.f);
  in.k = random_values(n, seed + 1, dt);
  in.v = random_values(n, seed + 2, dt);
  return in;
}

// The fp64 dense reference over the oracle's mask, and the naive 16-bit baseline of the FA3 rule
// (scores rounded to the dtype, softmax in fp32, probabilities rounded, P.V accumulated in fp32,
// output rounded). A row with no visible key is defined as zeros.
struct Reference {
  std::vector<double> ref;
  std::vector<float> naive;
};

Reference reference(const AttnCase& c, const AttnInputs& in, DType dt) {
  const StaGeometry& g = in.g;
  const int64_t seq = g.seq_len(), d = c.head_dim, heads = c.heads();
  const double scale = c.scale != 0.f ? c.scale : 1.0 / std::sqrt(static_cast<double>(d));
  Reference r;
  r.ref.assign(in.q.size(), 0.0);
  r.naive.assign(in.q.size(), 0.f);
  std::vector<int64_t> keys;
  std::vector<double> sc, p64;
  std::vector<float> p16;
  std::vector<double> acc(static_cast<size_t>(d));
  std::vector<float> acc16(static_cast<size_t>(d));
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t base = (b * heads + h) * seq * d;
      for (int64_t q = 0; q < seq; ++q) {
        keys.clear();
        for (int64_t k = 0; k < seq; ++k)
          if (sta_visible(g, c.windows[h], q, k)) keys.push_back(k);
        if (keys.empty()) continue;
        const float* qr = &in.q[base + q * d];
        sc.resize(keys.size());
        double mx = -INFINITY;
        float mx16 = -INFINITY;
        for (size_t j = 0; j < keys.size(); ++j) {
          const float* kr = &in.k[base + keys[j] * d];
          double s = 0;
          for (int64_t i = 0; i < d; ++i) s += static_cast<double>(qr[i]) * kr[i];
          sc[j] = s * scale;
          mx = std::max(mx, sc[j]);
          mx16 = std::max(mx16, round_to(dt, static_cast<float>(sc[j])));
        }
        p64.resize(keys.size());
        p16.resize(keys.size());
        double sum = 0;
        float sum16 = 0;
        for (size_t j = 0; j < keys.size(); ++j) {
          p64[j] = std::exp(sc[j] - mx);
          sum += p64[j];
          p16[j] = std::exp(round_to(dt, static_cast<float>(sc[j])) - mx16);
          sum16 += p16[j];
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        std::fill(acc16.begin(), acc16.end(), 0.f);
        for (size_t j = 0; j < keys.size(); ++j) {
          const float* vr = &in.v[base + keys[j] * d];
          const double pj = p64[j] / sum;
          const float pj16 = round_to(dt, p16[j] / sum16);
          for (int64_t i = 0; i < d; ++i) {
            acc[i] += pj * vr[i];
            acc16[i] += pj16 * vr[i];
          }
        }
        for (int64_t i = 0; i < d; ++i) {
          r.ref[base + q * d + i] = acc[i];
          r.naive[base + q * d + i] = round_to(dt, acc16[i]);
        }
      }
    }
  return r;
}

// Runs sta_attention on `dev`; returns the logical [B, H, S, D] output.
std::vector<float> run_attention(const AttnCase& c, const AttnInputs& in, DType dt, Device dev, StaKernel* kernel) {
  const int64_t seq = in.g.seq_len();
  const int64_t pad = dev.is_cuda() ? 8 : 3;
  AttnBuffer q(c.layout, c.batch, c.heads(), seq, c.head_dim, pad, dt), k = q, v = q;
  AttnBuffer o(c.out_layout, c.batch, c.heads(), seq, c.head_dim, pad, dt);
  // Inputs: NaN in the layout's gaps and guards (a read there poisons the result); output: NaN
  // payload, sentinel guards.
  q.upload(in.q, kNaN, kNaN, dev);
  k.upload(in.k, kNaN, kNaN, dev);
  v.upload(in.v, kNaN, kNaN, dev);
  o.upload({}, kNaN, kSentinel, dev);

  StaAttentionParams p;
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.o = o.data();
  std::copy(q.st, q.st + 3, p.q_stride);
  std::copy(k.st, k.st + 3, p.k_stride);
  std::copy(v.st, v.st + 3, p.v_stride);
  std::copy(o.st, o.st + 3, p.o_stride);
  p.batch = c.batch;
  p.heads = c.heads();
  p.head_dim = c.head_dim;
  p.geom = in.g;
  p.softmax_scale = c.scale;
  p.dtype = dt;
  p.device = dev;
  Tensor dev_windows;
  if (dev.is_cuda()) {
    dev_windows = Tensor::zeros({3 * c.heads()}, DType::F32, dev);  // 12 bytes per StaWindow
    static_assert(sizeof(StaWindow) == 3 * sizeof(float));
    rt::copy_bytes(dev_windows.data(), dev, c.windows.data(), Device::cpu(), c.windows.size() * sizeof(StaWindow),
                   rt::current_stream(dev));
    p.windows = static_cast<const StaWindow*>(dev_windows.data());
  } else {
    p.windows = c.windows.data();
  }
  p.host_windows = c.set_host_windows || dev.is_cuda() ? c.windows.data() : nullptr;
  *kernel = select_sta_kernel(p);
  sta_attention(p, rt::current_stream(dev));
  return o.download();
}

// Compared rows: real image slots and every text row (text rows past text_valid are defined too).
std::vector<int64_t> used_rows(const StaGeometry& g) {
  std::vector<int64_t> rows;
  for (int64_t s = 0; s < g.seq_len(); ++s)
    if (!is_padded_slot(g, s)) rows.push_back(s);
  return rows;
}

struct Compared {
  std::vector<float> out, naive;
  std::vector<double> ref;
  int64_t non_finite = 0;
};

Compared gather_used(const AttnCase& c, const StaGeometry& g, const std::vector<float>& out, const Reference& r) {
  Compared cmp;
  const int64_t seq = g.seq_len(), d = c.head_dim;
  const auto rows = used_rows(g);
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads(); ++h)
      for (int64_t s : rows)
        for (int64_t i = 0; i < d; ++i) {
          const size_t idx = static_cast<size_t>(((b * c.heads() + h) * seq + s) * d + i);
          cmp.out.push_back(out[idx]);
          cmp.ref.push_back(r.ref[idx]);
          cmp.naive.push_back(r.naive[idx]);
          cmp.non_finite += !std::isfinite(out[idx]);
        }
  return cmp;
}

double max_abs_err(const std::vector<float>& a, const std::vector<double>& ref) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - ref[i]));
  return m;
}

constexpr double kFa3Atol = 1e-3;

// ---------------- CPU attention ----------------

std::vector<AttnCase> cpu_cases() {
  std::vector<AttnCase> cs;
  auto add = [&](AttnCase c) { cs.push_back(std::move(c)); };
  add({{6, 8, 8}, {2, 4, 4}, 0, 0, {{1, 1, 1}, {3, 1, 1}, {1, 2, 2}}, 64});
  add({{5, 7, 11}, {2, 3, 4}, 13, 7, {{1, 1, 1}, {3, 3, 3}, {2, 2, 2}}, 8});
  add({{3, 5, 7}, {2, 2, 2}, 5, 0, {{1, 3, 1}, {9, 9, 9}}, 64, 2, Layout::Bshd, Layout::Bhsd});
  add({{3, 5, 7}, {1, 1, 1}, 1, 1, {{3, 3, 3}, {1, 5, 2}, {2, 1, 7}}, 128, 2, Layout::Bhsd, Layout::Bshd});
  add({{1, 1, 1}, {1, 1, 1}, 3, 2, {{1, 1, 1}}, 8});
  add({{1, 1, 1}, {2, 2, 2}, 0, 0, {{1, 1, 1}, {2, 2, 2}}, 8});
  add({{0, 4, 4}, {1, 2, 2}, 9, 5, {{1, 1, 1}}, 16});
  add({{0, 4, 4}, {1, 2, 2}, 4, 0, {{1, 1, 1}}, 16});  // no key at all: zeros
  add({{4, 6, 10},
       {2, 2, 2},
       16,
       16,
       {{1, 1, 1}, {1, 3, 3}, {2, 3, 5}, {1, 1, 5}},
       64,
       2,
       Layout::BhsdPadded,
       Layout::BhsdPadded,
       0.3f});
  add({{7, 10, 12}, {2, 8, 8}, 0, 0, {{3, 1, 1}, {1, 1, 1}}, 32, 2, Layout::Bshd, Layout::Bshd});
  add({{6, 16, 16}, {2, 8, 8}, 77, 50, {{1, 1, 1}, {3, 1, 1}}, 64});
  add({{2, 9, 6}, {3, 2, 2}, 6, 6, {{1, 1, 1}, {5, 3, 1}, {1, 6, 2}}, 128, 2, Layout::BhsdPadded, Layout::Bhsd});
  AttnCase no_host = cs[1];
  no_host.set_host_windows = false;
  add(no_host);
  return cs;
}

TEST(StaAttentionCpu, MatchesFp64Reference) {
  int checked = 0;
  uint32_t seed = 1000;
  for (const AttnCase& c : cpu_cases())
    for (DType dt : kAllTypes) {
      const AttnInputs in = make_inputs(c, dt, seed += 3);
      StaKernel kernel{};
      const auto out = run_attention(c, in, dt, Device::cpu(), &kernel);
      EXPECT_EQ(kernel, StaKernel::Cpu);
      ASSERT_TRUE(test::all_finite(out)) << c.str(dt) << ": NaN or Inf in the output (padded rows included)";
      const Reference r = reference(c, in, dt);
      const Compared cmp = gather_used(c, in.g, out, r);
      ASSERT_FALSE(cmp.out.empty());
      if (dt == DType::F32) {
        EXPECT_LE(nmse(cmp.out, cmp.ref), 1e-10) << c.str(dt);
      } else {
        const double err = max_abs_err(cmp.out, cmp.ref), base = max_abs_err(cmp.naive, cmp.ref);
        EXPECT_LE(err, 2 * base + kFa3Atol) << c.str(dt) << " naive16 err " << base;
        EXPECT_LE(nmse(cmp.out, cmp.ref), test::dtype_nmse_tol(dt)) << c.str(dt);
      }
      ++checked;
    }
  EXPECT_EQ(checked, 13 * 3);
}

TEST(StaAttentionCpu, NoKeyGivesZerosAndTextRowsAreDense) {
  // Text-only attention with no valid text: every row sees nothing and is zero.
  AttnCase c{{0, 4, 4}, {1, 2, 2}, 4, 0, {{1, 1, 1}}, 16, 1};
  const AttnInputs in = make_inputs(c, DType::F32, 77);
  StaKernel kernel{};
  const auto out = run_attention(c, in, DType::F32, Device::cpu(), &kernel);
  for (float x : out) ASSERT_EQ(x, 0.f);

  // A text row's output does not depend on the head's window.
  AttnCase a{{4, 4, 4}, {2, 2, 2}, 3, 2, {{1, 1, 1}, {3, 3, 3}}, 8, 1};
  AttnInputs ia = make_inputs(a, DType::F32, 78);
  for (int64_t s = 0; s < ia.g.seq_len(); ++s)
    for (int64_t i = 0; i < 8; ++i) {
      const int64_t h1 = (ia.g.seq_len() + s) * 8 + i, h0 = s * 8 + i;
      ia.q[h1] = ia.q[h0];
      ia.k[h1] = ia.k[h0];
      ia.v[h1] = ia.v[h0];
    }
  const auto oa = run_attention(a, ia, DType::F32, Device::cpu(), &kernel);
  for (int64_t s = ia.g.img_slots; s < ia.g.seq_len(); ++s)
    for (int64_t i = 0; i < 8; ++i) EXPECT_EQ(oa[s * 8 + i], oa[(ia.g.seq_len() + s) * 8 + i]);
}

// ---------------- CUDA attention ----------------

std::vector<AttnCase> cuda_cases() {
  std::vector<AttnCase> cs;
  auto add = [&](AttnCase c) { cs.push_back(std::move(c)); };
  // Paper-like shape scaled down: 128-token tiles, mixed per-head windows.
  add({{6, 16, 16}, {2, 8, 8}, 0, 0, {{1, 1, 1}, {3, 1, 1}, {1, 2, 2}, {3, 3, 3}}, 128});
  // Non-divisible canvas, 77 text slots (not a multiple of 64), 50 valid.
  add({{7, 10, 12}, {2, 8, 8}, 77, 50, {{1, 1, 1}, {3, 1, 1}}, 64});
  // 64-token tiles, 256 text slots with 200 valid, even windows.
  add({{4, 16, 24}, {1, 8, 8}, 256, 200, {{3, 1, 3}, {1, 2, 2}, {2, 3, 1}}, 64, 2, Layout::Bshd, Layout::Bshd});
  // 384-token tiles (the original's), one text slot.
  add({{6, 8, 16}, {6, 8, 8}, 1, 1, {{1, 1, 1}, {1, 1, 3}}, 128});
  // 192-token tiles, text slots with no valid text.
  add({{3, 16, 16}, {3, 8, 8}, 256, 0, {{1, 1, 1}, {1, 3, 1}}, 128, 2, Layout::Bshd, Layout::Bhsd});
  // Dense (full window), all 77 text slots valid: the last text block runs past the sequence.
  add({{2, 16, 16}, {2, 8, 8}, 77, 77, {{5, 6, 10}, {5, 6, 10}}, 64, 2, Layout::BhsdPadded, Layout::BhsdPadded});
  // Non-divisible canvas with 64-token tiles and padded tiles on two axes, 1 text slot valid of 64.
  add({{5, 11, 13}, {1, 8, 8}, 64, 1, {{3, 3, 3}, {1, 1, 1}, {5, 2, 1}}, 128, 2, Layout::BhsdPadded, Layout::Bhsd});
  // Sharper softmax through the scale.
  add({{4, 16, 16}, {2, 8, 8}, 32, 20, {{1, 3, 3}, {3, 1, 1}}, 64, 2, Layout::Bhsd, Layout::Bhsd, 0.5f});
  return cs;
}

// Sets an environment variable (STAVID_STA_HOPPER...) for one scope and restores the previous value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_) setenv(name_, old_.c_str(), 1);
    else unsetenv(name_);
  }

 private:
  const char* name_;
  bool had_ = false;
  std::string old_;
};

TEST(StaAttentionCuda, MatchesFp64ReferenceFa3Rule) {
  STAVID_REQUIRE_CUDA();
  // The portable kernels (the Hopper kernel, the default on compute capability 9.0, has its own test).
  ScopedEnv portable("STAVID_STA_HOPPER", "0");
  int checked = 0;
  uint32_t seed = 5000;
  for (const AttnCase& c : cuda_cases())
    for (DType dt : {DType::BF16, DType::F16}) {
      const AttnInputs in = make_inputs(c, dt, seed += 3);
      StaKernel kernel{};
      const auto out = run_attention(c, in, dt, Device::cuda(0), &kernel);
      EXPECT_TRUE(kernel == StaKernel::PortableM128 || kernel == StaKernel::PortableM64) << sta_kernel_name(kernel);
      const Reference r = reference(c, in, dt);
      const Compared cmp = gather_used(c, in.g, out, r);
      ASSERT_EQ(cmp.non_finite, 0) << c.str(dt) << " [" << sta_kernel_name(kernel)
                                   << "]: outputs not written or not finite";
      const double err = max_abs_err(cmp.out, cmp.ref), base = max_abs_err(cmp.naive, cmp.ref);
      EXPECT_LE(err, 2 * base + kFa3Atol) << c.str(dt) << " [" << sta_kernel_name(kernel) << "] naive16 err " << base;
      EXPECT_LE(nmse(cmp.out, cmp.ref), 5e-4) << c.str(dt) << " [" << sta_kernel_name(kernel) << "]";
      ++checked;
    }
  EXPECT_EQ(checked, 8 * 2);
}

// ---------------- the Hopper kernel (issue 9) ----------------


// Cases the Hopper kernel takes: bf16 and fp16, d = 128 and 64, tiles of 128 / 384 tokens (128-row
// CTAs) and 64 / 192 tokens (64-row CTAs), any per-head windows (dense and sparse mixed in one
// launch), padded canvases, text slots. Outputs must follow the same FA3 rule as the portable
// kernel. Canvases stay small: the fp64 reference dominates the test's time.
struct HopperCase {
  AttnCase c;
  DType dt = DType::BF16;
};
[[maybe_unused]] std::vector<HopperCase> hopper_cases() {
  std::vector<HopperCase> cs;
  auto add = [&](AttnCase c, DType dt = DType::BF16) { cs.push_back({std::move(c), dt}); };
  // 128-token tiles, grid 1x2x2 (512 keys: 4 visits, the 2-stage ring wraps twice), 2 heads.
  add({{2, 16, 16}, {2, 8, 8}, 0, 0, {{5, 6, 10}, {1, 3, 3}}, 128, 2});
  // 384-token tiles (the paper's), grid 1x1x2, [batch, seq, heads, dim] layout, sharper softmax.
  add({{6, 8, 16}, {6, 8, 8}, 0, 0, {{1, 1, 3}, {1, 1, 2}, {9, 9, 9}}, 128, 2, Layout::Bshd, Layout::Bshd, 0.5f});
  // Padded strides, one batch item, a longer key loop (grid 2x2x4: 16 tiles x 128 = 2048 keys).
  add({{4, 16, 32}, {2, 8, 8}, 0, 0, {{3, 3, 7}}, 128, 1, Layout::BhsdPadded, Layout::BhsdPadded});
  // Sparse: grid 3x3x4 of 128-token tiles, windows clamped at the borders, mixed per head
  // (a 1-tile window, an even window, the calibrated shapes, a full one).
  add({{6, 24, 32}, {2, 8, 8}, 0, 0, {{1, 1, 1}, {3, 3, 3}, {2, 2, 4}, {3, 1, 3}, {5, 6, 10}}, 128, 1});
  // Sparse with the paper's 384-token tile: grid 3x3x3, (3,3,3) at the borders and (1,3,1), batch 2.
  add({{18, 24, 24}, {6, 8, 8}, 0, 0, {{3, 3, 3}, {1, 3, 1}}, 128, 2, Layout::Bshd, Layout::Bshd});
  // Padded canvas: 5x20x28 on 2x8x8 tiles is a 3x3x4 grid padded on every axis (masked key blocks
  // in 24 of 36 tiles), windows clamped at the borders.
  add({{5, 20, 28}, {2, 8, 8}, 0, 0, {{3, 3, 3}, {1, 1, 1}}, 128, 1});
  // Text, 50 of 77 slots valid: one text key block, masked, running past the sequence; one text
  // query block (rows past the sequence not written).
  add({{2, 16, 16}, {2, 8, 8}, 77, 50, {{1, 1, 1}, {3, 3, 3}}, 128, 1});
  // Every text slot valid (200 of 200): the second text block is masked only past the sequence.
  add({{4, 16, 16}, {2, 8, 8}, 200, 200, {{1, 1, 1}, {5, 6, 10}}, 128, 1});
  // One valid text slot of 64.
  add({{4, 16, 16}, {2, 8, 8}, 64, 1, {{1, 3, 1}}, 128, 1});
  // Text + padding + mixed windows: grid 3x2x3 padded on every axis, 120 of 150 text slots valid,
  // [batch, seq, heads, dim] layout, batch 2 (text CTAs of 6 batch x heads first in the grid).
  add({{5, 13, 20}, {2, 8, 8}, 150, 120, {{3, 3, 3}, {1, 3, 1}, {2, 2, 2}}, 128, 2, Layout::Bshd, Layout::Bshd});
  // 384-token tiles padded in t (3 of 6 frames: the tile's third 128-key block holds no real key)
  // and in h, with text; padded strides.
  add({{9, 12, 16}, {6, 8, 8}, 40, 33, {{1, 1, 1}, {3, 1, 3}}, 128, 1, Layout::BhsdPadded, Layout::BhsdPadded});
  // Text only (no image frame): text query blocks over the valid text keys alone.
  add({{0, 8, 16}, {2, 8, 8}, 200, 150, {{1, 1, 1}}, 128, 1});
  // fp16 with text and padding.
  add({{5, 13, 20}, {2, 8, 8}, 150, 120, {{3, 3, 3}, {1, 3, 1}}, 128, 1}, DType::F16);
  // d = 64 (one TMA box per row, m64n64 P V), text and padding, [batch, seq, heads, dim], batch 2.
  add({{3, 16, 20}, {2, 8, 8}, 64, 40, {{1, 1, 1}, {3, 3, 3}}, 64, 2, Layout::Bshd, Layout::Bshd});
  // d = 64 in fp16, padded strides, a dense and a sparse head.
  add({{4, 16, 16}, {2, 8, 8}, 77, 50, {{1, 3, 1}, {5, 6, 10}}, 64, 1, Layout::BhsdPadded, Layout::BhsdPadded},
      DType::F16);
  // 64-token tiles (64-row CTAs, 64-key blocks), grid 3x2x3 padded in h and w, text.
  add({{3, 13, 20}, {1, 8, 8}, 100, 70, {{3, 3, 3}, {1, 1, 1}}, 128, 1});
  // 192-token tiles (the 720p tile 3x8x8), grid 2x2x2 padded in t and h, text.
  add({{5, 13, 16}, {3, 8, 8}, 40, 33, {{1, 1, 1}, {3, 3, 3}}, 128, 1});
  // 192-token tiles, fp16, d = 64, batch 2.
  add({{7, 9, 16}, {3, 8, 8}, 0, 0, {{3, 1, 1}, {1, 3, 3}}, 64, 2}, DType::F16);
  // The unmasked instance (launch_needs_masks false: canvas divisible by the tile, text_valid a
  // multiple of BN) with text, which every default variant but "masked" runs for such launches and
  // which no case above reaches with text or with 64-row CTAs: text query blocks (the second runs
  // past the sequence), text slots past text_valid never visited.
  // 64-row CTAs (192-token tiles, grid 1x2x2, BN = 64): 64 of 100 text slots valid.
  add({{3, 16, 16}, {3, 8, 8}, 100, 64, {{3, 3, 3}, {1, 1, 1}}, 128, 1});
  // 128-row CTAs, fp16, d = 64, batch 2: 128 of 256 text slots valid.
  add({{2, 16, 16}, {2, 8, 8}, 256, 128, {{1, 1, 1}, {3, 3, 3}}, 64, 2, Layout::Bshd, Layout::Bshd}, DType::F16);
  return cs;
}

TEST(StaSelector, HopperWhenEnabledAndSupported) {
  alignas(16) static char buf[256];
  const std::vector<StaWindow> dense(2, StaWindow{5, 6, 10}), sparse(2, StaWindow{3, 3, 3});
  StaAttentionParams p;
  p.q = p.k = p.v = buf;
  p.o = buf + 128;
  p.heads = 2;
  p.head_dim = 128;
  p.geom = geom({10, 48, 80}, {2, 8, 8});  // grid 5 x 6 x 10, 128-token tiles
  p.host_windows = dense.data();
  p.windows = dense.data();
  EXPECT_TRUE(detail::sta_hopper_supports(p));
  {
    StaAttentionParams q = p;
    q.host_windows = sparse.data();
    EXPECT_TRUE(detail::sta_hopper_supports(q)) << "(3,3,3) on a 5x6x10 grid: sparse, whole tiles";
    q = p;
    q.host_windows = nullptr;
    EXPECT_TRUE(detail::sta_hopper_supports(q)) << "windows unknown on the host: any window runs";
    q = p;
    q.dtype = DType::F16;
    EXPECT_TRUE(detail::sta_hopper_supports(q)) << "fp16";
    q = p;
    q.head_dim = 64;
    EXPECT_TRUE(detail::sta_hopper_supports(q)) << "d = 64";
    q = p;
    q.head_dim = 96;
    EXPECT_FALSE(detail::sta_hopper_supports(q)) << "d = 96";
    q = p;
    q.dtype = DType::F32;
    EXPECT_FALSE(detail::sta_hopper_supports(q)) << "fp32";
    q = p;
    q.geom = geom({10, 48, 80}, {2, 8, 8}, 256, 200);
    EXPECT_TRUE(detail::sta_hopper_supports(q)) << "text slots";
    q = p;
    q.geom = geom({10, 45, 80}, {2, 8, 8});
    EXPECT_TRUE(detail::sta_hopper_supports(q)) << "padded tiles";
    q = p;
    q.geom = geom({33, 45, 80}, {6, 8, 8}, 256, 200);
    EXPECT_TRUE(detail::sta_hopper_supports(q)) << "720p canvas, 384-token tiles, text";
    q = p;
    q.geom = geom({0, 8, 16}, {2, 8, 8}, 77, 50);
    EXPECT_TRUE(detail::sta_hopper_supports(q)) << "text only";
    q = p;
    q.geom = geom({33, 45, 80}, {3, 8, 8});
    EXPECT_TRUE(detail::sta_hopper_supports(q)) << "720p canvas, 192-token tiles";
    q = p;
    q.geom = geom({10, 48, 80}, {1, 8, 8});
    EXPECT_TRUE(detail::sta_hopper_supports(q)) << "64-token tiles";
    q = p;
    q.geom = geom({10, 48, 80}, {1, 4, 8});
    EXPECT_FALSE(detail::sta_hopper_supports(q)) << "32-token tiles";
  }
  // With the switch off the portable kernels run, whatever the device.
  ScopedEnv off("STAVID_STA_HOPPER", "0");
  p.device = Device::cuda(0);
  for (int64_t* s : {p.q_stride, p.k_stride, p.v_stride, p.o_stride}) {
    s[0] = 2 * p.geom.seq_len() * 128;
    s[1] = p.geom.seq_len() * 128;
    s[2] = 128;
  }
  EXPECT_EQ(select_sta_kernel(p), StaKernel::PortableM128);
}

TEST(StaSelector, HopperVariantFromEnvironment) {
  {
    ScopedEnv unset("STAVID_STA_HOPPER_VARIANT", "");
    EXPECT_EQ(detail::sta_hopper_variant().kind, detail::StaHopperVariant::Auto) << "the default";
  }
  for (const char* name : {"auto", "masked", "lean", "skip", "persist", "persist:3", "deep", "pingpong",
                           "pingpong-deep", "tail", "overlap", "overlap-pp", "overlap-pp-masked"}) {
    ScopedEnv v("STAVID_STA_HOPPER_VARIANT", name);
    EXPECT_EQ(detail::sta_hopper_variant_name(detail::sta_hopper_variant()), name);
  }
  {
    ScopedEnv v("STAVID_STA_HOPPER_VARIANT", "persist:3");
    EXPECT_EQ(detail::sta_hopper_variant().max_ctas, 3);
  }
  for (const char* bad : {"fast", "lean:2", "auto:1", "persist:0", "persist:", "persist:3x", "deep:2", "pingpong:2",
                          "ping-pong", "pingpong-deep:2", "tail:1", "overlap:2", "overlap-pingpong"}) {
    ScopedEnv v("STAVID_STA_HOPPER_VARIANT", bad);
    EXPECT_THROW(detail::sta_hopper_variant(), Error) << bad;
  }
}

// "auto" (the default variant) picks per launch: FA3's overlapped, ping-ponging consumers on 128-row
// CTAs (every launch kind), and on 64-row CTAs the persistent grid for heads with different windows,
// block skipping otherwise; a named variant is kept as it is.
TEST(StaSelector, HopperAutoResolution) {
  using V = detail::StaHopperVariant;
  const std::vector<StaWindow> same(2, StaWindow{3, 3, 3});
  const std::vector<StaWindow> mixed = {StaWindow{3, 3, 3}, StaWindow{5, 1, 10}};
  auto resolve = [&](StaGeometry g, const std::vector<StaWindow>* w, V v = V{}) {
    StaAttentionParams p;
    p.heads = 2;
    p.head_dim = 128;
    p.geom = g;
    p.host_windows = w ? w->data() : nullptr;
    return detail::sta_hopper_resolve(p, v).kind;
  };
  const V::Kind pp = V::OverlapPingPong;
  EXPECT_EQ(resolve(geom({10, 48, 80}, {2, 8, 8}), &same), pp) << "whole 128-token tiles, no text";
  EXPECT_EQ(resolve(geom({10, 48, 80}, {2, 8, 8}, 256, 256), &same), pp) << "text filling key blocks";
  EXPECT_EQ(resolve(geom({10, 48, 80}, {2, 8, 8}, 256, 200), &same), pp) << "200 of 256 text slots";
  EXPECT_EQ(resolve(geom({10, 48, 80}, {2, 8, 8}, 256, 200), &mixed), pp) << "text tail, mixed windows";
  EXPECT_EQ(resolve(geom({33, 45, 80}, {6, 8, 8}, 256, 200), &same), pp) << "text on a padded canvas";
  EXPECT_EQ(resolve(geom({10, 48, 80}, {1, 8, 8}, 256, 200), &same), V::Skip) << "text tail, 64-row CTAs";
  EXPECT_EQ(resolve(geom({33, 45, 80}, {6, 8, 8}), &same), pp) << "padded canvas, 384-token tiles";
  EXPECT_EQ(resolve(geom({33, 45, 80}, {3, 8, 8}), &same), V::Skip) << "padded canvas, 64-row CTAs";
  EXPECT_EQ(resolve(geom({10, 48, 80}, {2, 8, 8}), &mixed), pp) << "different windows, 128-row CTAs";
  EXPECT_EQ(resolve(geom({10, 48, 80}, {1, 8, 8}), &mixed), V::Persist) << "different windows, 64-row CTAs";
  EXPECT_EQ(resolve(geom({10, 48, 80}, {1, 8, 8}), nullptr), V::Skip) << "windows unknown on the host";
  EXPECT_EQ(resolve(geom({10, 48, 80}, {2, 8, 8}), nullptr), pp) << "windows unknown, 128-row CTAs";
  EXPECT_EQ(resolve(geom({33, 45, 80}, {6, 8, 8}), &mixed), pp) << "padded canvas, different windows";
  V lean;
  lean.kind = V::Lean;
  EXPECT_EQ(resolve(geom({33, 45, 80}, {6, 8, 8}), &mixed, lean), V::Lean) << "a named variant stays";
  V pingpong;
  pingpong.kind = V::PingPong;
  EXPECT_EQ(resolve(geom({10, 48, 80}, {2, 8, 8}), &same, pingpong), V::PingPong) << "named, it stays";
  EXPECT_TRUE(detail::sta_hopper_needs_masks(geom({10, 48, 80}, {2, 8, 8}, 77, 50), detail::kHopperKeyBlock64));
  EXPECT_FALSE(detail::sta_hopper_needs_masks(geom({10, 48, 80}, {2, 8, 8}, 128, 64), detail::kHopperKeyBlock64));
  EXPECT_TRUE(detail::sta_hopper_needs_masks(geom({10, 48, 80}, {2, 8, 8}, 128, 64), detail::kHopperKeyBlock128));
  V tail;
  tail.kind = V::Tail;
  EXPECT_EQ(resolve(geom({10, 48, 80}, {2, 8, 8}, 256, 200), &same, tail), V::Tail) << "named, it stays";
  // "tail" runs the unmasked instance when the text tail is the only masked visit: its valid keys.
  EXPECT_EQ(detail::sta_hopper_text_tail_only(geom({10, 48, 80}, {2, 8, 8}, 256, 200), 128), 72);
  EXPECT_EQ(detail::sta_hopper_text_tail_only(geom({10, 48, 80}, {2, 8, 8}, 256, 200), 64), 8);
  EXPECT_EQ(detail::sta_hopper_text_tail_only(geom({10, 48, 80}, {2, 8, 8}, 77, 50), 64), 50);
  EXPECT_EQ(detail::sta_hopper_text_tail_only(geom({10, 48, 80}, {2, 8, 8}, 256, 256), 128), 0) << "no mask";
  EXPECT_EQ(detail::sta_hopper_text_tail_only(geom({10, 48, 80}, {2, 8, 8}), 128), 0) << "no text";
  EXPECT_EQ(detail::sta_hopper_text_tail_only(geom({33, 45, 80}, {6, 8, 8}, 256, 200), 128), 0) << "padded canvas";
  // Every visit list ends with the text tail (the only block the consumers mask in "tail"), for image and text
  // query blocks alike, and it is the only visit that needs a mask.
  {
    const StaGeometry g = geom({4, 16, 16}, {2, 8, 8}, 150, 120);
    const StaWindow w{1, 3, 1};
    for (int64_t q : {int64_t{0}, int64_t{384}, g.img_slots, g.img_slots + 128}) {
      const StaTileRange r = sta_query_range(g, w, q);
      const int32_t n = sta_visit_count(g, r, 128);
      for (int32_t j = 0; j < n; ++j) {
        const StaVisit v = sta_visit_at(g, r, 128, j);
        EXPECT_EQ(v.needs_mask, j == n - 1) << "query " << q << " visit " << j;
        if (j == n - 1) {
          EXPECT_EQ(sta_block_valid_count(g, v.key_start, 128), 120 % 128);
        }
      }
    }
  }
}

// The Hopper variants the GPU test checks: STAVID_STA_HOPPER_VARIANTS (names separated by spaces or
// commas) or, unset, every variant (auto, the default, first) and persist:3 (3 CTAs, each taking many work items: the Q
// buffers and the K/V ring wrap across items). "persist" listed brings persist:3 along: the uncapped grid (132 or 264
// CTAs on an H200) gives every CTA at most one item in 18 of the 20 small cases (the other two, 180 and 324 items, are
// unmasked 128-row launches), so "persist" alone would never run a second item on a masked or a 64-row CTA, the path
// every large launch depends on.
[[maybe_unused]] std::vector<std::string> hopper_test_variants() {
  const char* env = std::getenv("STAVID_STA_HOPPER_VARIANTS");
  std::vector<std::string> vs;
  std::string cur;
  static const char* const kEvery =
      "auto masked lean skip persist persist:3 deep pingpong pingpong-deep tail overlap overlap-pp overlap-pp-masked";
  for (const char* ch = env ? env : kEvery;; ++ch) {
    if (*ch == ' ' || *ch == ',' || *ch == '\0') {
      if (!cur.empty()) vs.push_back(cur);
      cur.clear();
      if (*ch == '\0') break;
    } else {
      cur += *ch;
    }
  }
  if (std::find(vs.begin(), vs.end(), "persist") != vs.end() &&
      std::find(vs.begin(), vs.end(), "persist:3") == vs.end())
    vs.push_back("persist:3");
  return vs;
}

TEST(StaAttentionHopper, MatchesFp64ReferenceFa3Rule) {
  STAVID_REQUIRE_CUDA();
#if defined(STAVID_WITH_CUDA)
  if (!detail::sta_hopper_device(0)) GTEST_SKIP() << "the Hopper kernel needs a compute capability 9.0 device";
  ScopedEnv on("STAVID_STA_HOPPER", "1");
  const std::vector<std::string> variants = hopper_test_variants();
  ASSERT_FALSE(variants.empty()) << "STAVID_STA_HOPPER_VARIANTS names no variant";
  int checked = 0;
  uint32_t seed = 9000;
  // One GPU run must tell every variant's state: a wrong output fails its (case, variant) and the
  // loop goes on; the summary (cases failed per variant) is printed last, where a log tail sees it.
  // A CUDA error (a barrier watchdog trap included) leaves the context unusable: it stops the test,
  // naming the variant and case (the exception alone names neither).
  std::vector<std::vector<std::string>> failed(variants.size());
  auto summary = [&] {
    std::string s = "\nHopper variants (" + std::to_string(checked) + " runs checked):";
    for (size_t i = 0; i < variants.size(); ++i)
      s += "\n  " + variants[i] + ": " + std::to_string(failed[i].size()) + " failed" +
           (failed[i].empty() ? "" : ", first " + failed[i][0]);
    return s;
  };
  const std::vector<HopperCase> cases = hopper_cases();
  int case_no = 0;
  for (const auto& [c, dt] : cases) {
    const AttnInputs in = make_inputs(c, dt, seed += 3);
    const Reference r = reference(c, in, dt);  // once per case: it dominates the test's time
    for (size_t vi = 0; vi < variants.size(); ++vi) {
      const std::string& name = variants[vi];
      // The kernel reads the variant at every call: check that this name selects it.
      ScopedEnv variant("STAVID_STA_HOPPER_VARIANT", name.c_str());
      ASSERT_EQ(detail::sta_hopper_variant_name(detail::sta_hopper_variant()), name);
      StaKernel kernel{};
      std::vector<float> out;
      try {
        out = run_attention(c, in, dt, Device::cuda(0), &kernel);
      } catch (const std::exception& e) {
        failed[vi].push_back(c.str(dt) + " (CUDA error)");
        FAIL() << c.str(dt) << " [hopper " << name << "]: " << e.what() << summary();
      }
      ASSERT_EQ(kernel, StaKernel::Hopper) << c.str(dt);
      const Compared cmp = gather_used(c, in.g, out, r);
      ++checked;
      EXPECT_EQ(cmp.non_finite, 0) << c.str(dt) << " [hopper " << name << "]: outputs not written or not finite";
      const double err = max_abs_err(cmp.out, cmp.ref), base = max_abs_err(cmp.naive, cmp.ref);
      const double mse = nmse(cmp.out, cmp.ref);
      EXPECT_LE(err, 2 * base + kFa3Atol) << c.str(dt) << " [hopper " << name << "] naive16 err " << base;
      EXPECT_LE(mse, 5e-4) << c.str(dt) << " [hopper " << name << "]";
      if (cmp.non_finite != 0 || !(err <= 2 * base + kFa3Atol) || !(mse <= 5e-4)) failed[vi].push_back(c.str(dt));
    }
    // Progress, flushed: a run ended by a timeout (a barrier protocol fault hangs in bar.sync, which has no
    // watchdog) then says which case it was in.
    std::printf("[hopper] case %d of %zu done: %s\n", ++case_no, cases.size(), c.str(dt).c_str());
    std::fflush(stdout);
  }
  EXPECT_EQ(checked, 20 * static_cast<int>(variants.size()));
  const std::string s = summary();
  std::printf("%s\n", s.c_str());
#endif
}

// ---------------- the selector ----------------

std::string selector_error(const StaAttentionParams& p) {
  try {
    select_sta_kernel(p);
  } catch (const Error& e) {
    return e.message();
  }
  return "<accepted>";
}

TEST(StaSelector, CudaRequirementsNamed) {
  ScopedEnv portable("STAVID_STA_HOPPER", "0");  // the portable kernels' choices, whatever the caller set
  alignas(16) static char buf[256];
  const std::vector<StaWindow> ok_windows(2, StaWindow{3, 3, 3});
  auto base = [&] {
    StaAttentionParams p;
    p.q = p.k = p.v = buf;
    p.o = buf + 128;
    for (int64_t* s : {p.q_stride, p.k_stride, p.v_stride, p.o_stride}) {
      s[0] = 2 * 1024 * 128;
      s[1] = 1024 * 128;
      s[2] = 128;
    }
    p.heads = 2;
    p.head_dim = 128;
    p.geom = geom({6, 16, 16}, {2, 8, 8}, 77, 50);
    p.windows = ok_windows.data();
    p.host_windows = ok_windows.data();
    p.dtype = DType::BF16;
    p.device = Device::cuda(0);
    return p;
  };
  EXPECT_EQ(select_sta_kernel(base()), StaKernel::PortableM128);
  {
    StaAttentionParams p = base();
    p.geom = geom({4, 16, 16}, {1, 8, 8});
    EXPECT_EQ(select_sta_kernel(p), StaKernel::PortableM64);
    p.geom = geom({6, 16, 16}, {3, 8, 8});  // 192 tokens
    EXPECT_EQ(select_sta_kernel(p), StaKernel::PortableM64);
  }
  auto expect_error = [&](const StaAttentionParams& p, std::initializer_list<const char*> words) {
    const std::string msg = selector_error(p);
    for (const char* w : words) EXPECT_NE(msg.find(w), std::string::npos) << "message: " << msg << " lacks " << w;
  };
  {
    StaAttentionParams p = base();
    p.geom = geom({6, 16, 16}, {2, 6, 8});  // 96 tokens
    expect_error(p, {"multiple of 64", "96"});
  }
  {
    StaAttentionParams p = base();
    const std::vector<StaWindow> bad{{3, 3, 3}, {3, 0, 3}};
    p.host_windows = bad.data();
    expect_error(p, {"window of head 1", ">= 1"});
  }
  {
    StaAttentionParams p = base();
    p.head_dim = 96;
    expect_error(p, {"head_dim", "96"});
  }
  {
    StaAttentionParams p = base();
    p.k = buf + 2;
    expect_error(p, {"16-byte aligned"});
  }
  {
    StaAttentionParams p = base();
    p.dtype = DType::F32;
    expect_error(p, {"bf16 or f16", "f32"});
  }
  {
    StaAttentionParams p = base();
    p.v_stride[2] = 130;
    expect_error(p, {"multiples of 8", "130"});
  }
  {
    StaAttentionParams p = base();
    p.windows = nullptr;
    expect_error(p, {"windows"});
  }
}

TEST(StaSelector, CpuRejectsZeroWindows) {
  std::vector<float> q(2 * 40 * 8, 0.5f), o(q.size());
  const std::vector<StaWindow> bad{{1, 1, 1}, {0, 1, 1}};
  StaAttentionParams p;
  p.q = p.k = p.v = q.data();
  p.o = o.data();
  p.heads = 2;
  p.head_dim = 8;
  for (int64_t* s : {p.q_stride, p.k_stride, p.v_stride, p.o_stride}) {
    s[0] = 2 * 40 * 8;
    s[1] = 40 * 8;
    s[2] = 8;
  }
  p.geom = geom({2, 4, 4}, {1, 2, 2}, 8, 4);
  p.dtype = DType::F32;
  p.device = Device::cpu();
  p.windows = bad.data();
  p.host_windows = bad.data();
  EXPECT_NE(selector_error(p).find("window of head 1"), std::string::npos);
  p.host_windows = nullptr;  // the CPU path checks its (host) windows itself
  try {
    sta_attention(p, Stream::cpu());
    ADD_FAILURE() << "a zero window was accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("window of head 1"), std::string::npos) << e.message();
  }
  p.windows = nullptr;
  EXPECT_THROW(sta_attention(p, Stream::cpu()), Error);
}

}  // namespace
}  // namespace stavid
