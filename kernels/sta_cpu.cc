// STA on the CPU: the reference and the CPU production path, plus tile / untile.
//
// Attention policy:
// - Work unit: one (batch, head) at a time; its K and V are widened to fp32 once ([seq, d], dense);
//   buffers are reused across heads.
// - Query blocks: rows that share one key range (all rows of one image tile; all text rows). The key
//   list of a block comes from THE visit list (sta_query_range / sta_visit_count / sta_visit_at in
//   sta.h, blocks of cpu_block_n(tile_tokens) slots), keeping only sta_key_valid keys in blocks marked needs_mask. The
//   listed K/V rows are gathered into contiguous fp32 buffers, reused while consecutive tiles see the
//   same range (border tiles of a clamped window share one).
// - Math: S = scale * Q K^T and O = P V through the CPU GEMM (fp32, OpenBLAS when built with it);
//   softmax in fp32 with the row max subtracted, the row sum accumulated in fp32 blocks of 64 keys
//   added into double, 1/sum applied to the output rows; O rounded once to the storage type. A
//   query that sees no key (text-only attention with no valid text) gets zeros, never NaN.
// - Memory: query rows are processed in chunks so the score matrix stays under kScoreBudget floats.
// - Padded image query rows get what their tile sees; untile drops them.
//
// Permute policy: a row copy per destination row (bytes, no conversion, so bit-exact for every
// dtype); tile writes zeros into padded slots, untile skips them.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/core/error.h"
#include "kernels/cpu_math.h"
#include "kernels/gemm.h"
#include "kernels/sta.h"

namespace stavid::detail {
namespace {

constexpr int64_t kScoreBudget = int64_t(1) << 22;  // floats in one score chunk (16 MiB)
constexpr int32_t kTextChunk = 256;                 // text query rows per block

// The largest of 64, 32, ..., 1 that divides the tile's token count: the visit-list block size.
int32_t cpu_block_n(int32_t tile_tokens) {
  for (int32_t b = 64; b > 1; b /= 2)
    if (tile_tokens % b == 0) return b;
  return 1;
}

// n elements of storage type t -> fp32; the dtype switch sits outside the loop.
void widen_row(const void* src, DType t, int64_t n, float* dst) {
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::BF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(s[i]);
      return;
    }
    case DType::F16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_float(s[i]);
      return;
    }
  }
}

// fp32 -> n elements of storage type t, rounded to nearest even.
void narrow_row(const float* src, DType t, int64_t n, void* dst) {
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = float_to_bf16(src[i]);
      return;
    }
    case DType::F16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = float_to_f16(src[i]);
      return;
    }
  }
}

bool same_range(const StaTileRange& a, const StaTileRange& b) {
  for (int d = 0; d < 3; ++d)
    if (a.lo[d] != b.lo[d] || a.cnt[d] != b.cnt[d]) return false;
  return true;
}

// Dense row-major fp32 product on the CPU GEMM: C[m, n] = alpha * A[m, k] . op(B).
void gemm_f32(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k, bool b_transposed,
              float alpha) {
  GemmParams g;
  g.a = a;
  g.b = b;
  g.d = c;
  g.m = m;
  g.n = n;
  g.k = k;
  g.lda = k;
  g.ldb = b_transposed ? k : n;
  g.ldd = n;
  g.b_transposed = b_transposed;
  g.alpha = alpha;
  g.dtype = g.out_dtype = DType::F32;
  g.device = Device::cpu();
  gemm(g, Stream::cpu());
}

// Softmax numerators in place over one row of scores; returns 1 / (sum of them). Eight independent
// lanes for the max and the sum keep the loops from serializing on one accumulator; each lane's
// partial sums go to double every kSumBlock keys.
float softmax_row(float* s, int64_t n) {
  constexpr int kLanes = 8;
  constexpr int64_t kSumBlock = 64;
  float mx8[kLanes];
  std::fill(mx8, mx8 + kLanes, s[0]);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) mx8[l] = std::max(mx8[l], s[j + l]);
  float mx = *std::max_element(mx8, mx8 + kLanes);
  for (; j < n; ++j) mx = std::max(mx, s[j]);

  double sum = 0.0;
  for (int64_t j0 = 0; j0 < n; j0 += kSumBlock) {
    const int64_t j1 = std::min(n, j0 + kSumBlock);
    float part[kLanes] = {};
    int64_t i = j0;
    for (; i + kLanes <= j1; i += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        s[i + l] = cpu::exp_fast(s[i + l] - mx);
        part[l] += s[i + l];
      }
    for (; i < j1; ++i) {
      s[i] = cpu::exp_fast(s[i] - mx);
      part[0] += s[i];
    }
    for (int l = 0; l < kLanes; ++l) sum += part[l];
  }
  return static_cast<float>(1.0 / sum);
}

// One call's attention: per (batch, head), K/V widened once, then every query block against its
// gathered key list. Buffers are reused across heads.
class StaCpuAttention {
 public:
  explicit StaCpuAttention(const StaAttentionParams& p)
      : p_(p),
        g_(p.geom),
        d_(p.head_dim),
        esz_(static_cast<int64_t>(dtype_size(p.dtype))),
        block_n_(cpu_block_n(p.geom.tile_tokens)) {
    scale_ = p.softmax_scale != 0.f ? p.softmax_scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(d_)));
    const int64_t seq = g_.seq_len();
    k32_.resize(static_cast<size_t>(seq * d_));
    v32_.resize(static_cast<size_t>(seq * d_));
  }

  void run_head(int64_t b, int64_t h) {
    q_base_ = static_cast<const char*>(p_.q) + (b * p_.q_stride[0] + h * p_.q_stride[1]) * esz_;
    o_base_ = static_cast<char*>(p_.o) + (b * p_.o_stride[0] + h * p_.o_stride[1]) * esz_;
    const char* k_base = static_cast<const char*>(p_.k) + (b * p_.k_stride[0] + h * p_.k_stride[1]) * esz_;
    const char* v_base = static_cast<const char*>(p_.v) + (b * p_.v_stride[0] + h * p_.v_stride[1]) * esz_;
    // Only real keys are ever gathered, so only those rows are read (padded and tail slots may hold
    // anything).
    for (int64_t s = 0; s < g_.seq_len(); ++s) {
      if (!sta_key_valid(g_, s)) continue;
      widen_row(k_base + s * p_.k_stride[2] * esz_, p_.dtype, d_, &k32_[s * d_]);
      widen_row(v_base + s * p_.v_stride[2] * esz_, p_.dtype, d_, &v32_[s * d_]);
    }
    const StaWindow window = p_.windows[h];
    bool have_range = false;
    StaTileRange last{};
    // Consecutive query tiles whose windows clamp to the same key range (near the borders, and
    // every tile of an axis the window covers) run as one block of rows: fewer, larger GEMMs.
    int64_t run_start = 0, run_rows_count = 0;
    for (int32_t tile = 0; tile < g_.num_tiles; ++tile) {
      const int64_t q0 = static_cast<int64_t>(tile) * g_.tile_tokens;
      const StaTileRange range = sta_query_range(g_, window, q0);
      if (!have_range || !same_range(range, last)) {
        if (run_rows_count > 0) run_rows(run_start, run_rows_count);
        gather_keys(range);
        last = range;
        have_range = true;
        run_start = q0;
        run_rows_count = 0;
      }
      run_rows_count += g_.tile_tokens;
    }
    if (run_rows_count > 0) run_rows(run_start, run_rows_count);
    if (g_.text_slots > 0) {
      gather_keys(sta_query_range(g_, window, g_.img_slots));
      for (int64_t t0 = 0; t0 < g_.text_slots; t0 += kTextChunk)
        run_rows(g_.img_slots + t0, std::min<int64_t>(kTextChunk, g_.text_slots - t0));
    }
  }

 private:
  // Builds the key list of a range from the visit list and gathers its K/V rows.
  void gather_keys(const StaTileRange& range) {
    keys_.clear();
    const int32_t visits = sta_visit_count(g_, range, block_n_);
    for (int32_t j = 0; j < visits; ++j) {
      const StaVisit v = sta_visit_at(g_, range, block_n_, j);
      for (int64_t k = v.key_start; k < v.key_start + block_n_; ++k)
        if (!v.needs_mask || sta_key_valid(g_, k)) keys_.push_back(k);
    }
    const int64_t nk = static_cast<int64_t>(keys_.size());
    kg_.resize(static_cast<size_t>(nk * d_));
    vg_.resize(static_cast<size_t>(nk * d_));
    for (int64_t i = 0; i < nk; ++i) {
      std::memcpy(&kg_[i * d_], &k32_[keys_[i] * d_], static_cast<size_t>(d_) * sizeof(float));
      std::memcpy(&vg_[i * d_], &v32_[keys_[i] * d_], static_cast<size_t>(d_) * sizeof(float));
    }
  }

  // Query rows [q0, q0 + rows) against the gathered keys, in chunks that bound the score matrix.
  void run_rows(int64_t q0, int64_t rows) {
    const int64_t nk = static_cast<int64_t>(keys_.size());
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(rows, kScoreBudget / std::max<int64_t>(nk, 1)));
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      const int64_t m = std::min(chunk, rows - r0);
      o32_.assign(static_cast<size_t>(m * d_), 0.f);
      if (nk > 0) {
        q32_.resize(static_cast<size_t>(m * d_));
        for (int64_t i = 0; i < m; ++i)
          widen_row(q_base_ + (q0 + r0 + i) * p_.q_stride[2] * esz_, p_.dtype, d_, &q32_[i * d_]);
        s32_.resize(static_cast<size_t>(m * nk));
        gemm_f32(q32_.data(), kg_.data(), s32_.data(), m, nk, d_, /*b_transposed=*/true, scale_);
        inv_sum_.resize(static_cast<size_t>(m));
        for (int64_t i = 0; i < m; ++i) inv_sum_[i] = softmax_row(&s32_[i * nk], nk);
        gemm_f32(s32_.data(), vg_.data(), o32_.data(), m, d_, nk, /*b_transposed=*/false, 1.f);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t c = 0; c < d_; ++c) o32_[i * d_ + c] *= inv_sum_[i];
      }
      for (int64_t i = 0; i < m; ++i) {
        const int64_t slot = q0 + r0 + i;
        const int64_t row = p_.o_row_map ? p_.o_row_map[slot] : slot;
        if (row < 0) continue;
        narrow_row(&o32_[i * d_], p_.dtype, d_, o_base_ + row * p_.o_stride[2] * esz_);
      }
    }
  }

  const StaAttentionParams& p_;
  const StaGeometry& g_;
  const int64_t d_;
  const int64_t esz_;
  const int32_t block_n_;
  float scale_ = 1.f;
  const char* q_base_ = nullptr;
  char* o_base_ = nullptr;
  std::vector<float> k32_, v32_;  // [seq, d] widened K, V of the current head (valid rows only)
  std::vector<int64_t> keys_;     // the current key list
  std::vector<float> kg_, vg_;    // [nk, d] gathered keys and values
  std::vector<float> q32_, s32_, o32_, inv_sum_;
};

}  // namespace

void sta_attention_cpu(const StaAttentionParams& p) {
  STAVID_CHECK(p.device.is_cpu(), "sta_attention_cpu: params on ", p.device.str());
  for (int h = 0; h < p.heads; ++h) {
    const StaWindow w = p.windows[h];
    STAVID_CHECK(w.t >= 1 && w.h >= 1 && w.w >= 1, "STA: window of head ", h, " is (", w.t, ", ", w.h, ", ", w.w,
                 "); every axis must be >= 1 tile");
  }
  StaCpuAttention attention(p);
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads; ++h) attention.run_head(b, h);
}

void sta_permute_cpu(const StaPermuteParams& p) {
  const StaGeometry& g = p.geom;
  const size_t esz = dtype_size(p.dtype);
  const size_t row_bytes = static_cast<size_t>(p.row_elems) * esz;
  const int64_t dst_rows = p.to_tiled ? g.seq_len() : g.img_tokens() + g.text_slots;
  for (int64_t b = 0; b < p.batch; ++b) {
    const char* src = static_cast<const char*>(p.src) + b * p.src_batch_stride * static_cast<int64_t>(esz);
    char* dst = static_cast<char*>(p.dst) + b * p.dst_batch_stride * static_cast<int64_t>(esz);
    for (int64_t r = 0; r < dst_rows; ++r) {
      char* d = dst + r * p.dst_row_stride * static_cast<int64_t>(esz);
      const int64_t from = p.to_tiled ? sta_raster_of_slot(g, r) : sta_slot_of_raster(g, r);
      if (from < 0) {
        std::memset(d, 0, row_bytes);
        continue;
      }
      std::memcpy(d, src + from * p.src_row_stride * static_cast<int64_t>(esz), row_bytes);
    }
  }
}

}  // namespace stavid::detail
