#include "model/parallel/ulysses.h"

#include "kernels/core/error.h"

namespace stavid::parallel {

void check_head_split(int32_t heads, int ranks) {
  STAVID_CHECK(ranks >= 1, "sequence parallel: the group size must be >= 1, got ", ranks);
  STAVID_CHECK(heads % ranks == 0, "sequence parallel: a group of ", ranks, " ranks does not divide the model's ", heads,
               " attention heads (Ulysses gives every rank heads/k whole heads; use a group size dividing ", heads, ")");
}

SequenceSplit make_sequence_split(int64_t image_rows, int32_t heads, int rank, int ranks) {
  check_head_split(heads, ranks);
  STAVID_CHECK(rank >= 0 && rank < ranks, "sequence parallel: rank ", rank, " outside 0..", ranks - 1);
  STAVID_CHECK(image_rows >= ranks, "sequence parallel: ", image_rows, " image tokens cannot be split over ", ranks,
               " ranks");
  SequenceSplit s;
  s.rank = rank;
  s.ranks = ranks;
  s.rows = split_evenly(image_rows, ranks);
  for (int r = 0; r < rank; ++r) s.row_begin += s.rows[static_cast<size_t>(r)];
  s.row_end = s.row_begin + s.rows[static_cast<size_t>(rank)];
  s.heads_per_rank = heads / ranks;
  s.head_begin = rank * s.heads_per_rank;
  return s;
}

Tensor gather_heads(Communicator& comm, const SequenceSplit& split, const Tensor& rows, int32_t heads,
                    int32_t head_dim) {
  const int64_t b = rows.size(0), n_local = rows.size(1);
  STAVID_CHECK(n_local == split.local_rows() && rows.size(2) == 3LL * heads * head_dim, "ulysses: rows ", rows.str(),
               " should be [B, ", split.local_rows(), ", ", 3LL * heads * head_dim, "]");
  const Tensor x = rows.reshape({b, n_local, 3, heads, head_dim});  // copies a strided slice
  Tensor out = comm.all_to_all(x, /*split_axis=*/3, std::vector<int64_t>(static_cast<size_t>(split.ranks), split.heads_per_rank),
                               /*concat_axis=*/1, split.rows);  // [B, N, 3, H/k, Dh]
  return out.view({b, out.size(1), 3LL * split.heads_per_rank * head_dim});
}

Tensor slice_heads(const SequenceSplit& split, const Tensor& rows, int32_t heads, int32_t head_dim) {
  const int64_t b = rows.size(0), l = rows.size(1);
  return rows.reshape({b, l, 3, heads, head_dim})
      .slice(3, split.head_begin, split.head_begin + split.heads_per_rank)
      .contiguous()
      .view({b, l, 3LL * split.heads_per_rank * head_dim});  // [B, L, 3 * H/k * Dh]
}

void scatter_rows(Communicator& comm, const SequenceSplit& split, const Tensor& out_rows, Tensor& out) {
  const int64_t cols = out_rows.size(2);
  comm.all_to_all_into(out_rows, /*split_axis=*/1, split.rows, out, /*concat_axis=*/2,
                       std::vector<int64_t>(static_cast<size_t>(split.ranks), cols));
}

}  // namespace stavid::parallel
