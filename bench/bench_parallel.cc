// Sequence-parallel DiT step benchmark (docs/parallel.md): one transformer forward with Ulysses over
// k ranks, for each k of --ranks, with seeded random weights (identical on every rank). One JSON
// object per line:
//   {"bench":"dit_step_parallel","config":"13B","backend":"nccl","ranks":4,"mode":"sta_3_3_3",
//    "tokens":115200,"ms":..,"speedup":..,"devices":"cuda:0,cuda:1,..."}
// speedup is over the first k listed (normally 1). Times: rank 0's wall clock around a forward that
// every rank runs, ended by a device sync and a barrier (so the slowest rank counts); median of --reps
// after one warm-up forward.
//
// Usage: bench_parallel [--config full|small] [--ranks 1,2,4,8] [--backend auto|nccl|in-process]
//                       [--latent T H W] [--text N] [--tile T H W] [--mode sta_3_3_3|dense] [--reps N]
//   backend auto: NCCL when built with it and k GPUs exist, else the in-process communicator (ranks
//   beyond the GPU count share GPUs round-robin; on the CPU every rank is a CPU thread).
//   defaults: GPU: the released 13B config (24 heads), 768x1280x117 (latent 30 x 96 x 160, 115,200
//   tokens), 256 text slots, tile 6 x 8 x 8, STA (3,3,3), ranks 1,2,4,8 (those the GPUs allow).
//   CPU: a 12-head small config at latent 4 x 32 x 32 (1,024 tokens), ranks 1,2,3,4: it checks the
//   machinery and the JSON, not the speedup (the ranks share the host's cores). Run it with
//   OPENBLAS_NUM_THREADS=1: k ranks calling a multi-threaded OpenBLAS at once oversubscribe the cores
//   (its spinning threads made k = 2 13x slower than k = 1 on a 2-core machine).
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
#include "model/parallel/communicator.h"
#include "model/runtime/cuda_runtime.h"

using namespace stavid;
using namespace stavid::dit;

namespace {

using bench::now_ms;
using bench::split;

}  // namespace

int main(int argc, char** argv) {
  std::string config = "full", backend = "auto", mode = "sta_3_3_3", ranks_arg;
  int32_t latent[3] = {30, 96, 160}, tile[3] = {6, 8, 8};
  int32_t text = 256, reps = 3;
  bool latent_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--config") config = next();
    else if (a == "--ranks") ranks_arg = next();
    else if (a == "--backend") backend = next();
    else if (a == "--mode") mode = next();
    else if (a == "--latent") {
      for (int d = 0; d < 3; ++d) latent[d] = std::atoi(next().c_str());
      latent_set = true;
    } else if (a == "--tile") for (int d = 0; d < 3; ++d) tile[d] = std::atoi(next().c_str());
    else if (a == "--text") text = std::atoi(next().c_str());
    else if (a == "--reps") reps = std::max(1, std::atoi(next().c_str()));
    else {
      std::fprintf(stderr, "usage: see the comment at the top of bench/bench_parallel.cc\n");
      return 2;
    }
  }
  try {
    const int gpus = rt::cuda_device_count();
    const bool gpu = gpus > 0;
    const DType dt = gpu ? DType::BF16 : DType::F32;
    DitConfig c;  // the released 13B
    if (config == "small" || !gpu) {
      config = "small";
      c.num_attention_heads = 12;
      c.attention_head_dim = 16;
      c.rope_axes_dim = {4, 6, 6};
      c.num_layers = c.num_single_layers = 2;
      c.num_refiner_layers = 1;
      c.text_embed_dim = 64;
      c.pooled_projection_dim = 32;
      if (!gpu && !latent_set) {
        latent[0] = 4;
        latent[1] = latent[2] = 32;
        tile[0] = 1;
        text = 16;
      }
    } else {
      config = "13B";
    }
    std::vector<int> ranks;
    for (const std::string& r : split(ranks_arg.empty() ? (gpu ? "1,2,4,8" : "1,2,3,4") : ranks_arg, ','))
      ranks.push_back(std::atoi(r.c_str()));
    AttentionPlan plan;
    plan.tile = {tile[0], tile[1], tile[2]};
    if (mode != "dense") {
      const auto parts = split(mode, '_');
      STAVID_CHECK(parts.size() == 4 && parts[0] == "sta", "unknown mode ", mode);
      const StaWindow w{std::atoi(parts[1].c_str()), std::atoi(parts[2].c_str()), std::atoi(parts[3].c_str())};
      plan.windows.assign(c.total_layers(), std::vector<StaWindow>(c.num_attention_heads, w));
    }
    const int64_t tokens = static_cast<int64_t>(latent[0] / c.patch_size_t) * (latent[1] / c.patch_size) *
                           (latent[2] / c.patch_size);
    double base_ms = 0;
    for (int k : ranks) {
      if (k < 1 || c.num_attention_heads % k != 0) {
        std::printf("{\"bench\":\"dit_step_parallel\",\"ranks\":%d,\"skipped\":\"%d does not divide %d heads\"}\n", k,
                    k, c.num_attention_heads);
        continue;
      }
      const bool nccl = gpu && parallel::nccl_available() && k <= gpus && backend != "in-process";
      if (backend == "nccl" && !nccl) {
        std::printf("{\"bench\":\"dit_step_parallel\",\"ranks\":%d,\"skipped\":\"NCCL needs %d GPUs and an NCCL build\"}\n",
                    k, k);
        continue;
      }
      std::vector<Device> devices;
      std::vector<int> ordinals;
      for (int r = 0; r < k; ++r) {
        devices.push_back(gpu ? Device::cuda(r % gpus) : Device::cpu());
        ordinals.push_back(r % std::max(gpus, 1));
      }
      auto comms = nccl ? parallel::make_nccl_group(ordinals) : parallel::make_in_process_group(k, devices);
      std::vector<double> ms;
      parallel::run_on_ranks(comms, [&](int r) {
        parallel::Communicator& comm = *comms[r];
        const Device dev = comm.device();
        HunyuanDit model(c, DitWeights::random(c, 1, dev, dt), dev, dt);
        model.set_communicator(&comm);
        DitInputs in;
        in.latent = Tensor::randn({1, c.in_channels, latent[0], latent[1], latent[2]}, 2, DType::F32, dev);
        in.text_states = Tensor::randn({1, text, c.text_embed_dim}, 3, dt, dev);
        in.pooled = Tensor::randn({1, c.pooled_projection_dim}, 4, dt, dev);
        in.timestep = {900.f};
        in.guidance = {6016.f};
        in.text_len = {std::max(1, text * 3 / 4)};
        auto step = [&] {
          const Tensor v = model.forward(in, plan);
          rt::synchronize_device(dev);
          comm.barrier();
        };
        step();  // warm-up: layouts, GEMM plans, NCCL channels
        for (int i = 0; i < reps; ++i) {
          const double a = now_ms();
          step();
          if (r == 0) ms.push_back(now_ms() - a);
        }
      });
      std::sort(ms.begin(), ms.end());
      const double med = ms[ms.size() / 2];
      if (base_ms == 0) base_ms = med;
      std::string devs;
      for (const Device& d : devices) devs += (devs.empty() ? "" : ",") + d.str();
      std::printf("{\"bench\":\"dit_step_parallel\",\"config\":\"%s\",\"backend\":\"%s\",\"ranks\":%d,\"mode\":\"%s\","
                  "\"tokens\":%lld,\"text\":%d,\"tile\":[%d,%d,%d],\"ms\":%.1f,\"speedup\":%.3f,\"devices\":\"%s\"}\n",
                  config.c_str(), comms[0]->backend(), k, mode.c_str(), static_cast<long long>(tokens), text, tile[0],
                  tile[1], tile[2], med, base_ms / med, devs.c_str());
      std::fflush(stdout);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_parallel: %s\n", e.what());
    return 1;
  }
  return 0;
}
