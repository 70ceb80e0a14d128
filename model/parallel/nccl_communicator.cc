// The NCCL backend of model/parallel/communicator.h: one process, one thread per GPU.
//
// make_nccl_group calls ncclCommInitAll over the listed CUDA ordinals (rank r = devices[r]); the
// communicators share a group record so that abort() reaches all of them (ncclCommAbort unblocks
// peers stuck in a collective). Collectives are enqueued on the calling thread's current stream of
// the rank's device (rt::current_stream), so they order with the model's kernels without a host
// sync; only barrier() and collectives on host memory synchronize. all_to_all_v is a grouped
// ncclSend/ncclRecv per peer (the rank's own part is a device copy); argument agreement is not
// checked (NCCL itself cannot know the peers' counts). Built only when CMake finds nccl.h and
// libnccl (STAVID_HAVE_NCCL).
#include <nccl.h>

#include <mutex>

#include "kernels/core/cuda_check.h"
#include "kernels/core/error.h"
#include "model/parallel/communicator.h"
#include "model/runtime/cuda_runtime.h"

// NCCL member of the checking macro family (kernels/core/cuda_check.h): throws stavid::Error naming
// the statement and the device.
#define STAVID_NCCL_CHECK(stmt)                                                    \
  do {                                                                             \
    const ncclResult_t stavid_nr_ = (stmt);                                        \
    if (stavid_nr_ != ncclSuccess) {                                               \
      int stavid_dev_ = -1;                                                        \
      cudaGetDevice(&stavid_dev_);                                                 \
      STAVID_THROW(::stavid::ErrorCode::Internal, "NCCL error ", ncclGetErrorString(stavid_nr_), " in `", #stmt, \
                   "` on device ", stavid_dev_);                                   \
    }                                                                              \
  } while (0)

namespace stavid::parallel {
namespace {

struct NcclGroup {
  std::vector<ncclComm_t> comms;
  std::mutex mu;
  bool aborted = false;
  std::string reason;

  ~NcclGroup() {
    if (aborted) return;  // ncclCommAbort already freed them
    for (ncclComm_t c : comms) ncclCommDestroy(c);
  }
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::shared_ptr<NcclGroup> group, int rank, int cuda_device)
      : group_(std::move(group)), rank_(rank), device_(Device::cuda(cuda_device)) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(group_->comms.size()); }
  Device device() const override { return device_; }
  const char* backend() const override { return "nccl"; }

  void all_to_all_v(const void* send, const std::vector<size_t>& send_counts, const std::vector<size_t>& send_displs,
                    void* recv, const std::vector<size_t>& recv_counts, const std::vector<size_t>& recv_displs,
                    Device mem) override {
    check_all_to_all_v_args(send_counts, send_displs, recv_counts, recv_displs);
    const int k = size();
    throw_if_aborted();
    rt::set_device(device_);
    const Stream stream = rt::current_stream(device_);
    size_t send_span = 0, recv_span = 0;
    for (int j = 0; j < k; ++j) {
      send_span = std::max(send_span, send_displs[j] + send_counts[j]);
      recv_span = std::max(recv_span, recv_displs[j] + recv_counts[j]);
    }
    // Host memory (small host vectors such as TeaCache statistics) is staged on the device.
    Tensor send_stage, recv_stage;
    const uint8_t* s = static_cast<const uint8_t*>(send);
    uint8_t* r = static_cast<uint8_t*>(recv);
    if (mem.is_cpu()) {
      send_stage = Tensor::empty({static_cast<int64_t>(send_span / 4 + 1)}, DType::F32, device_);  // bytes, rounded up
      recv_stage = Tensor::empty({static_cast<int64_t>(recv_span / 4 + 1)}, DType::F32, device_);
      rt::copy_bytes(send_stage.data(), device_, send, Device::cpu(), send_span, stream);
      s = static_cast<const uint8_t*>(send_stage.data());
      r = static_cast<uint8_t*>(recv_stage.data());
    } else if (mem != device_) {
      fail("all_to_all_v: memory on " + mem.str() + ", the rank runs on " + device_.str());
    }
    if (recv_counts[rank_] > 0) {
      if (recv_counts[rank_] != send_counts[rank_]) fail("all_to_all_v: the rank's own send and receive counts differ");
      STAVID_CUDA_CHECK(cudaMemcpyAsync(r + recv_displs[rank_], s + send_displs[rank_], send_counts[rank_],
                                        cudaMemcpyDeviceToDevice, stream.cuda));
    }
    STAVID_NCCL_CHECK(ncclGroupStart());
    for (int j = 0; j < k; ++j) {
      if (j == rank_) continue;
      if (send_counts[j] > 0)
        STAVID_NCCL_CHECK(ncclSend(s + send_displs[j], send_counts[j], ncclUint8, j, comm(), stream.cuda));
      if (recv_counts[j] > 0)
        STAVID_NCCL_CHECK(ncclRecv(r + recv_displs[j], recv_counts[j], ncclUint8, j, comm(), stream.cuda));
    }
    STAVID_NCCL_CHECK(ncclGroupEnd());
    if (mem.is_cpu()) {
      rt::copy_bytes(recv, Device::cpu(), recv_stage.data(), device_, recv_span, stream);  // synchronizes
    }
  }

  void broadcast_bytes(void* data, size_t bytes, int root, Device mem) override {
    if (root < 0 || root >= size()) fail("broadcast: root " + std::to_string(root) + " is not a rank");
    throw_if_aborted();
    rt::set_device(device_);
    const Stream stream = rt::current_stream(device_);
    Tensor stage;
    void* p = data;
    if (mem.is_cpu()) {
      stage = Tensor::empty({static_cast<int64_t>(bytes / 4 + 1)}, DType::F32, device_);  // bytes, rounded up
      rt::copy_bytes(stage.data(), device_, data, Device::cpu(), bytes, stream);
      p = stage.data();
    } else if (mem != device_) {
      fail("broadcast: memory on " + mem.str() + ", the rank runs on " + device_.str());
    }
    STAVID_NCCL_CHECK(ncclBroadcast(p, p, bytes, ncclUint8, root, comm(), stream.cuda));
    if (mem.is_cpu()) rt::copy_bytes(data, Device::cpu(), stage.data(), device_, bytes, stream);
  }

  void barrier() override {
    throw_if_aborted();
    rt::set_device(device_);
    const Stream stream = rt::current_stream(device_);
    Tensor one = Tensor::zeros({1}, DType::F32, device_);
    STAVID_NCCL_CHECK(ncclAllReduce(one.data(), one.data(), 1, ncclFloat32, ncclSum, comm(), stream.cuda));
    rt::synchronize(stream);
  }

  void abort(const std::string& reason) noexcept override {
    std::lock_guard<std::mutex> lock(group_->mu);
    if (group_->aborted) return;
    group_->aborted = true;
    group_->reason = reason;
    for (ncclComm_t c : group_->comms) ncclCommAbort(c);
  }

 private:
  ncclComm_t comm() const { return group_->comms[static_cast<size_t>(rank_)]; }
  void throw_if_aborted() {
    std::lock_guard<std::mutex> lock(group_->mu);
    if (group_->aborted) throw GroupAborted(group_->reason, __FILE__, __LINE__);
  }

  std::shared_ptr<NcclGroup> group_;
  int rank_;
  Device device_;
};

}  // namespace

bool nccl_available() { return true; }

std::vector<std::unique_ptr<Communicator>> make_nccl_group(const std::vector<int>& cuda_devices) {
  STAVID_CHECK(!cuda_devices.empty(), "communicator: no devices for the NCCL group");
  for (int d : cuda_devices)
    STAVID_CHECK(d >= 0 && d < rt::cuda_device_count(), "communicator: no CUDA device ", d, " (",
                 rt::cuda_device_count(), " available)");
  auto group = std::make_shared<NcclGroup>();
  group->comms.resize(cuda_devices.size());
  STAVID_NCCL_CHECK(ncclCommInitAll(group->comms.data(), static_cast<int>(cuda_devices.size()), cuda_devices.data()));
  std::vector<std::unique_ptr<Communicator>> out;
  for (size_t r = 0; r < cuda_devices.size(); ++r)
    out.push_back(std::make_unique<NcclCommunicator>(group, static_cast<int>(r), cuda_devices[r]));
  return out;
}

}  // namespace stavid::parallel
