// Head-parallel (Ulysses) sequence parallelism for the DiT (docs/parallel.md).
//
// k ranks each hold a contiguous range of the N image rows (compact tiled order, a balanced split);
// text rows are replicated on every rank. Around each attention:
//   gather_heads:  [B, N_r, 3, H, Dh] (the rank's rows, every head) -> [B, N, 3, H/k, Dh]
//                  (every row, the rank's heads): one all-to-all;
//   STA runs on the whole (T, H, W) grid for the rank's heads, with their own windows;
//   scatter_rows:  [B, N, H/k * Dh] -> [B, N_r, H * Dh]: the inverse all-to-all.
// Text rows never move for q/k/v (each rank slices its heads from its own copy); the text rows of
// the attention output are all-gathered over heads.
#pragma once

#include <cstdint>
#include <vector>

#include "model/parallel/communicator.h"
#include "model/runtime/tensor.h"

namespace stavid::parallel {

// How one rank's share of a forward is cut: image rows and attention heads.
struct SequenceSplit {
  int rank = 0, ranks = 1;
  std::vector<int64_t> rows;  // image rows per rank (balanced, contiguous, rank order)
  int64_t row_begin = 0, row_end = 0;  // this rank's rows
  int32_t heads_per_rank = 0, head_begin = 0;
  bool parallel() const { return ranks > 1; }
  int64_t local_rows() const { return row_end - row_begin; }
};

// Throws InvalidArgument when `ranks` does not divide `heads` (naming both) or there are fewer image
// rows than ranks.
SequenceSplit make_sequence_split(int64_t image_rows, int32_t heads, int rank, int ranks);
// The check alone, for configuration validation (server layouts): InvalidArgument when it fails.
void check_head_split(int32_t heads, int ranks);

// rows: [B, N_r, 3 * H * Dh] (any row stride) -> [B, N, 3 * (H/k) * Dh] holding q|k|v of the rank's
// heads for every image row (the layout qkv_prepare reads with heads = H/k).
Tensor gather_heads(Communicator& comm, const SequenceSplit& split, const Tensor& rows, int32_t heads, int32_t head_dim);
// Replicated text rows [B, L, 3 * H * Dh] -> [B, L, 3 * (H/k) * Dh]: the rank's heads, no communication.
Tensor slice_heads(const SequenceSplit& split, const Tensor& rows, int32_t heads, int32_t head_dim);
// out_rows: attention output of the rank's heads [B, N, (H/k) * Dh] -> out: the rank's image rows,
// every head [B, N_r, H * Dh] (may be a column range of a wider buffer).
void scatter_rows(Communicator& comm, const SequenceSplit& split, const Tensor& out_rows, Tensor& out);

}  // namespace stavid::parallel
