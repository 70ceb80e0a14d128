// Sequence parallelism on the CPU with the in-process communicator (docs/parallel.md):
// - the communicator's collectives (uneven all-to-all, all-gather, broadcast, all-reduce, barrier)
//   and its errors (mismatched counts or collectives, a failing rank);
// - Ulysses in the DiT: k = 1, 2, 3, 4 ranks give the single-rank forward (12 heads, per-head STA
//   windows, a canvas the tile does not divide), a whole sampler run with TeaCache skipping steps,
//   and the tiled VAE decode split over ranks.
// On a GPU machine also: ranks sharing one GPU (in-process, host staging) and an NCCL group of one.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <numeric>

#include "kernels/core/error.h"
#include "model/dit/dit.h"
#include "model/dit/teacache.h"
#include "model/parallel/communicator.h"
#include "model/parallel/parallel_vae.h"
#include "model/parallel/ulysses.h"
#include "model/sampler/flow_match.h"
#include "model/vae/vae.h"
#include "test_util.h"

namespace stavid::parallel {
namespace {

using Comms = std::vector<std::unique_ptr<Communicator>>;

// A host tensor whose element i is `base + i` (every element distinct).
Tensor iota(const Shape& shape, float base) {
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  std::iota(v.begin(), v.end(), base);
  return Tensor::from_host(v, shape, DType::F32, Device::cpu());
}

void expect_same(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  const auto x = a.to_host_f32(), y = b.to_host_f32();
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(x[i], y[i]) << what << " element " << i;
}

// max |a - b| / max |b|
double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, mag = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    mag = std::max(mag, std::abs(static_cast<double>(b[i])));
  }
  return mag > 0 ? diff / mag : diff;
}

// Runs fn on k in-process ranks; returns the first error's code, or nothing.
template <typename F>
std::optional<ErrorCode> run_group(int k, F&& fn) {
  Comms comms = make_in_process_group(k);
  try {
    run_on_ranks(comms, [&](int r) { fn(*comms[r]); });
  } catch (const Error& e) {
    return e.code();
  }
  return std::nullopt;
}

// ---- communicator ----

TEST(Communicator, AllToAllUnevenPartsRoundTrips) {
  // Global [2, N=13, 6 heads, 3]; rows split {5, 7, 1}, heads split {1, 2, 3}: both uneven.
  const Tensor global = iota({2, 13, 6, 3}, 0.f);
  const std::vector<int64_t> rows = {5, 7, 1}, heads = {1, 2, 3};
  const std::vector<int64_t> row0 = {0, 5, 12}, head0 = {0, 1, 3};
  Comms comms = make_in_process_group(3);
  run_on_ranks(comms, [&](int r) {
    Communicator& c = *comms[r];
    const Tensor mine = global.slice(1, row0[r], row0[r] + rows[r]);  // a strided view
    const Tensor swapped = c.all_to_all(mine, /*split_axis=*/2, heads, /*concat_axis=*/1, rows);
    expect_same(swapped, global.slice(2, head0[r], head0[r] + heads[r]), "rank " + std::to_string(r) + " forward");
    const Tensor back = c.all_to_all(swapped, 1, rows, 2, heads);
    expect_same(back, mine, "rank " + std::to_string(r) + " inverse");
  });
}

TEST(Communicator, AllToAllIntoStridedOutput) {
  Comms comms = make_in_process_group(2);
  const Tensor global = iota({1, 4, 6}, 1.f);
  run_on_ranks(comms, [&](int r) {
    Communicator& c = *comms[r];
    // Columns of rank r for all rows -> rows of rank r for all columns, written into a wider buffer.
    const Tensor mine = global.slice(2, 3 * r, 3 * r + 3).contiguous();  // [1, 4, 3]
    Tensor wide = Tensor::full({1, 2, 10}, -1.f, DType::F32, Device::cpu());
    Tensor view = wide.slice(2, 2, 8);  // [1, 2, 6], row stride 10
    c.all_to_all_into(mine, 1, {2, 2}, view, 2, {3, 3});
    expect_same(view, global.slice(1, 2 * r, 2 * r + 2), "into");
    const auto w = wide.to_host_f32();
    for (int row = 0; row < 2; ++row)
      for (int col : {0, 1, 8, 9}) EXPECT_EQ(w[row * 10 + col], -1.f) << "guard column " << col << " written";
  });
}

TEST(Communicator, AllGatherBroadcastAllReduceBarrier) {
  for (int k : {1, 2, 3, 4}) {
    Comms comms = make_in_process_group(k);
    std::vector<int64_t> sizes;
    for (int r = 0; r < k; ++r) sizes.push_back(r + 1);  // uneven along axis 1
    const Tensor global = iota({2, std::accumulate(sizes.begin(), sizes.end(), int64_t{0}), 3}, 0.f);
    std::atomic<int> arrived{0};
    std::vector<std::vector<double>> sums(static_cast<size_t>(k));
    run_on_ranks(comms, [&](int r) {
      Communicator& c = *comms[r];
      EXPECT_EQ(c.rank(), r);
      EXPECT_EQ(c.size(), k);
      const int64_t o = r * (r + 1) / 2;
      expect_same(c.all_gather(global.slice(1, o, o + sizes[r]), 1, sizes), global, "all_gather");
      // Equal sizes, along the last axis.
      const Tensor cols = iota({2, 2}, 10.f * r);
      const Tensor g = c.all_gather(cols, 1);
      ASSERT_EQ(g.shape(), (Shape{2, 2 * k}));
      EXPECT_EQ(g.to_host_f32()[2 * (k - 1)], 10.f * (k - 1));
      Tensor b = r == k - 1 ? iota({3, 2}, 7.f) : Tensor::zeros({3, 2}, DType::F32, Device::cpu());
      c.broadcast(b, k - 1);
      expect_same(b, iota({3, 2}, 7.f), "broadcast");
      sums[r] = c.all_reduce_sum({0.1 * (r + 1), 1e-17 * r, static_cast<double>(r)});
      EXPECT_EQ(c.any(r == k - 1), true);
      EXPECT_EQ(c.any(false), false);
      arrived.fetch_add(1);
      c.barrier();
      EXPECT_EQ(arrived.load(), k) << "barrier returned before every rank arrived";
    });
    for (int r = 0; r < k; ++r) {
      EXPECT_EQ(std::memcmp(sums[r].data(), sums[0].data(), 3 * sizeof(double)), 0) << "ranks disagree on the sum";
      EXPECT_NEAR(sums[r][0], 0.1 * k * (k + 1) / 2, 1e-12);
      EXPECT_EQ(sums[r][2], k * (k - 1) / 2.0);
    }
  }
}

TEST(Communicator, MismatchedCountsFailOnEveryRank) {
  std::mutex mu;
  std::vector<std::string> messages;
  const auto code = run_group(2, [&](Communicator& c) {
    // Rank 0 sends 8 bytes to rank 1, which expects 4.
    std::vector<uint8_t> send(16, 1), recv(16, 0);
    const std::vector<size_t> sc = {4, c.rank() == 0 ? size_t{8} : size_t{4}}, sd = {0, 8}, rd = {0, 8};
    const std::vector<size_t> rc = {4, 4};
    try {
      c.all_to_all_v(send.data(), sc, sd, recv.data(), rc, rd, Device::cpu());
    } catch (const Error& e) {
      std::lock_guard<std::mutex> lock(mu);
      messages.push_back(e.message());
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      return;
    }
    ADD_FAILURE() << "rank " << c.rank() << " accepted mismatched counts";
  });
  EXPECT_FALSE(code.has_value());
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[0], messages[1]);
  EXPECT_NE(messages[0].find("rank 0 sends 8 bytes to rank 1, which expects 4"), std::string::npos) << messages[0];
}

TEST(Communicator, MismatchedCollectivesAndRootsFail) {
  // One rank in a barrier, the other in a broadcast.
  EXPECT_EQ(run_group(2,
                      [&](Communicator& c) {
                        if (c.rank() == 0) {
                          c.barrier();
                        } else {
                          Tensor t = Tensor::zeros({2}, DType::F32, Device::cpu());
                          c.broadcast(t, 0);
                        }
                      }),
            ErrorCode::InvalidArgument);
  // Different roots.
  EXPECT_EQ(run_group(3,
                      [&](Communicator& c) {
                        Tensor t = Tensor::zeros({2}, DType::F32, Device::cpu());
                        c.broadcast(t, c.rank() == 2 ? 1 : 0);
                      }),
            ErrorCode::InvalidArgument);
  // Local argument errors abort the group: the peers stop waiting, the cause is reported.
  EXPECT_EQ(run_group(3,
                      [&](Communicator& c) {
                        const Tensor x = Tensor::zeros({4, 6}, DType::F32, Device::cpu());
                        const std::vector<int64_t> split = c.rank() == 1 ? std::vector<int64_t>{2, 2}
                                                                         : std::vector<int64_t>{2, 2, 2};
                        c.all_to_all(x, 1, split, 0, {4, 4, 4});
                      }),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(run_group(2, [&](Communicator& c) { c.all_gather(Tensor::zeros({3}, DType::F32, Device::cpu()), 0, {3, 3, 3}); }),
            ErrorCode::InvalidArgument);
}

TEST(Communicator, FailingRankUnblocksPeers) {
  Comms comms = make_in_process_group(3);
  try {
    run_on_ranks(comms, [&](int r) {
      if (r == 1) STAVID_THROW(ErrorCode::DataLoss, "rank 1 broke");
      comms[r]->barrier();  // would wait forever without the abort
    });
    FAIL() << "expected the rank's error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::DataLoss);
    EXPECT_NE(e.message().find("rank 1 broke"), std::string::npos);
  }
  // The group stays aborted.
  EXPECT_THROW(run_on_ranks(comms, [&](int r) { comms[r]->barrier(); }), Error);
}

TEST(Communicator, GroupErrors) {
  EXPECT_THROW(make_in_process_group(0), Error);
  EXPECT_THROW(make_in_process_group(2, {Device::cpu()}), Error);
  EXPECT_EQ(split_evenly(10, 4), (std::vector<int64_t>{3, 3, 2, 2}));
  if (!nccl_available()) {
    try {
      make_nccl_group({0});
      FAIL() << "expected Unsupported";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Unsupported);
    }
  }
}

// ---- DiT ----

dit::DitConfig config12() {
  dit::DitConfig c;
  c.in_channels = c.out_channels = 4;
  c.num_attention_heads = 12;  // divisible by 1, 2, 3, 4
  c.attention_head_dim = 8;
  c.num_layers = 2;
  c.num_single_layers = 2;
  c.num_refiner_layers = 1;
  c.patch_size = 2;
  c.patch_size_t = 1;
  c.text_embed_dim = 12;
  c.pooled_projection_dim = 8;
  c.rope_axes_dim = {2, 2, 4};
  return c;
}

// Latent [B, 4, 3, 8, 10]: a 3 x 4 x 5 token grid (60 tokens) under a 2 x 2 x 2 tile (padded).
dit::DitInputs inputs(const dit::DitConfig& c, int32_t batch) {
  dit::DitInputs in;
  in.latent = Tensor::randn({batch, c.in_channels, 3, 8, 10}, 21, DType::F32, Device::cpu());
  in.text_states = Tensor::randn({batch, 7, c.text_embed_dim}, 22, DType::F32, Device::cpu());
  in.pooled = Tensor::randn({batch, c.pooled_projection_dim}, 23, DType::F32, Device::cpu());
  for (int32_t b = 0; b < batch; ++b) {
    in.timestep.push_back(800.f - 150.f * b);
    in.guidance.push_back(6016.f);
    in.text_len.push_back(7 - 2 * b);
  }
  return in;
}

// Per-head windows that differ across heads and layers, and between the heads of any two ranks for
// k = 2..4 (tile grid 2 x 2 x 3).
dit::AttentionPlan sta_plan(const dit::DitConfig& c) {
  dit::AttentionPlan p;
  p.tile = {2, 2, 2};
  for (int l = 0; l < c.total_layers(); ++l) {
    std::vector<StaWindow> layer;
    for (int h = 0; h < c.num_attention_heads; ++h)
      layer.push_back(StaWindow{1 + ((h * 7 + l) / 3) % 2, 1 + (h / 6 + h) % 2, 1 + (h * 5 + l) % 3});
    p.windows.push_back(layer);
  }
  return p;
}

struct DitFixture : ::testing::Test {
  dit::DitConfig cfg = config12();
  dit::DitWeights weights = dit::DitWeights::random(cfg, 5, Device::cpu(), DType::F32);
  dit::HunyuanDit model() const { return dit::HunyuanDit(cfg, weights, Device::cpu(), DType::F32); }
};

TEST_F(DitFixture, ForwardMatchesSingleRank) {
  const dit::DitInputs in = inputs(cfg, 2);
  for (const bool dense : {false, true}) {
    const dit::AttentionPlan plan = dense ? dit::AttentionPlan{{2, 2, 2}, {}} : sta_plan(cfg);
    dit::HunyuanDit single = model();
    const std::vector<float> ref = single.forward(in, plan).to_host_f32();
    for (int k : {1, 2, 3, 4}) {
      Comms comms = make_in_process_group(k);
      std::vector<std::vector<float>> out(static_cast<size_t>(k));
      run_on_ranks(comms, [&](int r) {
        dit::HunyuanDit m = model();
        m.set_communicator(comms[r].get());
        out[r] = m.forward(in, plan).to_host_f32();
      });
      for (int r = 0; r < k; ++r) {
        ASSERT_EQ(out[r].size(), ref.size());
        EXPECT_TRUE(test::all_finite(out[r]));
        EXPECT_LE(max_rel(out[r], ref), 1e-5) << "k = " << k << " rank " << r << (dense ? " dense" : " sta");
        EXPECT_EQ(out[r], out[0]) << "ranks of one group disagree, k = " << k;
      }
    }
  }
}

TEST_F(DitFixture, GroupSizeMustDivideHeads) {
  for (int k : {5, 7}) {
    Comms comms = make_in_process_group(k);
    dit::HunyuanDit m = model();
    try {
      m.set_communicator(comms[0].get());
      FAIL() << "k = " << k << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(e.message().find("does not divide the model's 12 attention heads"), std::string::npos) << e.message();
    }
  }
  EXPECT_THROW(make_sequence_split(3, 12, 0, 4), Error);  // fewer image rows than ranks
}

// A whole generation: Philox noise drawn whole on every rank (same seed), Euler steps, TeaCache
// deciding from the all-reduced statistic.
struct Generation {
  std::vector<float> latents;
  int computed = 0, skipped = 0;
  std::vector<double> rel;
};

Generation generate(dit::HunyuanDit& m, const dit::DitInputs& cond, const dit::AttentionPlan& plan, int steps,
                    float threshold) {
  dit::TeaCache cache(dit::TeaCacheOptions{threshold}, steps);
  const Tensor noise = Tensor::randn(cond.latent.shape(), /*seed=*/1234, DType::F32, Device::cpu());
  const Tensor x = sampler::sample_euler(noise, sampler::flow_sigmas(steps, 7.f),
                                         [&](const Tensor& xt, const sampler::StepInfo& st) {
                                           dit::DitInputs in = cond;
                                           in.latent = xt;
                                           in.timestep = {sampler::timestep_of(st.sigma)};
                                           dit::HunyuanDit::State s = m.embed(in, plan);
                                           cache.run_blocks(m, s);
                                           return m.final_layer(s, s.img);
                                         });
  return {x.to_host_f32(), cache.computed(), cache.skipped(), cache.rel_history()};
}

TEST_F(DitFixture, SamplerWithTeaCacheMatchesSingleRank) {
  const dit::DitInputs cond = inputs(cfg, 1);
  const dit::AttentionPlan plan = sta_plan(cfg);
  constexpr int kSteps = 8;
  constexpr float kThreshold = 0.3f;
  dit::HunyuanDit single = model();
  const Generation ref = generate(single, cond, plan, kSteps, kThreshold);
  ASSERT_GT(ref.skipped, 0) << "the threshold should make TeaCache skip steps";
  ASSERT_GT(ref.computed, 2);
  for (int k : {1, 2, 3, 4}) {
    Comms comms = make_in_process_group(k);
    std::vector<Generation> out(static_cast<size_t>(k));
    run_on_ranks(comms, [&](int r) {
      dit::HunyuanDit m = model();
      m.set_communicator(comms[r].get());
      out[r] = generate(m, cond, plan, kSteps, kThreshold);
    });
    for (int r = 0; r < k; ++r) {
      EXPECT_EQ(out[r].computed, ref.computed) << "k = " << k << " rank " << r;
      EXPECT_EQ(out[r].skipped, ref.skipped) << "k = " << k << " rank " << r;
      EXPECT_EQ(out[r].latents, out[0].latents) << "ranks of one group disagree, k = " << k;
      for (size_t i = 1; i < ref.rel.size(); ++i)
        EXPECT_NEAR(out[r].rel[i], ref.rel[i], 1e-5 * std::abs(ref.rel[i])) << "step " << i << " k = " << k;
      EXPECT_LE(max_rel(out[r].latents, ref.latents), 1e-5) << "k = " << k << " rank " << r;
    }
  }
}

// ---- VAE ----

TEST(ParallelVae, TiledDecodeMatchesSingleRank) {
  const vae::VaeConfig c = vae::VaeConfig::from_file(std::string(STAVID_TEST_DATA_DIR) + "/vae/tiny/config.json");
  const Tensor z = Tensor::randn({1, c.latent_channels, 3, 8, 10}, 31, DType::F32, Device::cpu());
  vae::VaeDecoder single = vae::VaeDecoder::random(c, 3, Device::cpu(), DType::F32);
  // A plan of 3 x 4 = 12 tiles with 2-pixel halos, chunks of 2 latent frames; and the whole clip
  // (one tile: rank 0 decodes and broadcasts).
  vae::VaeDecoder::DecodePlan tiled;
  tiled.chunk_latent_frames = 2;
  tiled.tile_h = tiled.tile_w = 4;
  tiled.overlap = 2;
  ASSERT_EQ(single.tile_set(z.shape(), tiled).count(), 12u);
  for (const vae::VaeDecoder::DecodePlan& plan : {tiled, vae::VaeDecoder::DecodePlan{}}) {
    const std::vector<float> ref = single.decode_tiled(z, plan).to_host_f32();
    for (int k : {1, 2, 3, 4}) {
      Comms comms = make_in_process_group(k);
      std::vector<std::vector<float>> out(static_cast<size_t>(k));
      std::atomic<int> tiles_decoded{0};
      run_on_ranks(comms, [&](int r) {
        vae::VaeDecoder d = vae::VaeDecoder::random(c, 3, Device::cpu(), DType::F32);
        out[r] = decode_tiled_parallel(d, *comms[r], z, plan, [&] { tiles_decoded.fetch_add(1); }).to_host_f32();
      });
      for (int r = 0; r < k; ++r) EXPECT_EQ(out[r], ref) << "k = " << k << " rank " << r << " tiles " << plan.tile_h;
      // Every chunk of every tile ran exactly once over the group (2 chunks per tile).
      const int chunks = plan.tile_h ? 12 * 2 : 1;
      EXPECT_EQ(tiles_decoded.load(), chunks) << "k = " << k;
    }
  }
}

TEST(ParallelVae, PlanWithTiles) {
  const vae::VaeConfig c = vae::VaeConfig::from_file(std::string(STAVID_TEST_DATA_DIR) + "/vae/tiny/config.json");
  const vae::VaeDecoder d = vae::VaeDecoder::random(c, 3, Device::cpu(), DType::F32);
  const Shape z = {1, c.latent_channels, 3, 8, 10};
  for (int parts : {1, 2, 3, 4}) {
    const auto plan = plan_with_tiles(d, z, {}, parts);
    EXPECT_GE(static_cast<int>(d.tile_set(z, plan).count()), parts) << parts;
  }
  EXPECT_EQ(d.tile_set(z, plan_with_tiles(d, z, {}, 1)).count(), 1u);
}

// ---- GPU (skipped without CUDA; NCCL parts without NCCL) ----

// A 4-head config the CUDA attention kernels take (head dim 64, tiles of 64 tokens).
dit::DitConfig gpu_config() {
  dit::DitConfig c = config12();
  c.num_attention_heads = 4;
  c.attention_head_dim = 64;
  c.rope_axes_dim = {16, 24, 24};
  c.num_layers = c.num_single_layers = 1;
  return c;
}

// The DiT forward on cuda:0 split over k ranks that all live on that one GPU (in-process, host
// staging) or, for k = 1, on an NCCL group of one. bf16: tolerance relative to the one-rank run.
TEST(GpuGroup, DitForwardOnOneGpuMatchesSingleRank) {
  STAVID_REQUIRE_CUDA();
  const Device gpu = Device::cuda(0);
  const dit::DitConfig c = gpu_config();
  const dit::DitWeights w = dit::DitWeights::random(c, 5, gpu, DType::BF16);
  dit::DitInputs in;
  in.latent = Tensor::randn({1, c.in_channels, 2, 32, 32}, 21, DType::F32, gpu);  // 2 x 16 x 16 tokens
  in.text_states = Tensor::randn({1, 9, c.text_embed_dim}, 22, DType::F32, gpu);
  in.pooled = Tensor::randn({1, c.pooled_projection_dim}, 23, DType::F32, gpu);
  in.timestep = {700.f};
  in.guidance = {6016.f};
  in.text_len = {6};
  dit::AttentionPlan plan;
  plan.tile = {1, 8, 8};
  plan.windows.assign(2, std::vector<StaWindow>{{1, 1, 1}, {1, 3, 3}, {1, 1, 3}, {1, 2, 2}});
  dit::HunyuanDit single(c, w, gpu, DType::BF16);
  const std::vector<float> ref = single.forward(in, plan).to_host_f32();
  for (int k : {1, 2, 4}) {
    Comms comms = k == 1 && nccl_available() ? make_nccl_group({0})
                                             : make_in_process_group(k, std::vector<Device>(static_cast<size_t>(k), gpu));
    std::vector<std::vector<float>> out(static_cast<size_t>(k));
    run_on_ranks(comms, [&](int r) {
      dit::HunyuanDit m(c, w, gpu, DType::BF16);
      m.set_communicator(comms[r].get());
      out[r] = m.forward(in, plan).to_host_f32();
    });
    for (int r = 0; r < k; ++r) {
      ASSERT_TRUE(test::all_finite(out[r]));
      EXPECT_LE(test::nmse(out[r], ref), k == 1 ? 1e-7 : 1e-3) << "k = " << k << " rank " << r << " " << comms[0]->backend();
    }
  }
}

TEST(Nccl, OneRankCollectivesOnTheGpu) {
  STAVID_REQUIRE_CUDA();
  if (!nccl_available()) GTEST_SKIP() << "built without NCCL";
  Comms comms = make_nccl_group({0});
  run_on_ranks(comms, [&](int) {
    Communicator& c = *comms[0];
    EXPECT_STREQ(c.backend(), "nccl");
    const Tensor x = iota({2, 5, 3}, 1.f).to(Device::cuda(0));
    expect_same(c.all_to_all(x, 2, {3}, 1, {5}), x, "all_to_all");
    expect_same(c.all_gather(x.slice(1, 1, 4), 1), x.slice(1, 1, 4), "all_gather");
    Tensor b = x.clone();
    c.broadcast(b, 0);
    expect_same(b, x, "broadcast");
    EXPECT_EQ(c.all_reduce_sum({1.5, -2.0}), (std::vector<double>{1.5, -2.0}));
    EXPECT_TRUE(c.any(true));
    c.barrier();
  });
}

}  // namespace
}  // namespace stavid::parallel
