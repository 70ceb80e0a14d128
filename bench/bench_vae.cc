// VAE decode benchmark: the released decoder config with seeded random weights, decoding a latent
// (default 33 x 90 x 160 -> 129 frames of 720 x 1280) under memory budgets. One JSON line per budget:
//   {"bench":"vae_decode","latent":[33,90,160],"budget_gib":24,"plan":{...},"ms":..,"peak_gib":..}
// Usage: bench_vae [--latent T H W] [--budgets-gib 24,12] [--small | --demo] [--plan-only]
// --demo: the demo model's decoder (channels 8-64) at its native latent 9 x 32 x 32, CPU or GPU.
// --plan-only prints the plans and estimates of the released config for a CUDA bf16 decode without
// decoding (runs anywhere: the planner needs only the shapes).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/core/error.h"
#include "model/runtime/allocator.h"
#include "model/runtime/cuda_runtime.h"
#include "model/vae/vae.h"

using namespace stavid;

int main(int argc, char** argv) {
  int32_t latent[3] = {33, 90, 160};
  std::string budgets = "24,12";
  bool small = false, plan_only = false, demo = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--latent" && i + 3 < argc) for (int d = 0; d < 3; ++d) latent[d] = std::atoi(argv[++i]);
    else if (a == "--budgets-gib" && i + 1 < argc) budgets = argv[++i];
    else if (a == "--small") small = true;
    else if (a == "--plan-only") plan_only = true;
    else if (a == "--demo") demo = true;
    else {
      std::fprintf(stderr, "usage: bench_vae [--latent T H W] [--budgets-gib 24,12] [--small | --demo] [--plan-only]\n");
      return 2;
    }
  }
  try {
    if (plan_only) {
      vae::VaeConfig c;
      const vae::VaeDecoder d = vae::VaeDecoder::random(c, 1, Device::cpu(), DType::BF16);
      const Shape zs = {1, c.latent_channels, latent[0], latent[1], latent[2]};
      std::stringstream ss(budgets);
      for (std::string b; std::getline(ss, b, ',');) {
        const double gib = std::atof(b.c_str());
        const auto plan = d.plan_for_budget(zs, static_cast<size_t>(gib * 1073741824.0));
        std::printf("{\"bench\":\"vae_plan\",\"budget_gib\":%.2f,\"plan\":{\"chunk\":%d,\"tile_h\":%d,\"tile_w\":%d,"
                    "\"overlap\":%d},\"estimate_gib\":%.2f}\n",
                    gib, plan.chunk_latent_frames, plan.tile_h, plan.tile_w, plan.overlap,
                    d.estimate_peak_bytes(zs, plan) / 1073741824.0);
      }
      return 0;
    }
    const bool gpu = rt::cuda_available();
    const Device dev = gpu ? Device::cuda(0) : Device::cpu();
    const DType dt = gpu ? DType::BF16 : DType::F32;
    vae::VaeConfig c;  // released config
    if (demo) {
      // The embedded demo model's decoder at its native size (latent 9 x 32 x 32 -> 33 x 256 x 256);
      // the config timed on the CPU as well.
      c.block_out_channels = {8, 16, 32, 64};
      c.layers_per_block = 1;
      c.norm_num_groups = 1;  // common.Spec since session 4
      latent[0] = 9;
      latent[1] = latent[2] = 32;
      if (!gpu) budgets = "1";
    } else if (small || !gpu) {
      c.block_out_channels = {8, 16, 32, 32};
      c.norm_num_groups = 4;
      if (!gpu) {
        latent[0] = 3;
        latent[1] = latent[2] = 16;
        budgets = "1";
      }
    }
    vae::VaeDecoder decoder = vae::VaeDecoder::random(c, 1, dev, dt);
    const Tensor z = Tensor::randn({1, c.latent_channels, latent[0], latent[1], latent[2]}, 2, DType::F32, dev);
    std::stringstream ss(budgets);
    for (std::string b; std::getline(ss, b, ',');) {
      const double gib = std::atof(b.c_str());
      const size_t budget = static_cast<size_t>(gib * 1073741824.0);
      rt::synchronize_device(dev);
      rt::allocator_for(dev).empty_cache();
      const size_t base = rt::allocator_for(dev).stats().allocated_bytes;
      rt::allocator_for(dev).reset_peak();
      const auto t0 = std::chrono::steady_clock::now();
      // The budget covers everything on the device: the weights and the latent (base) included.
      const Tensor video = decoder.decode_with_budget(z, budget - std::min(budget, base));
      rt::synchronize_device(dev);
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      const auto st = rt::allocator_for(dev).stats();
      const auto plan = decoder.plan_for_budget(z.shape(), budget - std::min(budget, base));
      std::printf("{\"bench\":\"vae_decode\",\"latent\":[%d,%d,%d],\"frames\":%lld,\"height\":%lld,\"width\":%lld,"
                  "\"budget_gib\":%.2f,\"plan\":{\"chunk\":%d,\"tile_h\":%d,\"tile_w\":%d,\"overlap\":%d},"
                  "\"estimate_gib\":%.2f,\"ms\":%.1f,\"peak_allocated_gib\":%.3f,\"peak_allocated_total_gib\":%.3f,\"peak_reserved_gib\":%.3f,"
                  "\"device\":\"%s\"}\n",
                  latent[0], latent[1], latent[2], static_cast<long long>(video.size(2)),
                  static_cast<long long>(video.size(3)), static_cast<long long>(video.size(4)), gib,
                  plan.chunk_latent_frames, plan.tile_h, plan.tile_w, plan.overlap,
                  decoder.estimate_peak_bytes(z.shape(), plan) / 1073741824.0, ms,
                  (st.peak_allocated_bytes - base) / 1073741824.0, st.peak_allocated_bytes / 1073741824.0,
                  st.peak_reserved_bytes / 1073741824.0,
                  dev.str().c_str());
      std::fflush(stdout);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_vae: %s\n", e.what());
    return 1;
  }
  return 0;
}
