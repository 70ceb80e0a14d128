// stavid_render: the generation pipeline offline, without the service: text embeddings -> DiT with
// STA and the flow-matching sampler (optional TeaCache) -> VAE decode -> H.264 MP4. Prints one JSON
// line with the timings and the output path. (The gRPC service wraps the same stages.)
//
//   stavid_render --dit DIR [--dit-weights FILE] --vae DIR [--vae-weights FILE]
//                 --embeddings FILE --latent T H W [--steps 30] [--shift 7] [--guidance 6016]
//                 [--seed 0] [--tile T H W] [--sta T,H,W [--dense-steps N] | --strategy FILE]
//                 [--teacache THRESH] [--fps 24] [--crf 18] --out video.mp4
// The embeddings file holds "text" [1, L, text_dim], "text_mask" [1, L] and "pooled" [1, pooled_dim].
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "kernels/core/error.h"
#include "model/dit/dit.h"
#include "model/dit/sta_strategy.h"
#include "model/dit/teacache.h"
#include "model/runtime/cuda_runtime.h"
#include "model/sampler/flow_match.h"
#include "model/vae/vae.h"
#include "model/weights/safetensors.h"
#include "model/weights/tensor_io.h"
#include "server/media/mp4_writer.h"

using namespace stavid;

namespace {
[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr, "stavid_render: %s\nsee the comment at the top of server/render.cc\n", why.c_str());
  std::exit(2);
}
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

int main(int argc, char** argv) {
  std::string dit_dir, dit_weights, vae_dir, vae_weights, embeddings, out, strategy_file;
  int32_t latent[3] = {0, 0, 0};
  std::array<int32_t, 3> tile = {6, 8, 8};
  int steps = 30, dense_steps = 0, fps = 24, crf = 18;
  float shift = 7.f, guidance = 6016.f, teacache = 0.f;
  uint64_t seed = 0;
  bool sta = false;
  StaWindow window{};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage("missing value for " + a);
      return argv[++i];
    };
    if (a == "--dit") dit_dir = next();
    else if (a == "--dit-weights") dit_weights = next();
    else if (a == "--vae") vae_dir = next();
    else if (a == "--vae-weights") vae_weights = next();
    else if (a == "--embeddings") embeddings = next();
    else if (a == "--out") out = next();
    else if (a == "--strategy") strategy_file = next();
    else if (a == "--latent") for (int d = 0; d < 3; ++d) latent[d] = std::atoi(next().c_str());
    else if (a == "--tile") for (int d = 0; d < 3; ++d) tile[d] = std::atoi(next().c_str());
    else if (a == "--steps") steps = std::atoi(next().c_str());
    else if (a == "--dense-steps") dense_steps = std::atoi(next().c_str());
    else if (a == "--shift") shift = std::strtof(next().c_str(), nullptr);
    else if (a == "--guidance") guidance = std::strtof(next().c_str(), nullptr);
    else if (a == "--teacache") teacache = std::strtof(next().c_str(), nullptr);
    else if (a == "--seed") seed = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--fps") fps = std::atoi(next().c_str());
    else if (a == "--crf") crf = std::atoi(next().c_str());
    else if (a == "--sta") {
      sta = true;
      if (std::sscanf(next().c_str(), "%d,%d,%d", &window.t, &window.h, &window.w) != 3) usage("--sta takes T,H,W");
    } else {
      usage("unknown argument " + a);
    }
  }
  if (dit_dir.empty() || vae_dir.empty() || embeddings.empty() || out.empty()) usage("--dit, --vae, --embeddings and --out are required");
  if (latent[0] <= 0 || latent[1] <= 0 || latent[2] <= 0) usage("--latent T H W is required");
  try {
    const auto t_start = std::chrono::steady_clock::now();
    const Device dev = rt::cuda_available() ? Device::cuda(0) : Device::cpu();
    const DType dt = dev.is_cuda() ? DType::BF16 : DType::F32;
    const dit::DitConfig dc = dit::DitConfig::from_file(dit_dir + "/config.json");
    dit::HunyuanDit model(dc, dit::DitWeights::load(dc, Checkpoint::open(dit_weights.empty() ? dit_dir : dit_weights), dev, dt),
                          dev, dt);
    const vae::VaeConfig vc = vae::VaeConfig::from_file(vae_dir + "/config.json");
    vae::VaeDecoder decoder(vc, Checkpoint::open(vae_weights.empty() ? vae_dir : vae_weights), dev, dt);
    const double load_s = seconds_since(t_start);

    const std::array<int32_t, 3> grid = {latent[0] / dc.patch_size_t, latent[1] / dc.patch_size, latent[2] / dc.patch_size};
    dit::StaStrategy strategy = dit::StaStrategy::dense(tile);
    if (!strategy_file.empty()) strategy = dit::StaStrategy::from_file(strategy_file, dc, tile, grid);
    else if (sta) strategy = dit::StaStrategy::fixed(window, dense_steps, tile);

    const Checkpoint e = Checkpoint::open(embeddings);
    dit::DitInputs in;
    in.text_states = load_tensor(e, e.at("text"), dev, DType::F32);
    in.pooled = load_tensor(e, e.at("pooled"), dev, DType::F32);
    int32_t len = 0;
    for (float m : read_as_float(e, e.at("text_mask"))) len += m > 0.5f;
    in.text_len = {len};
    in.guidance = {guidance};

    const auto t_denoise = std::chrono::steady_clock::now();
    const Tensor noise = Tensor::randn({1, dc.in_channels, latent[0], latent[1], latent[2]}, seed, DType::F32, dev);
    dit::TeaCache cache(dit::TeaCacheOptions{teacache}, steps);
    const Tensor latents = sampler::sample_euler(noise, sampler::flow_sigmas(steps, shift),
                                                 [&](const Tensor& x, const sampler::StepInfo& st) {
      in.latent = x;
      in.timestep = {sampler::timestep_of(st.sigma)};
      const dit::AttentionPlan plan = strategy.plan(st.step, dc);
      dit::HunyuanDit::State s = model.embed(in, plan);
      cache.run_blocks(model, s);
      return model.final_layer(s, s.img);
    });
    rt::synchronize_device(dev);
    const double denoise_s = seconds_since(t_denoise);

    const auto t_decode = std::chrono::steady_clock::now();
    const Tensor frames = vae::VaeDecoder::postprocess(decoder.decode(latents));  // [1, 3, F, H, W] host
    const double decode_s = seconds_since(t_decode);

    const auto t_mux = std::chrono::steady_clock::now();
    const int64_t nf = frames.size(2), h = frames.size(3), w = frames.size(4);
    std::ofstream file(out, std::ios::binary);
    STAVID_CHECK_CODE(file.good(), ErrorCode::NotFound, "cannot write ", out);
    media::Mp4Options mo;
    mo.fps = fps;
    mo.crf = crf;
    media::Mp4Writer writer(static_cast<int>(w), static_cast<int>(h), mo,
                            [&](const uint8_t* d, size_t n) { file.write(reinterpret_cast<const char*>(d), static_cast<std::streamsize>(n)); });
    const float* px = frames.data_as<float>();
    for (int64_t f = 0; f < nf; ++f) writer.add_frame_planar_f32(px + f * h * w, nf * h * w);  // [3, T, H, W]
    writer.finish();
    file.close();
    const double mux_s = seconds_since(t_mux);
    nlohmann::json j = {{"out", out},
                        {"frames", nf},
                        {"width", w},
                        {"height", h},
                        {"steps", steps},
                        {"teacache_skipped", cache.skipped()},
                        {"device", dev.str()},
                        {"load_s", load_s},
                        {"denoise_s", denoise_s},
                        {"vae_s", decode_s},
                        {"mux_s", mux_s},
                        {"total_s", seconds_since(t_start)}};
    std::printf("%s\n", j.dump().c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "stavid_render: %s\n", e.what());
    return 1;
  }
  return 0;
}
