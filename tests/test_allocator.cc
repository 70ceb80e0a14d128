#include <gtest/gtest.h>

#include "kernels/core/error.h"
#include "model/runtime/allocator.h"
#include "model/runtime/cuda_runtime.h"
#include "model/runtime/tensor.h"
#include "test_util.h"

namespace stavid::rt {
namespace {

TEST(Allocator, SizeClasses) {
  EXPECT_EQ(allocation_size_class(0), 512u);
  EXPECT_EQ(allocation_size_class(1), 512u);
  EXPECT_EQ(allocation_size_class(513), 1024u);
  EXPECT_EQ(allocation_size_class(1u << 20), 1u << 20);
  EXPECT_EQ(allocation_size_class((1u << 20) + 1), (1u << 20) + (1u << 18));
  EXPECT_EQ(allocation_size_class(3u << 20), 3u << 20);
  for (size_t b : {size_t(1) << 21, size_t(3000001), size_t(123456789), size_t(1) << 33}) {
    const size_t c = allocation_size_class(b);
    EXPECT_GE(c, b);
    EXPECT_LT(static_cast<double>(c), 1.26 * static_cast<double>(b)) << b;
  }
}

TEST(Allocator, CpuTracksLiveBytes) {
  Allocator& a = allocator_for(Device::cpu());
  const AllocatorStats before = a.stats();
  {
    Tensor t = Tensor::empty({1000}, DType::F32, Device::cpu());
    EXPECT_GE(a.stats().allocated_bytes, before.allocated_bytes + 4000);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 256, 0u);
  }
  EXPECT_EQ(a.stats().allocated_bytes, before.allocated_bytes);
}

TEST(Allocator, CpuReusesFreedBlocks) {
  Allocator& a = allocator_for(Device::cpu());
  void* p = a.allocate(5 << 20, Stream::cpu());
  a.deallocate(p);
  const AllocatorStats warm = a.stats();
  void* q = a.allocate(5 << 20, Stream::cpu());  // same size class: the cached block
  EXPECT_EQ(p, q);
  EXPECT_EQ(a.stats().num_device_allocs, warm.num_device_allocs);
  a.deallocate(q);
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved_bytes, a.stats().allocated_bytes);
}

TEST(Allocator, CudaSteadyStateMakesNoDriverCalls) {
  STAVID_REQUIRE_CUDA();
  Allocator& a = allocator_for(Device::cuda(0));
  // Warm up a set of sizes, then repeat the same pattern: no new cudaMalloc.
  auto pattern = [] {
    for (int64_t n : {1000, 4096, 1 << 20, 3 << 20, 77777}) {
      Tensor x = Tensor::empty({n}, DType::BF16, Device::cuda(0));
      Tensor y = Tensor::empty({n}, DType::F32, Device::cuda(0));
      (void)x;
      (void)y;
    }
  };
  pattern();
  const AllocatorStats warm = a.stats();
  for (int i = 0; i < 50; ++i) pattern();
  const AllocatorStats after = a.stats();
  EXPECT_EQ(after.num_device_allocs, warm.num_device_allocs);
  EXPECT_EQ(after.num_allocs, warm.num_allocs + 50 * 10);
  EXPECT_EQ(after.allocated_bytes, warm.allocated_bytes);
  EXPECT_GE(after.peak_allocated_bytes, static_cast<size_t>(3 << 20) * 6);
}

TEST(Allocator, CudaBlocksStayWithTheirStream) {
  STAVID_REQUIRE_CUDA();
  Allocator& a = allocator_for(Device::cuda(0));
  OwnedStream s1(Device::cuda(0)), s2(Device::cuda(0));
  void* p = a.allocate(12345, s1.get());
  a.deallocate(p);
  void* q = a.allocate(12345, s2.get());  // another stream: must not get s1's block
  EXPECT_NE(p, q);
  void* r = a.allocate(12345, s1.get());  // same stream: reuses it
  EXPECT_EQ(p, r);
  a.deallocate(q);
  a.deallocate(r);
}

TEST(Allocator, CudaOutOfMemoryIsAnErrorNotACrash) {
  STAVID_REQUIRE_CUDA();
  Allocator& a = allocator_for(Device::cuda(0));
  try {
    a.allocate(size_t(1) << 50, current_stream(Device::cuda(0)));  // a petabyte
    FAIL() << "expected out of memory";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::OutOfMemory);
    EXPECT_NE(std::string(e.what()).find("out of memory"), std::string::npos);
  }
  // The allocator still works afterwards.
  Tensor t = Tensor::full({16}, 1.f, DType::F32, Device::cuda(0));
  EXPECT_EQ(t.to_host_f32()[15], 1.f);
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved_bytes, a.stats().allocated_bytes);
}

}  // namespace
}  // namespace stavid::rt
