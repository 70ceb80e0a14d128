// The causal 3-D VAE decoder against the PyTorch reference (tools/reference/hunyuan_vae.py, from the
// spec): goldens in tests/data/vae/<config>/ (config.json, vae.safetensors with diffusers names and a
// few encoder tensors the loader must skip, io.safetensors with inputs, intermediates, outputs).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "model/runtime/allocator.h"
#include "model/runtime/cuda_runtime.h"
#include "model/vae/vae.h"
#include "model/weights/safetensors.h"
#include "model/weights/tensor_io.h"
#include "test_util.h"

namespace stavid::vae {
namespace {

using test::nmse;

std::string dir(const std::string& c) { return std::string(STAVID_TEST_DATA_DIR) + "/vae/" + c; }

struct Golden {
  explicit Golden(const std::string& c) : io(Checkpoint::open(dir(c) + "/io.safetensors")), name(c) {}
  Tensor get(const std::string& n, Device d = Device::cpu()) const { return load_tensor(io, io.at(n), d, DType::F32); }
  std::vector<float> host(const std::string& n) const { return get(n).to_host_f32(); }
  VaeDecoder decoder(Device d, DType dt) const {
    return VaeDecoder(VaeConfig::from_file(dir(name) + "/config.json"), Checkpoint::open(dir(name) + "/vae.safetensors"),
                      d, dt);
  }
  Checkpoint io;
  std::string name;
};

constexpr double kTight = 1e-8;  // fp32 on both sides
// Goldens stored as F16 carry their own rounding (relative 2^-11).
constexpr double kF16 = 1e-6;

TEST(VaeConfig, ReleasedDecoderParameterCount) {
  const VaeConfig c;  // released config
  EXPECT_EQ(c.decoder_parameter_count(), 146136339LL);
}

TEST(VaeGolden, TinyPiecesAndDecode) {
  const Golden g("tiny");
  VaeDecoder vae = g.decoder(Device::cpu(), DType::F32);
  const Tensor z = g.get("z");
  const Tensor pq = vae.post_quant(z);
  EXPECT_LE(nmse(pq.to_host_f32(), g.host("post_quant_conv")), kTight);
  const Tensor ci = vae.conv_in(pq);
  EXPECT_LE(nmse(ci.to_host_f32(), g.host("conv_in")), kTight);
  EXPECT_LE(nmse(vae.mid_attention(g.get("mid_attn_in")).to_host_f32(), g.host("mid_attn_out")), kTight);
  const Tensor mid = vae.mid_block(ci);
  EXPECT_LE(nmse(mid.to_host_f32(), g.host("mid_block")), kTight);
  Tensor h = mid;
  for (int i = 0; i < 4; ++i) {
    h = vae.up_block(i, h);
    EXPECT_LE(nmse(h.to_host_f32(), g.host("up_block_" + std::to_string(i))), i >= 2 ? kF16 : kTight) << i;
  }
  const Tensor raw = vae.decode(z);
  EXPECT_EQ(raw.shape(), (Shape{1, 3, 9, 32, 32}));
  EXPECT_LE(nmse(raw.to_host_f32(), g.host("raw")), kTight);
  EXPECT_LE(nmse(VaeDecoder::postprocess(raw).to_host_f32(), g.host("frames")), kTight);
}

TEST(VaeGolden, FrameCausalAttentionInIsolation) {
  const Golden g("tiny");
  VaeDecoder vae = g.decoder(Device::cpu(), DType::F32);
  vae.max_col_bytes = 4 * 60 * 7;  // force query chunks of 7 rows: chunking must not change the result
  EXPECT_LE(nmse(vae.mid_attention(g.get("attn_in")).to_host_f32(), g.host("attn_out")), kTight);
}

TEST(VaeGolden, SmallDecode) {
  const Golden g("small");
  VaeDecoder vae = g.decoder(Device::cpu(), DType::F32);
  const Tensor raw = vae.decode(g.get("z"));
  EXPECT_EQ(raw.shape(), (Shape{1, 3, 9, 64, 64}));
  EXPECT_LE(nmse(raw.to_host_f32(), g.host("raw")), kTight);
  vae.max_col_bytes = 1 << 16;  // tiny im2col budget: one output frame per GEMM
  EXPECT_LE(nmse(vae.decode(g.get("z")).to_host_f32(), g.host("raw")), kTight);
}

TEST(VaeGolden, ChunkedDecodeFollowsTheCausalCacheRules) {
  const Golden g("tiny");
  VaeDecoder vae = g.decoder(Device::cpu(), DType::F32);
  const Tensor z = g.get("chunk_z");  // 5 latent frames -> 17 video frames
  // One chunk covering the clip is the full decode.
  EXPECT_LE(nmse(vae.decode_chunked(z, 5).to_host_f32(), g.host("chunk_full")), kTight);
  EXPECT_LE(nmse(vae.decode(z).to_host_f32(), g.host("chunk_full")), kTight);
  // Chunks of 2 latent frames with per-chunk GroupNorm statistics: the reference's single-pass
  // variant, exactly (conv caches, first-frame upsampling only in chunk 0, attention K/V cache).
  const Tensor chunked = vae.decode_chunked(z, 2);
  EXPECT_EQ(chunked.shape(), (Shape{1, 3, 17, 16, 24}));
  EXPECT_LE(nmse(chunked.to_host_f32(), g.host("chunk_per_chunk_stats")), kTight);
}

TEST(VaeGolden, ChunkHookRunsBeforeEveryChunkAndItsThrowAbandonsTheDecode) {
  const Golden g("tiny");
  VaeDecoder vae = g.decoder(Device::cpu(), DType::F32);
  const Tensor z = g.get("chunk_z");  // 5 latent frames
  int calls = 0;
  const auto ref = vae.decode_chunked(z, 2).to_host_f32();
  EXPECT_LE(nmse(vae.decode_chunked(z, 2, [&] { ++calls; }).to_host_f32(), ref), 0.0);
  EXPECT_EQ(calls, 3);  // chunks of 2, 2 and 1 latent frames
  calls = 0;
  VaeDecoder::DecodePlan tiled;
  tiled.chunk_latent_frames = 5;
  tiled.tile_h = 1;  // the latent is 2x3: 2 x 2 tiles
  tiled.tile_w = 2;
  tiled.overlap = 1;
  vae.decode_tiled(z, tiled, [&] { ++calls; });
  EXPECT_EQ(calls, 4);  // one whole-clip chunk per tile
  struct Stop {};
  calls = 0;
  EXPECT_THROW(vae.decode_chunked(z, 1, [&] { if (++calls == 2) throw Stop{}; }), Stop);
  EXPECT_EQ(calls, 2);
  EXPECT_LE(nmse(vae.decode_chunked(z, 2).to_host_f32(), ref), 0.0);  // still usable
}

TEST(VaeGolden, SpatialTilesBlendAndTheBudgetBoundsPeakMemory) {
  const Golden g("small");
  VaeDecoder vae = g.decoder(Device::cpu(), DType::F32);
  const Tensor z = g.get("z");  // [1, 16, 3, 8, 8]
  const auto full = vae.decode(z).to_host_f32();
  // A tile covering the latent is plain chunked decoding.
  VaeDecoder::DecodePlan whole;
  whole.chunk_latent_frames = 3;
  whole.tile_h = whole.tile_w = 8;
  EXPECT_LE(nmse(vae.decode_tiled(z, whole).to_host_f32(), full), kTight);
  // 6x6 tiles with 2 latent pixels of overlap (4 tiles), chunks of 1 frame: per-tile and per-chunk
  // GroupNorm statistics move the result (strongly on a 6x6-pixel latent with random weights: the
  // reference puts per-chunk statistics alone at 5% relative L2), the blend leaves no holes or NaN.
  VaeDecoder::DecodePlan tiled;
  tiled.chunk_latent_frames = 1;
  tiled.tile_h = tiled.tile_w = 6;
  tiled.overlap = 2;
  const auto out = vae.decode_tiled(z, tiled).to_host_f32();
  ASSERT_EQ(out.size(), full.size());
  ASSERT_TRUE(test::all_finite(out));
  EXPECT_LT(nmse(out, full), 0.15);
  // The budget planner picks a plan whose estimate fits, and the decode stays under the budget.
  const size_t budget = vae.estimate_peak_bytes(z.shape(), tiled);
  const VaeDecoder::DecodePlan plan = vae.plan_for_budget(z.shape(), budget);
  EXPECT_LE(vae.estimate_peak_bytes(z.shape(), plan), budget);
  rt::Allocator& cpu = rt::allocator_for(Device::cpu());
  const size_t base = cpu.stats().allocated_bytes;
  cpu.reset_peak();
  const Tensor budgeted = vae.decode_with_budget(z, budget);
  EXPECT_LE(cpu.stats().peak_allocated_bytes - base, budget);
  EXPECT_LT(nmse(budgeted.to_host_f32(), full), 0.15);
  EXPECT_THROW(vae.plan_for_budget(z.shape(), 1024), Error);
}

// The estimate walks the decoder's allocations: it must not undershoot the measured peak (the
// planner would overrun its budget) nor overshoot it by much (the planner would pick needlessly
// small chunks and tiles).
TEST(VaeGolden, PeakEstimateTracksTheMeasuredPeak) {
  const Golden g("small");
  VaeDecoder vae = g.decoder(Device::cpu(), DType::F32);
  const Tensor z = g.get("z");  // [1, 16, 3, 8, 8]
  rt::Allocator& cpu = rt::allocator_for(Device::cpu());
  std::vector<VaeDecoder::DecodePlan> plans(4);
  plans[1].chunk_latent_frames = 1;
  plans[2].chunk_latent_frames = 2;
  plans[3].chunk_latent_frames = 1;
  plans[3].tile_h = plans[3].tile_w = 6;
  plans[3].overlap = 2;
  for (const auto& plan : plans) {
    const size_t base = cpu.stats().allocated_bytes;
    cpu.reset_peak();
    int chunks = 0;
    const Tensor out = vae.decode_tiled(z, plan, [&] { ++chunks; });
    const double measured = static_cast<double>(cpu.stats().peak_allocated_bytes - base);
    const double estimate = static_cast<double>(vae.estimate_peak_bytes(z.shape(), plan));
    SCOPED_TRACE("chunk " + std::to_string(plan.chunk_latent_frames) + " tile " + std::to_string(plan.tile_h));
    EXPECT_GE(estimate, measured);
    EXPECT_LE(estimate, 1.3 * measured);
    const int per_tile = plan.chunk_latent_frames > 0 ? (3 + plan.chunk_latent_frames - 1) / plan.chunk_latent_frames : 1;
    EXPECT_EQ(chunks, per_tile * (plan.tile_h > 0 ? 4 : 1));
  }
  // The hook can stop a decode between chunks.
  struct Stop {};
  int calls = 0;
  EXPECT_THROW(vae.decode_chunked(z, 1, [&] { if (++calls == 2) throw Stop{}; }), Stop);
  EXPECT_EQ(calls, 2);
}

TEST(VaeGolden, CudaMatchesTheReference) {
  STAVID_REQUIRE_CUDA();
  for (DType dt : {DType::F32, DType::BF16}) {
    const Golden g("small");
    VaeDecoder vae = g.decoder(Device::cuda(0), dt);
    const auto raw = vae.decode(g.get("z", Device::cuda(0))).to_host_f32();
    ASSERT_TRUE(test::all_finite(raw));
    EXPECT_LE(nmse(raw, g.host("raw")), dt == DType::F32 ? 1e-6 : 1e-3) << dtype_name(dt);
    const Golden tiny("tiny");
    VaeDecoder small_vae = tiny.decoder(Device::cuda(0), dt);
    const auto chunked = small_vae.decode_chunked(tiny.get("chunk_z", Device::cuda(0)), 2).to_host_f32();
    EXPECT_LE(nmse(chunked, tiny.host("chunk_per_chunk_stats")), dt == DType::F32 ? 1e-6 : 1e-3) << dtype_name(dt);
  }
}

TEST(VaeLoader, ReportsMissingKeysAndSkipsTheEncoder) {
  const VaeConfig c = VaeConfig::from_file(dir("tiny") + "/config.json");
  const Checkpoint full = Checkpoint::open(dir("tiny") + "/vae.safetensors");
  bool has_encoder = false;
  for (const std::string& n : full.names()) has_encoder |= n.rfind("encoder.", 0) == 0;
  EXPECT_TRUE(has_encoder);  // and the decoder above loaded without complaint
  VaeConfig wrong = c;
  wrong.layers_per_block = 2;  // expects resnets.2 in every block: missing keys
  try {
    VaeDecoder(wrong, full, Device::cpu(), DType::F32);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing: decoder.up_blocks.0.resnets.2"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace stavid::vae
