// End-to-end DiT step benchmark: one transformer forward (a denoising step) of a HunyuanVideo config
// with seeded random weights, for dense attention and STA windows. One JSON object per line:
//   {"bench":"dit_step","config":"13B","mode":"sta_3_3_3","tokens":115200,"text":256,"ms":..,
//    "peak_reserved_gib":..}
// Times: wall clock around synchronized forwards (after a warm-up forward that builds the layout
// and the cuBLASLt plans), median of --reps.
//
// Usage: bench_dit [--config full|small|demo] [--latent T H W] [--text N] [--text-valid N]
//                  [--tile T H W] [--modes dense,sta_3_3_3,sta_5_5_5] [--reps N]
//                  [--profile] [--gemm-shapes FILE] [--teacache-steps N --teacache THRESH]
//   --profile: one more forward per mode under the kernel profiler: a "dit_breakdown" line with
//   milliseconds per op family, and (with --gemm-shapes) the step's GEMM shapes as JSON for
//   tools/bench/gemm_floor.py, which times the same GEMMs with torch.matmul.
//   --teacache-steps: a short schedule of N steps with TeaCache at THRESH (STA (3,3,3)): prints the
//   mean step time and the skipped count.
//   defaults: the released 13B config, latent 30 x 96 x 160 (117 x 768 x 1280 video: 30 x 48 x 80 =
//   115,200 tokens), 256 text slots with 200 valid, tile 6 x 8 x 8.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/core/error.h"
#include "model/dit/dit.h"
#include "model/runtime/allocator.h"
#include "model/dit/teacache.h"
#include "model/runtime/cuda_runtime.h"
#include "model/runtime/profiler.h"
#include "model/sampler/flow_match.h"

using namespace stavid;
using namespace stavid::dit;

namespace {

using bench::now_ms;
using bench::split;
}  // namespace

int main(int argc, char** argv) {
  std::string config = "full", modes = "sta_3_3_3,sta_5_5_5,dense";
  int32_t latent[3] = {30, 96, 160}, tile[3] = {6, 8, 8};
  int32_t text = 256, text_valid = 200, reps = 1, teacache_steps = 0;
  float teacache = 0.15f;
  bool profile = false;
  std::string gemm_shapes_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--config") config = next();
    else if (a == "--modes") modes = next();
    else if (a == "--latent") for (int d = 0; d < 3; ++d) latent[d] = std::atoi(next().c_str());
    else if (a == "--tile") for (int d = 0; d < 3; ++d) tile[d] = std::atoi(next().c_str());
    else if (a == "--text") text = std::atoi(next().c_str());
    else if (a == "--text-valid") text_valid = std::atoi(next().c_str());
    else if (a == "--reps") reps = std::atoi(next().c_str());
    else if (a == "--profile") profile = true;
    else if (a == "--gemm-shapes") gemm_shapes_path = next();
    else if (a == "--teacache-steps") teacache_steps = std::atoi(next().c_str());
    else if (a == "--teacache") teacache = std::strtof(next().c_str(), nullptr);
    else {
      std::fprintf(stderr, "usage: see the comment at the top of bench/bench_dit.cc\n");
      return 2;
    }
  }
  try {
    const bool gpu = rt::cuda_available();
    const Device dev = gpu ? Device::cuda(0) : Device::cpu();
    const DType dt = gpu ? DType::BF16 : DType::F32;
    DitConfig c;  // the released 13B
    if (config == "demo") {
      // The embedded demo model's shapes (docs/demo-model.md) at its native size: 33 x 256 x 256 video,
      // 9 x 16 x 16 = 2,304 tokens, 32 text slots, tile 2 x 4 x 8; the one config timed on the CPU too.
      c.num_attention_heads = 2;
      c.attention_head_dim = 64;
      c.rope_axes_dim = {16, 24, 24};
      c.num_layers = 4;
      c.num_single_layers = 6;
      c.num_refiner_layers = 1;
      c.text_embed_dim = 128;
      c.pooled_projection_dim = 64;
      latent[0] = 9;
      latent[1] = latent[2] = 32;
      tile[0] = 2;
      tile[1] = 4;
      tile[2] = 8;
      text = 32;
      text_valid = 12;
    } else if (config == "small" || !gpu) {
      c.num_attention_heads = 2;
      c.attention_head_dim = 64;
      c.rope_axes_dim = {16, 24, 24};
      c.num_layers = c.num_single_layers = 2;
      c.num_refiner_layers = 1;
      c.text_embed_dim = 64;
      c.pooled_projection_dim = 32;
      if (!gpu) {
        config = "small";
        latent[0] = 4;
        latent[1] = latent[2] = 32;
        tile[0] = 1;
        text = 16;
        text_valid = 11;
      }
    }
    const double t0 = now_ms();
    HunyuanDit model(c, DitWeights::random(c, 1, dev, dt), dev, dt);
    rt::synchronize_device(dev);
    const double load_ms = now_ms() - t0;
    DitInputs in;
    in.latent = Tensor::randn({1, c.in_channels, latent[0], latent[1], latent[2]}, 2, DType::F32, dev);
    in.text_states = Tensor::randn({1, text, c.text_embed_dim}, 3, dt, dev);
    in.pooled = Tensor::randn({1, c.pooled_projection_dim}, 4, dt, dev);
    in.timestep = {900.f};
    in.guidance = {6016.f};
    in.text_len = {text_valid};
    const int64_t tokens = static_cast<int64_t>(latent[0] / c.patch_size_t) * (latent[1] / c.patch_size) *
                           (latent[2] / c.patch_size);
    std::printf("{\"bench\":\"dit_setup\",\"params\":%lld,\"random_weights_ms\":%.1f,\"tokens\":%lld}\n",
                static_cast<long long>(c.parameter_count()), load_ms, static_cast<long long>(tokens));
    std::fflush(stdout);
    bool warmed = false;
    for (const std::string& mode : split(modes, ',')) {
      AttentionPlan plan;
      plan.tile = {tile[0], tile[1], tile[2]};
      if (mode != "dense") {
        const auto parts = split(mode, '_');
        STAVID_CHECK(parts.size() == 4 && parts[0] == "sta", "unknown mode ", mode);
        const StaWindow w{std::atoi(parts[1].c_str()), std::atoi(parts[2].c_str()), std::atoi(parts[3].c_str())};
        plan.windows.assign(c.total_layers(), std::vector<StaWindow>(c.num_attention_heads, w));
      }
      if (!warmed) {
        model.forward(in, plan);
        rt::synchronize_device(dev);
        warmed = true;
      }
      rt::allocator_for(dev).reset_peak();
      std::vector<double> ms;
      for (int r = 0; r < reps; ++r) {
        const double a = now_ms();
        const Tensor v = model.forward(in, plan);
        rt::synchronize_device(dev);
        ms.push_back(now_ms() - a);
      }
      std::sort(ms.begin(), ms.end());
      const auto st = rt::allocator_for(dev).stats();
      std::printf("{\"bench\":\"dit_step\",\"config\":\"%s\",\"mode\":\"%s\",\"tokens\":%lld,\"text\":%d,"
                  "\"text_valid\":%d,\"tile\":[%d,%d,%d],\"ms\":%.1f,\"peak_reserved_gib\":%.2f,"
                  "\"peak_allocated_gib\":%.2f,\"device\":\"%s\"}\n",
                  config.c_str(), mode.c_str(), static_cast<long long>(tokens), text, text_valid, tile[0], tile[1],
                  tile[2], ms[ms.size() / 2], st.peak_reserved_bytes / 1073741824.0,
                  st.peak_allocated_bytes / 1073741824.0, dev.str().c_str());
      std::fflush(stdout);
      if (profile) {
        rt::KernelProfiler prof;
        const double a = now_ms();
        model.forward(in, plan);
        rt::synchronize_device(dev);
        const double step_ms = now_ms() - a;
        double kernel_ms = 0;
        std::string fams;
        for (const auto& [op, t] : prof.totals()) {
          kernel_ms += t.ms;
          char buf[160];
          std::snprintf(buf, sizeof(buf), "%s\"%s\":{\"ms\":%.2f,\"calls\":%lld}", fams.empty() ? "" : ",", op.c_str(), t.ms,
                        static_cast<long long>(t.calls));
          fams += buf;
        }
        std::printf("{\"bench\":\"dit_breakdown\",\"mode\":\"%s\",\"step_ms\":%.1f,\"kernel_ms\":%.1f,\"families\":{%s}}\n",
                    mode.c_str(), step_ms, kernel_ms, fams.c_str());
        if (!gemm_shapes_path.empty()) {
          std::FILE* f = std::fopen(gemm_shapes_path.c_str(), "w");
          STAVID_CHECK_CODE(f != nullptr, ErrorCode::NotFound, "cannot write ", gemm_shapes_path);
          std::fprintf(f, "[");
          bool first = true;
          for (const auto& g : prof.gemm_shapes()) {
            std::fprintf(f, "%s{\"m\":%lld,\"n\":%lld,\"k\":%lld,\"batch\":%lld,\"dtype\":\"%s\",\"epilogue\":\"%s\",\"count\":%lld}",
                         first ? "" : ",", static_cast<long long>(g.m), static_cast<long long>(g.n),
                         static_cast<long long>(g.k), static_cast<long long>(g.batch), g.dtype.c_str(),
                         g.epilogue.c_str(), static_cast<long long>(g.count));
            first = false;
          }
          std::fprintf(f, "]\n");
          std::fclose(f);
          gemm_shapes_path.clear();  // the GEMMs are the same for every mode
        }
        std::fflush(stdout);
      }
    }
    if (teacache_steps > 0) {
      AttentionPlan plan;
      plan.tile = {tile[0], tile[1], tile[2]};
      plan.windows.assign(c.total_layers(), std::vector<StaWindow>(c.num_attention_heads, StaWindow{3, 3, 3}));
      TeaCache cache(TeaCacheOptions{teacache}, teacache_steps);
      const auto sig = sampler::flow_sigmas(teacache_steps, 7.f);
      const double a = now_ms();
      sampler::sample_euler(in.latent, sig, [&](const Tensor& x, const sampler::StepInfo& st) {
        DitInputs step_in = in;
        step_in.latent = x;
        step_in.timestep = {sampler::timestep_of(st.sigma)};
        HunyuanDit::State s = model.embed(step_in, plan);
        cache.run_blocks(model, s);
        return model.final_layer(s, s.img);
      });
      rt::synchronize_device(dev);
      const double total = now_ms() - a;
      std::printf("{\"bench\":\"dit_teacache\",\"mode\":\"sta_3_3_3\",\"threshold\":%.3f,\"steps\":%d,\"skipped\":%d,"
                  "\"total_ms\":%.1f,\"mean_step_ms\":%.1f}\n",
                  teacache, teacache_steps, cache.skipped(), total, total / teacache_steps);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_dit: %s\n", e.what());
    return 1;
  }
  return 0;
}
