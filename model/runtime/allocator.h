// Memory for tensors. The CUDA allocator caches freed blocks, so steady-state inference makes no
// cudaMalloc/cudaFree calls.
//
// CUDA caching policy:
// - Sizes are rounded to classes: multiples of 512 B up to 1 MiB; above that, four classes per
//   power of two (2^k, 1.25, 1.5, 1.75 x 2^k), so waste stays under 25% and class reuse is likely.
// - A freed block goes back to the free list of the stream it was allocated on and is reused only by
//   allocations on that stream: stream order makes reuse safe without events. Memory used on other
//   streams must be kept alive by the caller until that work is done.
// - When cudaMalloc fails, every cached free block of the device is released and the call retried
//   once; a second failure throws ErrorCode::OutOfMemory with the allocator's statistics.
// - An optional reserve limit (set_reserve_limit) bounds what the cache holds: a cache miss that
//   would take reserved memory past the limit first releases the cached free blocks. The limit is
//   soft: live memory above it is still allocated (the caller's plan was wrong, not the cache).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>

#include "kernels/core/device.h"

namespace stavid::rt {

struct AllocatorStats {
  size_t allocated_bytes = 0;       // in live blocks (rounded sizes)
  size_t reserved_bytes = 0;        // obtained from the driver (live + cached)
  size_t peak_allocated_bytes = 0;  // high-water mark of allocated_bytes since the last reset
  size_t peak_reserved_bytes = 0;
  uint64_t num_allocs = 0;         // allocate() calls
  uint64_t num_device_allocs = 0;  // of which reached the driver (cache misses)
  uint64_t num_device_frees = 0;   // blocks handed back to the driver
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  // Returns memory of at least `bytes`, 256-byte aligned; ordered on `stream` for CUDA.
  virtual void* allocate(size_t bytes, const Stream& stream) = 0;
  virtual void deallocate(void* ptr) = 0;
  // Releases cached, unused memory back to the system.
  virtual void empty_cache() = 0;
  virtual AllocatorStats stats() const = 0;
  virtual void reset_peak() = 0;
  // Bytes of reserved memory past which cached blocks are released before asking the system for
  // more (0: no limit). Returns the previous limit.
  virtual size_t set_reserve_limit(size_t bytes) { return 0; }
};

// Sets an allocator's reserve limit for a scope and restores the previous one.
class ScopedReserveLimit {
 public:
  ScopedReserveLimit(Allocator& a, size_t bytes) : a_(a), prev_(a.set_reserve_limit(bytes)) {}
  ~ScopedReserveLimit() { a_.set_reserve_limit(prev_); }
  ScopedReserveLimit(const ScopedReserveLimit&) = delete;
  ScopedReserveLimit& operator=(const ScopedReserveLimit&) = delete;

 private:
  Allocator& a_;
  size_t prev_;
};

// The process-wide allocator for a device (one per CUDA ordinal, one for the CPU).
Allocator& allocator_for(Device device);

// Rounded size class used by the CUDA caching allocator (exposed for tests).
size_t allocation_size_class(size_t bytes);

// Host memory, 256-byte aligned, with the same size classes and a bounded cache of freed blocks
// (large buffers from the system allocator are fresh mmaps whose page faults dominate otherwise);
// blocks of 2 MiB and more are advised as transparent huge pages (one fault per 2 MiB).
class CpuAllocator final : public Allocator {
 public:
  static constexpr size_t kMaxCachedBytes = size_t(2) << 30;
  ~CpuAllocator() override;
  void* allocate(size_t bytes, const Stream& stream) override;
  void deallocate(void* ptr) override;
  void empty_cache() override;
  AllocatorStats stats() const override;
  void reset_peak() override;

 private:
  void release_cached_locked();
  mutable std::mutex mu_;
  std::unordered_map<void*, size_t> live_;
  std::multimap<size_t, void*> free_;
  size_t cached_bytes_ = 0;
  AllocatorStats stats_;
};

class CudaCachingAllocator final : public Allocator {
 public:
  explicit CudaCachingAllocator(int device) : device_(device) {}
  ~CudaCachingAllocator() override;
  void* allocate(size_t bytes, const Stream& stream) override;
  void deallocate(void* ptr) override;
  void empty_cache() override;
  AllocatorStats stats() const override;
  void reset_peak() override;
  size_t set_reserve_limit(size_t bytes) override;

 private:
  struct Block {
    size_t size;
    CudaStream stream;
  };
  void release_cached_locked();

  int device_;
  mutable std::mutex mu_;
  std::unordered_map<void*, Block> live_;
  // Free blocks per stream, by size class.
  std::unordered_map<CudaStream, std::multimap<size_t, void*>> free_;
  AllocatorStats stats_;
  size_t reserve_limit_ = 0;
};

}  // namespace stavid::rt
