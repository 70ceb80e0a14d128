#include "model/runtime/allocator.h"

#include <cstdlib>
#include <memory>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "kernels/core/error.h"
#include "model/runtime/cuda_runtime.h"

#if defined(STAVID_WITH_CUDA)
#include "kernels/core/cuda_check.h"
#endif

namespace stavid::rt {

size_t allocation_size_class(size_t bytes) {
  if (bytes == 0) bytes = 1;
  constexpr size_t kSmall = 1u << 20;
  if (bytes <= kSmall) return (bytes + 511) / 512 * 512;
  // Four classes per power of two above 1 MiB.
  size_t pow2 = kSmall;
  while (pow2 * 2 < bytes) pow2 *= 2;
  const size_t quarter = pow2 / 4;
  return (bytes + quarter - 1) / quarter * quarter;
}

namespace {
void note_alloc(AllocatorStats& s, size_t size) {
  ++s.num_allocs;
  s.allocated_bytes += size;
  if (s.allocated_bytes > s.peak_allocated_bytes) s.peak_allocated_bytes = s.allocated_bytes;
  if (s.reserved_bytes > s.peak_reserved_bytes) s.peak_reserved_bytes = s.reserved_bytes;
}
}  // namespace

// ---- CPU ----

CpuAllocator::~CpuAllocator() {
  for (auto& [size, ptr] : free_) std::free(ptr);
}

namespace {
// Fresh host pages cost a page fault each (and a zeroing) on first touch, which in a VM dominated the CPU VAE
// decode (322k faults for 1.3 GB). Large blocks are 2 MiB aligned and advised as transparent huge pages
// (one fault per 2 MiB where THP is "madvise" or "always").
constexpr size_t kHugePage = size_t(2) << 20;

void* host_alloc(size_t size) {
  if (size < kHugePage) return std::aligned_alloc(256, size);
  const size_t rounded = (size + kHugePage - 1) / kHugePage * kHugePage;
  void* p = std::aligned_alloc(kHugePage, rounded);
#if defined(__linux__)
  if (p != nullptr) madvise(p, rounded, MADV_HUGEPAGE);  // advice only: ignored where THP is off
#endif
  return p;
}
}  // namespace

void* CpuAllocator::allocate(size_t bytes, const Stream&) {
  const size_t size = allocation_size_class(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = free_.find(size); it != free_.end()) {
    void* p = it->second;
    free_.erase(it);
    cached_bytes_ -= size;
    live_[p] = size;
    note_alloc(stats_, size);
    return p;
  }
  void* p = host_alloc(size);
  if (p == nullptr) {
    release_cached_locked();
    p = host_alloc(size);
  }
  STAVID_CHECK_CODE(p != nullptr, ErrorCode::OutOfMemory, "host allocation of ", bytes, " bytes failed");
  live_[p] = size;
  stats_.reserved_bytes += size;
  ++stats_.num_device_allocs;
  note_alloc(stats_, size);
  return p;
}

void CpuAllocator::deallocate(void* ptr) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(ptr);
  if (it == live_.end()) return;
  const size_t size = it->second;
  stats_.allocated_bytes -= size;
  live_.erase(it);
  if (cached_bytes_ + size <= kMaxCachedBytes) {
    free_.emplace(size, ptr);
    cached_bytes_ += size;
    return;
  }
  stats_.reserved_bytes -= size;
  ++stats_.num_device_frees;
  std::free(ptr);
}

void CpuAllocator::release_cached_locked() {
  for (auto& [size, ptr] : free_) {
    std::free(ptr);
    stats_.reserved_bytes -= size;
    ++stats_.num_device_frees;
  }
  free_.clear();
  cached_bytes_ = 0;
}

void CpuAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  release_cached_locked();
}

AllocatorStats CpuAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void CpuAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peak_allocated_bytes = stats_.allocated_bytes;
  stats_.peak_reserved_bytes = stats_.reserved_bytes;
}

// ---- CUDA ----

CudaCachingAllocator::~CudaCachingAllocator() {
  // Process teardown: the driver may already be gone; release quietly.
#if defined(STAVID_WITH_CUDA)
  for (auto& [stream, blocks] : free_)
    for (auto& [size, ptr] : blocks) cudaFree(ptr);
#endif
}

void* CudaCachingAllocator::allocate(size_t bytes, const Stream& stream) {
#if defined(STAVID_WITH_CUDA)
  const size_t size = allocation_size_class(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  auto& pool = free_[stream.cuda];
  if (auto it = pool.find(size); it != pool.end()) {
    void* p = it->second;
    pool.erase(it);
    live_[p] = {size, stream.cuda};
    note_alloc(stats_, size);
    return p;
  }
  int prev = 0;
  STAVID_CUDA_CHECK(cudaGetDevice(&prev));
  STAVID_CUDA_CHECK(cudaSetDevice(device_));
  if (reserve_limit_ > 0 && stats_.reserved_bytes + size > reserve_limit_) release_cached_locked();
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, size);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    release_cached_locked();
    err = cudaMalloc(&p, size);
  }
  cudaSetDevice(prev);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    STAVID_THROW(ErrorCode::OutOfMemory, "CUDA out of memory on device ", device_, ": asked for ", bytes,
                 " bytes with ", stats_.allocated_bytes, " allocated and ", stats_.reserved_bytes,
                 " reserved by stavid");
  }
  STAVID_CUDA_CHECK(err);
  live_[p] = {size, stream.cuda};
  stats_.reserved_bytes += size;
  ++stats_.num_device_allocs;
  note_alloc(stats_, size);
  return p;
#else
  STAVID_THROW(ErrorCode::Unsupported, "CUDA allocation in a build without CUDA");
#endif
}

void CudaCachingAllocator::deallocate(void* ptr) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(ptr);
  if (it == live_.end()) return;
  const Block b = it->second;
  live_.erase(it);
  stats_.allocated_bytes -= b.size;
  free_[b.stream].emplace(b.size, ptr);
}

void CudaCachingAllocator::release_cached_locked() {
#if defined(STAVID_WITH_CUDA)
  // cudaFree synchronizes the device, so work still using a cached block has finished.
  for (auto& [stream, blocks] : free_) {
    for (auto& [size, ptr] : blocks) {
      cudaFree(ptr);
      stats_.reserved_bytes -= size;
      ++stats_.num_device_frees;
    }
    blocks.clear();
  }
#endif
}

void CudaCachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
#if defined(STAVID_WITH_CUDA)
  int prev = 0;
  cudaGetDevice(&prev);
  cudaSetDevice(device_);
  release_cached_locked();
  cudaSetDevice(prev);
#endif
}

AllocatorStats CudaCachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

size_t CudaCachingAllocator::set_reserve_limit(size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t prev = reserve_limit_;
  reserve_limit_ = bytes;
  return prev;
}

void CudaCachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peak_allocated_bytes = stats_.allocated_bytes;
  stats_.peak_reserved_bytes = stats_.reserved_bytes;
}

Allocator& allocator_for(Device device) {
  if (device.is_cpu()) {
    static CpuAllocator* cpu = new CpuAllocator();  // never destroyed: tensors may outlive statics
    return *cpu;
  }
  STAVID_CHECK(device.index >= 0 && device.index < cuda_device_count(), "no CUDA device ", device.index);
  static std::mutex mu;
  static std::vector<std::unique_ptr<CudaCachingAllocator>>* all =
      new std::vector<std::unique_ptr<CudaCachingAllocator>>();
  std::lock_guard<std::mutex> lock(mu);
  if (all->empty()) {
    for (int i = 0; i < cuda_device_count(); ++i) all->push_back(std::make_unique<CudaCachingAllocator>(i));
  }
  return *(*all)[device.index];
}

}  // namespace stavid::rt
