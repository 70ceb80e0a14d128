// Collective communication between the ranks of one GPU group (docs/parallel.md).
//
// A group is k ranks, one per device, each driven by its own host thread in one process. Every rank
// calls the same collectives in the same order (the usual rule of MPI and NCCL); a collective
// returns on a rank when that rank's part is done.
//
// Two backends:
// - In-process (make_in_process_group): the ranks are threads sharing a group object in host
//   memory. CPU tensors are exchanged with memcpy; CUDA tensors are staged through host memory. It
//   checks that every rank's arguments agree (counts, roots, the collective itself) and throws the
//   same InvalidArgument on every rank when they do not. This is what the CPU tests run.
// - NCCL (make_nccl_group, model/parallel/nccl_communicator.cc, only when built with NCCL): one
//   communicator per GPU from ncclCommInitAll in one process; collectives are enqueued on the
//   calling thread's current stream of the rank's device (asynchronous, like any kernel). It does
//   not check argument agreement (a mismatch is undefined behaviour, as in NCCL itself).
//
// Failure: a rank that fails outside a collective calls abort(); every rank waiting in or entering a
// collective of that group then throws GroupAborted (code Internal) instead of hanging. An aborted group stays
// aborted: make a new one. run_on_ranks() does this bookkeeping for a thread per rank.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/core/device.h"
#include "kernels/core/error.h"
#include "model/runtime/tensor.h"

namespace stavid::parallel {

// What a rank throws when a peer aborted the group (code Internal): a consequence of another rank's
// failure, so run_on_ranks() reports a root cause in preference to it.
class GroupAborted : public Error {
 public:
  GroupAborted(const std::string& reason, const char* file, int line)
      : Error(ErrorCode::Internal, "communicator: the group was aborted (" + reason + ")", file, line) {}
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The rank's device: where its model runs (the NCCL backend moves memory of this device).
  virtual Device device() const = 0;
  virtual const char* backend() const = 0;  // "in-process" or "nccl"

  // ---- byte primitives (collective) ----
  // Rank r sends send_counts[j] bytes from send + send_displs[j] to rank j, and receives
  // recv_counts[i] bytes from rank i into recv + recv_displs[i]. Rank r's send_counts[j] must equal
  // rank j's recv_counts[r]. `mem` is where both buffers live: the CPU or this rank's device.
  virtual void all_to_all_v(const void* send, const std::vector<size_t>& send_counts,
                            const std::vector<size_t>& send_displs, void* recv, const std::vector<size_t>& recv_counts,
                            const std::vector<size_t>& recv_displs, Device mem) = 0;
  // Rank `root`'s `bytes` at `data` overwrite every other rank's `data`.
  virtual void broadcast_bytes(void* data, size_t bytes, int root, Device mem) = 0;
  // Returns when every rank has entered it (and, for NCCL, the rank's stream work before it is done).
  virtual void barrier() = 0;
  // Marks the group failed (see the top of this file). Idempotent; never throws.
  virtual void abort(const std::string& reason) noexcept = 0;

  // ---- tensor collectives (built on the primitives; any device, any dtype) ----
  // Splits x along `split_axis` into size() consecutive parts of split_sizes (summing to
  // x.size(split_axis)); part j goes to rank j. The parts received from ranks 0..k-1 are joined along
  // `concat_axis`: the part from rank i has concat_sizes[i] there (so concat_sizes[rank()] ==
  // x.size(concat_axis)) and split_sizes[rank()] along split_axis. All other sizes must agree across
  // ranks. Every rank passes the same split_sizes and concat_sizes. split_axis != concat_axis.
  //   Ulysses: [B, N/k, 3, H, Dh] split on heads, joined on tokens -> [B, N, 3, H/k, Dh].
  Tensor all_to_all(const Tensor& x, int split_axis, const std::vector<int64_t>& split_sizes, int concat_axis,
                    const std::vector<int64_t>& concat_sizes);
  // The same into `out` (the joined shape; any strides, e.g. a column range of a wider buffer).
  void all_to_all_into(const Tensor& x, int split_axis, const std::vector<int64_t>& split_sizes, Tensor& out,
                       int concat_axis, const std::vector<int64_t>& concat_sizes);
  // Every rank's x joined along `axis` in rank order; sizes[i] is rank i's x.size(axis) (empty: all
  // equal to this rank's).
  Tensor all_gather(const Tensor& x, int axis, const std::vector<int64_t>& sizes = {});
  void all_gather_into(const Tensor& x, int axis, Tensor& out, const std::vector<int64_t>& sizes = {});
  // Rank root's x overwrites every rank's x (same shape and dtype everywhere).
  void broadcast(Tensor& x, int root);
  // Element-wise sum of every rank's values, added in rank order, so every rank gets the same bits.
  std::vector<double> all_reduce_sum(const std::vector<double>& values);
  // True on every rank when any rank passes true (agreement on cancellation and similar flags).
  bool any(bool flag);

 protected:
  // A local precondition failed: aborts the group (so peers do not hang) and throws InvalidArgument.
  [[noreturn]] void fail(const std::string& message);
  // all_to_all_v's precondition for every backend: one count and one displacement per rank.
  void check_all_to_all_v_args(const std::vector<size_t>& send_counts, const std::vector<size_t>& send_displs,
                               const std::vector<size_t>& recv_counts, const std::vector<size_t>& recv_displs);
};

// k in-process ranks (k >= 1); rank r's device is devices[r] (all CPU when empty). The returned
// communicators share one group object and must each be used from one thread at a time.
std::vector<std::unique_ptr<Communicator>> make_in_process_group(int size, const std::vector<Device>& devices = {});

// Whether this build has the NCCL backend.
bool nccl_available();
// One NCCL communicator per listed CUDA ordinal (ncclCommInitAll, one process, a thread per rank).
// Throws Unsupported in builds without NCCL.
std::vector<std::unique_ptr<Communicator>> make_nccl_group(const std::vector<int>& cuda_devices);

// Runs fn(rank) on one new thread per rank (rank 0 too) and joins them. When a rank throws, the
// group is aborted (comms[0]->abort) so the others stop, and the first exception that is not a
// GroupAborted (the cause, not the peers' consequences) is rethrown here. Each thread makes its rank's device current.
void run_on_ranks(const std::vector<std::unique_ptr<Communicator>>& comms, const std::function<void(int rank)>& fn);

// Balanced contiguous split of n items over k ranks: the first n % k ranks get one more.
std::vector<int64_t> split_evenly(int64_t n, int k);

}  // namespace stavid::parallel
