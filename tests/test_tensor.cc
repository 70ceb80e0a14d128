#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "kernels/core/error.h"
#include "model/runtime/tensor.h"
#include "test_util.h"

namespace stavid {
namespace {

std::vector<float> iota_values(int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0.f);
  return v;
}

std::vector<Device> devices() {
  std::vector<Device> d{Device::cpu()};
  if (rt::cuda_available()) d.push_back(Device::cuda(0));
  return d;
}

TEST(Tensor, CreationAndProperties) {
  Tensor t = Tensor::zeros({2, 3, 4}, DType::BF16, Device::cpu());
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.dim(), 3);
  EXPECT_EQ(t.size(-1), 4);
  EXPECT_EQ(t.stride(0), 12);
  EXPECT_EQ(t.nbytes(), 48u);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.str(), "bf16[2, 3, 4] cpu");
  for (float v : t.to_host_f32()) EXPECT_EQ(v, 0.f);
  EXPECT_THROW(Tensor::empty({2, -1}, DType::F32, Device::cpu()), Error);
}

TEST(Tensor, ViewsShareStorageAndIndexCorrectly) {
  for (Device dev : devices()) {
    Tensor t = Tensor::from_host(iota_values(60), {3, 4, 5}, DType::F32, dev);
    // slice along the middle dim, every other element
    Tensor s = t.slice(1, 1, 4, 2);  // rows 1 and 3
    EXPECT_EQ(s.shape(), (Shape{3, 2, 5}));
    EXPECT_FALSE(s.is_contiguous());
    auto v = s.to_host_f32();
    EXPECT_EQ(v[0], 5.f);   // [0,1,0]
    EXPECT_EQ(v[5], 15.f);  // [0,3,0]
    EXPECT_EQ(v[10], 25.f); // [1,1,0]
    // select and transpose
    Tensor sel = t.select(2, 4);  // [3, 4]: t[:, :, 4]
    EXPECT_EQ(sel.to_host_f32()[5], 29.f);  // t[1,1,4]
    Tensor tr = t.transpose(0, 2);  // [5, 4, 3]
    auto tv = tr.contiguous().to_host_f32();
    EXPECT_EQ(tv[1], 20.f);  // tr[0,0,1] = t[1,0,0]
    EXPECT_EQ(tv[(4 * 4 + 3) * 3 + 2], 59.f);
    // permute round trip
    Tensor p = t.permute({2, 0, 1}).contiguous().permute({1, 2, 0});
    EXPECT_EQ(p.contiguous().to_host_f32(), t.to_host_f32());
    // view and reshape
    EXPECT_EQ(t.view({-1, 5}).shape(), (Shape{12, 5}));
    EXPECT_THROW(s.view({30}), Error);
    EXPECT_EQ(s.reshape({30}).to_host_f32(), v);
    EXPECT_EQ(t.unsqueeze(0).shape(), (Shape{1, 3, 4, 5}));
    EXPECT_EQ(t.unsqueeze(-1).shape(), (Shape{3, 4, 5, 1}));
  }
}

TEST(Tensor, WritesThroughViews) {
  for (Device dev : devices()) {
    Tensor t = Tensor::zeros({4, 6}, DType::F32, dev);
    Tensor col = t.slice(1, 2, 3);  // [4, 1], strided
    col.copy_from(Tensor::from_host(std::vector<float>{1, 2, 3, 4}, {4, 1}, DType::F32, Device::cpu()));
    auto v = t.to_host_f32();
    for (int r = 0; r < 4; ++r)
      for (int c = 0; c < 6; ++c) EXPECT_EQ(v[r * 6 + c], c == 2 ? r + 1.f : 0.f) << dev.str();
  }
}

TEST(Tensor, DtypeConversionRoundsLikeTheHostConverters) {
  const auto vals = test::random_values(257, 7, DType::F32, -100.f, 100.f);
  for (Device dev : devices()) {
    for (DType dt : {DType::BF16, DType::F16}) {
      Tensor t = Tensor::from_host(vals, {257}, DType::F32, dev).to(dt);
      auto back = t.to_host_f32();
      for (size_t i = 0; i < vals.size(); ++i) ASSERT_EQ(back[i], round_to(dt, vals[i])) << dev.str() << i;
    }
  }
}

TEST(Tensor, CpuCudaRoundTrip) {
  STAVID_REQUIRE_CUDA();
  const auto vals = test::random_values(1000, 3, DType::BF16);
  Tensor host = Tensor::from_host(vals, {10, 100}, DType::BF16, Device::cpu());
  Tensor dev = host.to(Device::cuda(0));
  EXPECT_EQ(dev.device(), Device::cuda(0));
  // strided device view back to the host, converting on the way
  Tensor back = dev.slice(1, 3, 50).to(DType::F32).to(Device::cpu());
  auto b = back.to_host_f32();
  for (int r = 0; r < 10; ++r)
    for (int c = 0; c < 47; ++c) ASSERT_EQ(b[r * 47 + c], vals[r * 100 + c + 3]);
}

TEST(Rng, NormalStatistics) {
  Tensor t = Tensor::randn({1 << 18}, 1234, DType::F32, Device::cpu());
  auto v = t.to_host_f32();
  double s = 0, s2 = 0;
  for (float x : v) {
    s += x;
    s2 += static_cast<double>(x) * x;
  }
  const double mean = s / v.size(), var = s2 / v.size() - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_NEAR(var, 1.0, 0.01);
  EXPECT_TRUE(test::all_finite(v));
}

TEST(Rng, SameSeedSameValuesDifferentSeedDifferent) {
  auto a = Tensor::randn({1001}, 42, DType::F32, Device::cpu()).to_host_f32();
  auto b = Tensor::randn({1001}, 42, DType::F32, Device::cpu()).to_host_f32();
  auto c = Tensor::randn({1001}, 43, DType::F32, Device::cpu()).to_host_f32();
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(Rng, OffsetContinuesTheStream) {
  // One draw of 1001 equals a draw of 333 followed by a draw of 668 at offset 333 (unaligned).
  auto whole = Tensor::randn({1001}, 9, DType::F32, Device::cpu()).to_host_f32();
  auto head = Tensor::randn({333}, 9, DType::F32, Device::cpu()).to_host_f32();
  auto tail = Tensor::randn({668}, 9, DType::F32, Device::cpu(), 333).to_host_f32();
  head.insert(head.end(), tail.begin(), tail.end());
  EXPECT_EQ(whole, head);
}

TEST(Rng, CpuAndCudaAgree) {
  STAVID_REQUIRE_CUDA();
  for (uint64_t offset : {0ull, 5ull, 1000003ull}) {
    auto cpu = Tensor::randn({100003}, 77, DType::F32, Device::cpu(), offset).to_host_f32();
    auto gpu = Tensor::randn({100003}, 77, DType::F32, Device::cuda(0), offset).to_host_f32();
    ASSERT_EQ(cpu.size(), gpu.size());
    EXPECT_LE(test::max_abs_diff(cpu, gpu), 1e-6) << "offset " << offset;
    size_t identical = 0;
    for (size_t i = 0; i < cpu.size(); ++i) identical += cpu[i] == gpu[i];
    EXPECT_GE(identical, cpu.size() * 999 / 1000);
  }
  // bf16 draws: the same rounding of the same fp32 values.
  auto cpu = Tensor::randn({4096}, 5, DType::BF16, Device::cpu()).to_host_f32();
  auto gpu = Tensor::randn({4096}, 5, DType::BF16, Device::cuda(0)).to_host_f32();
  EXPECT_LE(test::max_abs_diff(cpu, gpu), 0.0079);  // at most one bf16 ulp at |x| < 4
}

}  // namespace
}  // namespace stavid
