#include "model/parallel/communicator.h"

#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <numeric>
#include <thread>

#include "kernels/core/error.h"
#include "model/runtime/cuda_runtime.h"

namespace stavid::parallel {

// ---- tensor collectives ----

namespace {

int norm_axis(int axis, int dim) {
  if (axis < 0) axis += dim;
  return axis;
}

// Shape of x with axis `a` resized to n.
Shape with_size(Shape s, int a, int64_t n) {
  s[static_cast<size_t>(a)] = n;
  return s;
}

std::vector<int64_t> prefix(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> off(sizes.size() + 1, 0);
  for (size_t i = 0; i < sizes.size(); ++i) off[i + 1] = off[i] + sizes[i];
  return off;
}

}  // namespace

void Communicator::fail(const std::string& message) {
  abort("rank " + std::to_string(rank()) + ": " + message);
  STAVID_THROW(ErrorCode::InvalidArgument, "communicator: ", message);
}

void Communicator::check_all_to_all_v_args(const std::vector<size_t>& send_counts,
                                           const std::vector<size_t>& send_displs,
                                           const std::vector<size_t>& recv_counts,
                                           const std::vector<size_t>& recv_displs) {
  const size_t k = static_cast<size_t>(size());
  if (send_counts.size() != k || send_displs.size() != k || recv_counts.size() != k || recv_displs.size() != k)
    fail("all_to_all_v: counts and displacements need one entry per rank (" + std::to_string(k) + ")");
}

Tensor Communicator::all_to_all(const Tensor& x, int split_axis, const std::vector<int64_t>& split_sizes,
                                int concat_axis, const std::vector<int64_t>& concat_sizes) {
  const int sa = norm_axis(split_axis, x.dim());
  const int ca = norm_axis(concat_axis, x.dim());
  if (sa < 0 || sa >= x.dim() || ca < 0 || ca >= x.dim())
    fail("all_to_all: axis out of range for " + x.str());
  if (static_cast<int>(split_sizes.size()) != size() || static_cast<int>(concat_sizes.size()) != size())
    fail("all_to_all: split_sizes and concat_sizes need one entry per rank (" + std::to_string(size()) + ")");
  Shape out_shape = with_size(x.shape(), sa, split_sizes[static_cast<size_t>(rank())]);
  out_shape[static_cast<size_t>(ca)] = std::accumulate(concat_sizes.begin(), concat_sizes.end(), int64_t{0});
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  all_to_all_into(x, split_axis, split_sizes, out, concat_axis, concat_sizes);
  return out;
}

void Communicator::all_to_all_into(const Tensor& x, int split_axis, const std::vector<int64_t>& split_sizes,
                                   Tensor& out, int concat_axis, const std::vector<int64_t>& concat_sizes) {
  const int k = size(), me = rank();
  const int sa = norm_axis(split_axis, x.dim());
  const int ca = norm_axis(concat_axis, x.dim());
  if (sa < 0 || sa >= x.dim() || ca < 0 || ca >= x.dim() || sa == ca)
    fail("all_to_all: split axis " + std::to_string(split_axis) + " and concat axis " + std::to_string(concat_axis) +
         " must be two different axes of " + x.str());
  if (static_cast<int>(split_sizes.size()) != k || static_cast<int>(concat_sizes.size()) != k)
    fail("all_to_all: split_sizes and concat_sizes need one entry per rank (" + std::to_string(k) + ")");
  for (int i = 0; i < k; ++i)
    if (split_sizes[i] < 0 || concat_sizes[i] < 0) fail("all_to_all: negative part size");
  const auto soff = prefix(split_sizes), coff = prefix(concat_sizes);
  if (soff[k] != x.size(sa))
    fail("all_to_all: split sizes sum to " + std::to_string(soff[k]) + " but " + x.str() + " has " +
         std::to_string(x.size(sa)) + " along axis " + std::to_string(sa));
  if (concat_sizes[me] != x.size(ca))
    fail("all_to_all: concat_sizes[" + std::to_string(me) + "] = " + std::to_string(concat_sizes[me]) + " but " +
         x.str() + " has " + std::to_string(x.size(ca)) + " along axis " + std::to_string(ca));
  Shape expect = with_size(x.shape(), sa, split_sizes[me]);
  expect[static_cast<size_t>(ca)] = coff[k];
  if (out.shape() != expect || out.dtype() != x.dtype() || out.device() != x.device())
    fail("all_to_all: output " + out.str() + " should be " + shape_str(expect) + " of " + x.str() + "'s dtype and device");

  const size_t esz = dtype_size(x.dtype());
  // Pack: part j of x (contiguous) at send offset j.
  std::vector<size_t> send_counts(k), send_displs(k), recv_counts(k), recv_displs(k);
  int64_t send_total = 0, recv_total = 0;
  std::vector<Shape> send_shapes(k), recv_shapes(k);
  for (int j = 0; j < k; ++j) {
    send_shapes[j] = with_size(x.shape(), sa, split_sizes[j]);
    recv_shapes[j] = with_size(with_size(x.shape(), sa, split_sizes[me]), ca, concat_sizes[j]);
    const int64_t sn = shape_numel(send_shapes[j]), rn = shape_numel(recv_shapes[j]);
    send_displs[j] = static_cast<size_t>(send_total) * esz;
    send_counts[j] = static_cast<size_t>(sn) * esz;
    recv_displs[j] = static_cast<size_t>(recv_total) * esz;
    recv_counts[j] = static_cast<size_t>(rn) * esz;
    send_total += sn;
    recv_total += rn;
  }
  Tensor send = Tensor::empty({std::max<int64_t>(send_total, 1)}, x.dtype(), x.device());
  Tensor recv = Tensor::empty({std::max<int64_t>(recv_total, 1)}, x.dtype(), x.device());
  for (int j = 0; j < k; ++j) {
    if (split_sizes[j] == 0 || shape_numel(send_shapes[j]) == 0) continue;
    const int64_t o = static_cast<int64_t>(send_displs[j] / esz);
    send.slice(0, o, o + shape_numel(send_shapes[j])).view(send_shapes[j]).copy_from(x.slice(sa, soff[j], soff[j + 1]));
  }
  all_to_all_v(send.data(), send_counts, send_displs, recv.data(), recv_counts, recv_displs, x.device());
  for (int i = 0; i < k; ++i) {
    if (shape_numel(recv_shapes[i]) == 0) continue;
    const int64_t o = static_cast<int64_t>(recv_displs[i] / esz);
    Tensor dst = out.slice(ca, coff[i], coff[i + 1]);
    dst.copy_from(recv.slice(0, o, o + shape_numel(recv_shapes[i])).view(recv_shapes[i]));
  }
}

Tensor Communicator::all_gather(const Tensor& x, int axis, const std::vector<int64_t>& sizes) {
  const int a = norm_axis(axis, x.dim());
  if (a < 0 || a >= x.dim()) fail("all_gather: axis out of range for " + x.str());
  std::vector<int64_t> s = sizes.empty() ? std::vector<int64_t>(static_cast<size_t>(size()), x.size(a)) : sizes;
  if (static_cast<int>(s.size()) != size()) fail("all_gather: sizes need one entry per rank");
  Tensor out = Tensor::empty(with_size(x.shape(), a, std::accumulate(s.begin(), s.end(), int64_t{0})), x.dtype(),
                             x.device());
  all_gather_into(x, axis, out, s);
  return out;
}

void Communicator::all_gather_into(const Tensor& x, int axis, Tensor& out, const std::vector<int64_t>& sizes) {
  const int k = size(), me = rank();
  const int a = norm_axis(axis, x.dim());
  if (a < 0 || a >= x.dim()) fail("all_gather: axis out of range for " + x.str());
  const std::vector<int64_t> s = sizes.empty() ? std::vector<int64_t>(static_cast<size_t>(k), x.size(a)) : sizes;
  if (static_cast<int>(s.size()) != k) fail("all_gather: sizes need one entry per rank");
  if (s[me] != x.size(a))
    fail("all_gather: sizes[" + std::to_string(me) + "] = " + std::to_string(s[me]) + " but " + x.str() + " has " +
         std::to_string(x.size(a)) + " along axis " + std::to_string(a));
  const auto off = prefix(s);
  if (out.shape() != with_size(x.shape(), a, off[k]) || out.dtype() != x.dtype() || out.device() != x.device())
    fail("all_gather: output " + out.str() + " does not match the gathered shape of " + x.str());
  const size_t esz = dtype_size(x.dtype());
  const Tensor send = x.contiguous();
  std::vector<size_t> send_counts(k, x.nbytes()), send_displs(k, 0), recv_counts(k), recv_displs(k);
  int64_t total = 0;
  for (int i = 0; i < k; ++i) {
    const int64_t n = shape_numel(with_size(x.shape(), a, s[i]));
    recv_displs[i] = static_cast<size_t>(total) * esz;
    recv_counts[i] = static_cast<size_t>(n) * esz;
    total += n;
  }
  Tensor recv = Tensor::empty({std::max<int64_t>(total, 1)}, x.dtype(), x.device());
  all_to_all_v(send.data(), send_counts, send_displs, recv.data(), recv_counts, recv_displs, x.device());
  for (int i = 0; i < k; ++i) {
    const Shape sh = with_size(x.shape(), a, s[i]);
    if (shape_numel(sh) == 0) continue;
    const int64_t o = static_cast<int64_t>(recv_displs[i] / esz);
    Tensor dst = out.slice(a, off[i], off[i + 1]);
    dst.copy_from(recv.slice(0, o, o + shape_numel(sh)).view(sh));
  }
}

void Communicator::broadcast(Tensor& x, int root) {
  if (root < 0 || root >= size()) fail("broadcast: root " + std::to_string(root) + " is not a rank");
  if (x.is_contiguous()) {
    broadcast_bytes(x.data(), x.nbytes(), root, x.device());
    return;
  }
  Tensor tmp = x.contiguous();
  broadcast_bytes(tmp.data(), tmp.nbytes(), root, x.device());
  x.copy_from(tmp);
}

std::vector<double> Communicator::all_reduce_sum(const std::vector<double>& values) {
  const int k = size();
  const size_t bytes = values.size() * sizeof(double);
  std::vector<double> all(values.size() * static_cast<size_t>(k));
  std::vector<size_t> counts(k, bytes), send_displs(k, 0), recv_displs(k);
  for (int i = 0; i < k; ++i) recv_displs[i] = static_cast<size_t>(i) * bytes;
  all_to_all_v(values.data(), counts, send_displs, all.data(), counts, recv_displs, Device::cpu());
  std::vector<double> sum(values.size(), 0.0);
  for (int i = 0; i < k; ++i)
    for (size_t e = 0; e < values.size(); ++e) sum[e] += all[static_cast<size_t>(i) * values.size() + e];
  return sum;
}

bool Communicator::any(bool flag) { return all_reduce_sum({flag ? 1.0 : 0.0})[0] > 0.0; }

// ---- in-process backend ----

namespace {

enum class Op { AllToAll, Broadcast, Barrier };
const char* op_name(Op op) {
  switch (op) {
    case Op::AllToAll: return "all_to_all";
    case Op::Broadcast: return "broadcast";
    case Op::Barrier: return "barrier";
  }
  return "?";
}

// What one rank publishes for the collective in progress (host memory only).
struct Slot {
  Op op = Op::Barrier;
  const uint8_t* send = nullptr;  // host bytes (staged when the caller's buffer is on a GPU)
  std::vector<size_t> send_counts, send_displs, recv_counts;
  size_t bytes = 0;  // broadcast
  int root = 0;      // broadcast
};

class InProcessGroup {
 public:
  explicit InProcessGroup(int size) : size_(size), slots_(static_cast<size_t>(size)) {}
  int size() const { return size_; }
  Slot& slot(int r) { return slots_[static_cast<size_t>(r)]; }
  const Slot& slot(int r) const { return slots_[static_cast<size_t>(r)]; }

  // Blocks until every rank has arrived (a generation barrier); throws when the group is aborted.
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mu_);
    throw_if_aborted_locked();
    const uint64_t gen = generation_;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != gen || aborted_; });
    if (generation_ == gen) throw_if_aborted_locked();
  }

  void abort(const std::string& reason) noexcept {
    try {
      std::lock_guard<std::mutex> lock(mu_);
      if (!aborted_) reason_ = reason;
      aborted_ = true;
    } catch (...) {
    }
    cv_.notify_all();
  }

 private:
  void throw_if_aborted_locked() const {
    if (aborted_) throw GroupAborted(reason_, __FILE__, __LINE__);
  }

  const int size_;
  std::vector<Slot> slots_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  bool aborted_ = false;
  std::string reason_;
};

// Copies `bytes` between host and `mem` (either side may be the CPU) on the current stream.
void copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  if (bytes == 0) return;
  if (dst_dev.is_cpu() && src_dev.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
  const Device d = dst_dev.is_cuda() ? dst_dev : src_dev;
  rt::copy_bytes(dst, dst_dev, src, src_dev, bytes, rt::current_stream(d));
  if (dst_dev.is_cuda()) rt::synchronize(rt::current_stream(d));  // the host source goes away
}

// `bytes` at `data` readable from the host: `data` itself on the CPU, else a copy in `staged`.
const uint8_t* host_view(const void* data, Device mem, size_t bytes, std::vector<uint8_t>& staged) {
  if (!mem.is_cuda()) return static_cast<const uint8_t*>(data);
  staged.resize(bytes);
  copy(staged.data(), Device::cpu(), data, mem, bytes);
  return staged.data();
}

class InProcessCommunicator final : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<InProcessGroup> group, int rank, Device device)
      : group_(std::move(group)), rank_(rank), device_(device) {}
  int rank() const override { return rank_; }
  int size() const override { return group_->size(); }
  Device device() const override { return device_; }
  const char* backend() const override { return "in-process"; }

  void all_to_all_v(const void* send, const std::vector<size_t>& send_counts, const std::vector<size_t>& send_displs,
                    void* recv, const std::vector<size_t>& recv_counts, const std::vector<size_t>& recv_displs,
                    Device mem) override {
    check_all_to_all_v_args(send_counts, send_displs, recv_counts, recv_displs);
    const int k = size();
    // Stage a device send buffer in host memory.
    size_t span = 0;
    for (int j = 0; j < k; ++j) span = std::max(span, send_displs[j] + send_counts[j]);
    std::vector<uint8_t> staged;
    const uint8_t* host_send = host_view(send, mem, span, staged);
    Slot& mine = group_->slot(rank_);
    mine.op = Op::AllToAll;
    mine.send = host_send;
    mine.send_counts = send_counts;
    mine.send_displs = send_displs;
    mine.recv_counts = recv_counts;
    group_->arrive_and_wait();
    // Every rank checks the whole table, so all agree on success or on the same error.
    std::string error = check_op(Op::AllToAll);
    for (int i = 0; i < k && error.empty(); ++i)
      for (int j = 0; j < k && error.empty(); ++j)
        if (group_->slot(i).send_counts[j] != group_->slot(j).recv_counts[i])
          error = "all_to_all: rank " + std::to_string(i) + " sends " + std::to_string(group_->slot(i).send_counts[j]) +
                  " bytes to rank " + std::to_string(j) + ", which expects " +
                  std::to_string(group_->slot(j).recv_counts[i]);
    if (error.empty()) {
      for (int i = 0; i < k; ++i) {
        const Slot& s = group_->slot(i);
        copy(static_cast<uint8_t*>(recv) + recv_displs[i], mem, s.send + s.send_displs[rank_], Device::cpu(),
             recv_counts[i]);
      }
    }
    group_->arrive_and_wait();  // peers' send buffers stay alive until everyone has read them
    if (!error.empty()) STAVID_THROW(ErrorCode::InvalidArgument, "communicator: ", error);
  }

  void broadcast_bytes(void* data, size_t bytes, int root, Device mem) override {
    if (root < 0 || root >= size()) fail("broadcast: root " + std::to_string(root) + " is not a rank");
    std::vector<uint8_t> staged;
    const uint8_t* src = rank_ == root ? host_view(data, mem, bytes, staged) : static_cast<const uint8_t*>(data);
    Slot& mine = group_->slot(rank_);
    mine.op = Op::Broadcast;
    mine.send = src;
    mine.bytes = bytes;
    mine.root = root;
    group_->arrive_and_wait();
    std::string error = check_op(Op::Broadcast);
    for (int i = 0; i < size() && error.empty(); ++i)
      if (group_->slot(i).root != root || group_->slot(i).bytes != bytes)
        error = "broadcast: rank " + std::to_string(i) + " passes root " + std::to_string(group_->slot(i).root) + " and " +
                std::to_string(group_->slot(i).bytes) + " bytes, rank " + std::to_string(rank_) + " root " +
                std::to_string(root) + " and " + std::to_string(bytes);
    if (error.empty() && rank_ != root) copy(data, mem, group_->slot(root).send, Device::cpu(), bytes);
    group_->arrive_and_wait();
    if (!error.empty()) STAVID_THROW(ErrorCode::InvalidArgument, "communicator: ", error);
  }

  void barrier() override {
    group_->slot(rank_).op = Op::Barrier;
    group_->arrive_and_wait();
    const std::string error = check_op(Op::Barrier);
    group_->arrive_and_wait();
    if (!error.empty()) STAVID_THROW(ErrorCode::InvalidArgument, "communicator: ", error);
  }

  void abort(const std::string& reason) noexcept override { group_->abort(reason); }

 private:
  // Every rank must be in the same collective.
  std::string check_op(Op op) const {
    for (int i = 0; i < size(); ++i)
      if (group_->slot(i).op != op)
        return std::string("rank ") + std::to_string(i) + " called " + op_name(group_->slot(i).op) + " while rank " +
               std::to_string(rank_) + " called " + op_name(op);
    return {};
  }

  std::shared_ptr<InProcessGroup> group_;
  int rank_;
  Device device_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_in_process_group(int size, const std::vector<Device>& devices) {
  STAVID_CHECK(size >= 1, "communicator: group size must be >= 1, got ", size);
  STAVID_CHECK(devices.empty() || static_cast<int>(devices.size()) == size, "communicator: ", devices.size(),
               " devices for ", size, " ranks");
  auto group = std::make_shared<InProcessGroup>(size);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (int r = 0; r < size; ++r)
    comms.push_back(std::make_unique<InProcessCommunicator>(group, r, devices.empty() ? Device::cpu() : devices[r]));
  return comms;
}

#if !defined(STAVID_HAVE_NCCL)
bool nccl_available() { return false; }
std::vector<std::unique_ptr<Communicator>> make_nccl_group(const std::vector<int>&) {
  STAVID_THROW(ErrorCode::Unsupported, "communicator: this build has no NCCL (configure with CUDA and NCCL)");
}
#endif

void run_on_ranks(const std::vector<std::unique_ptr<Communicator>>& comms, const std::function<void(int rank)>& fn) {
  STAVID_CHECK(!comms.empty(), "run_on_ranks: no ranks");
  std::mutex mu;
  std::exception_ptr first;
  bool first_is_consequence = false;
  auto body = [&](int r) {
    try {
      rt::set_device(comms[r]->device());
      fn(r);
    } catch (...) {
      std::string what = "an exception";
      try {
        throw;
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      {
        // A rank that fails aborts the group before its exception gets here, so a peer's
        // GroupAborted can arrive first: any other exception (the cause) replaces it.
        std::lock_guard<std::mutex> lock(mu);
        bool consequence = false;
        try {
          throw;
        } catch (const GroupAborted&) {
          consequence = true;
        } catch (...) {
        }
        if (!first || (first_is_consequence && !consequence)) {
          first = std::current_exception();
          first_is_consequence = consequence;
        }
      }
      comms[r]->abort("rank " + std::to_string(r) + " failed: " + what);
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(comms.size());
  for (int r = 0; r < static_cast<int>(comms.size()); ++r) threads.emplace_back(body, r);
  for (auto& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

std::vector<int64_t> split_evenly(int64_t n, int k) {
  STAVID_CHECK(k >= 1 && n >= 0, "split_evenly: bad sizes ", n, " over ", k);
  std::vector<int64_t> s(static_cast<size_t>(k), n / k);
  for (int64_t i = 0; i < n % k; ++i) ++s[static_cast<size_t>(i)];
  return s;
}

}  // namespace stavid::parallel
