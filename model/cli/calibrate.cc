// stavid_calibrate: training-free STA window calibration. Runs the sampler with full attention on
// the given conditioning (text embeddings: one safetensors file per prompt with tensors "text"
// [1, L, text_dim], "text_mask" [1, L] and "pooled" [1, pooled_dim]), measures per (step, layer,
// head) the error of each candidate window against full attention, averages over prompts, writes
// the mask-strategy JSON ("step_layer_head": [wt, wh, ww]) and prints a JSON summary with the
// resulting sparsity.
//
//   stavid_calibrate --model DIR [--weights FILE] | --random small|full
//                    --embeddings FILE [FILE ...] --latent T H W [--steps 50] [--dense-steps 15]
//                    [--shift 7] [--guidance 6016] [--seed 0] [--tile 6 8 8]
//                    [--candidates "5,3,3 3,3,5 1,6,10 5,6,1 5,1,10"] --out strategy.json
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/core/error.h"
#include "model/dit/calibration.h"
#include "model/dit/sta_strategy.h"
#include "model/runtime/cuda_runtime.h"
#include "model/sampler/flow_match.h"
#include "model/weights/safetensors.h"
#include "model/weights/tensor_io.h"

using namespace stavid;
using namespace stavid::dit;

namespace {

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr, "stavid_calibrate: %s\nsee the comment at the top of model/cli/calibrate.cc\n", why.c_str());
  std::exit(2);
}

DitConfig small_config() {
  DitConfig c;
  c.num_attention_heads = 2;
  c.attention_head_dim = 64;
  c.rope_axes_dim = {16, 24, 24};
  c.num_layers = c.num_single_layers = 2;
  c.num_refiner_layers = 1;
  c.text_embed_dim = 64;
  c.pooled_projection_dim = 32;
  return c;
}
}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, weights, random, out_path, candidates_arg;
  std::vector<std::string> embeddings;
  int32_t latent[3] = {0, 0, 0};
  int steps = 50;
  float shift = 7.f, guidance = 6016.f;
  uint64_t seed = 0;
  CalibrationOptions opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage("missing value for " + a);
      return argv[++i];
    };
    if (a == "--model") model_dir = next();
    else if (a == "--weights") weights = next();
    else if (a == "--random") random = next();
    else if (a == "--out") out_path = next();
    else if (a == "--steps") steps = std::atoi(next().c_str());
    else if (a == "--dense-steps") opt.dense_steps = std::atoi(next().c_str());
    else if (a == "--shift") shift = std::strtof(next().c_str(), nullptr);
    else if (a == "--guidance") guidance = std::strtof(next().c_str(), nullptr);
    else if (a == "--seed") seed = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--latent") for (int d = 0; d < 3; ++d) latent[d] = std::atoi(next().c_str());
    else if (a == "--tile") for (int d = 0; d < 3; ++d) opt.tile[d] = std::atoi(next().c_str());
    else if (a == "--candidates") candidates_arg = next();
    else if (a == "--embeddings") {
      while (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) embeddings.push_back(argv[++i]);
    } else {
      usage("unknown argument " + a);
    }
  }
  if (out_path.empty()) usage("--out is required");
  if (embeddings.empty()) usage("--embeddings needs at least one file");
  if (latent[0] <= 0 || latent[1] <= 0 || latent[2] <= 0) usage("--latent T H W is required");
  if (!candidates_arg.empty()) {
    opt.candidates.clear();
    std::stringstream ss(candidates_arg);
    for (std::string w; ss >> w;) {
      StaWindow win{};
      if (std::sscanf(w.c_str(), "%d,%d,%d", &win.t, &win.h, &win.w) != 3) usage("bad candidate " + w);
      opt.candidates.push_back(win);
    }
  }
  try {
    const Device dev = rt::cuda_available() ? Device::cuda(0) : Device::cpu();
    const DType dt = dev.is_cuda() ? DType::BF16 : DType::F32;
    DitConfig c;
    DitWeights w;
    if (!random.empty()) {
      if (random == "small") c = small_config();
      else if (random != "full") usage("--random takes small or full");
      w = DitWeights::random(c, 1, dev, dt);
    } else {
      if (model_dir.empty()) usage("--model DIR or --random is required");
      c = DitConfig::from_file(model_dir + "/config.json");
      const Checkpoint ckpt = Checkpoint::open(weights.empty() ? model_dir : weights);
      w = DitWeights::load(c, ckpt, dev, dt);
    }
    HunyuanDit model(c, std::move(w), dev, dt);
    StaCalibration calib(c, opt, steps);
    const auto sigmas = sampler::flow_sigmas(steps, shift);
    AttentionPlan dense;
    dense.tile = opt.tile;
    for (const std::string& file : embeddings) {
      const Checkpoint e = Checkpoint::open(file);
      DitInputs in;
      in.text_states = load_tensor(e, e.at("text"), dev, DType::F32);
      in.pooled = load_tensor(e, e.at("pooled"), dev, DType::F32);
      const std::vector<float> mask = read_as_float(e, e.at("text_mask"));
      int32_t len = 0;
      for (float m : mask) len += m > 0.5f;
      in.text_len = {len};
      in.guidance = {guidance};
      const Tensor noise = Tensor::randn({1, c.in_channels, latent[0], latent[1], latent[2]}, seed, DType::F32, dev);
      AttentionProbe probe;
      probe.candidates = opt.candidates;
      sampler::sample_euler(noise, sigmas, [&](const Tensor& x, const sampler::StepInfo& st) {
        in.latent = x;
        in.timestep = {sampler::timestep_of(st.sigma)};
        const bool probing = calib.searches(st.step);
        if (probing) model.set_probe(&probe);
        Tensor v = model.forward(in, dense);
        if (probing) {
          calib.accumulate(st.step, model, probe);
          model.set_probe(nullptr);
        }
        return v;
      });
    }
    const std::array<int32_t, 3> grid = {latent[0] / c.patch_size_t, latent[1] / c.patch_size, latent[2] / c.patch_size};
    const nlohmann::json strategy = calib.strategy_json(grid);
    std::ofstream(out_path) << strategy.dump() << "\n";
    const StaStrategy check = StaStrategy::from_json(strategy, c, opt.tile, grid);
    const double kept = check.kept_fraction(c, grid, steps);
    nlohmann::json summary = {{"out", out_path},           {"keys", strategy.size()},  {"steps", steps},
                              {"dense_steps", opt.dense_steps}, {"prompts", embeddings.size()},
                              {"kept_fraction", kept},     {"sparsity", 1.0 - kept}};
    std::printf("%s\n", summary.dump().c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "stavid_calibrate: %s\n", e.what());
    return 1;
  }
  return 0;
}
