// Text-encoder benchmark: the LLaVA-Llama-3-8B language-model config with seeded random weights,
// hidden_states[-3] (30 of 32 layers) over the 351-token HunyuanVideo input (256 + crop 95), one
// prompt; plus CLIP-L (77 tokens). One JSON line each: median ms over --reps after a warm-up, and
// the allocator's peak. Usage: bench_text [--reps N] [--small]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/core/error.h"
#include "model/runtime/allocator.h"
#include "model/runtime/cuda_runtime.h"
#include "model/text/clip.h"
#include "model/text/llama.h"

using namespace stavid;
using namespace stavid::text;

namespace {
template <typename F>
double median_ms(Device dev, int reps, F fn) {
  fn();
  rt::synchronize_device(dev);
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    rt::synchronize_device(dev);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  int reps = 10;
  bool small = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (a == "--small") small = true;
    else {
      std::fprintf(stderr, "usage: bench_text [--reps N] [--small]\n");
      return 2;
    }
  }
  try {
    const bool gpu = rt::cuda_available();
    const Device dev = gpu ? Device::cuda(0) : Device::cpu();
    const DType dt = gpu ? DType::BF16 : DType::F32;
    LlamaConfig lc;  // LLaVA-Llama-3-8B's language model
    ClipTextConfig cc;  // CLIP-L text tower
    if (small || !gpu) {
      lc.hidden_size = 256;
      lc.intermediate_size = 512;
      lc.num_hidden_layers = 4;
      lc.num_attention_heads = 4;
      lc.num_key_value_heads = 2;
      lc.head_dim = 64;
      cc.num_hidden_layers = 2;
      reps = std::min(reps, 3);
    }
    const int32_t layers = lc.num_hidden_layers - 2;
    LlamaLoadOptions lo;
    lo.num_layers = layers;
    lo.final_norm = false;
    const LlamaModel llm = LlamaModel::random(lc, 1, dev, dt, lo);
    TokenBatch batch;
    batch.ids.assign(1, std::vector<int32_t>(351));
    for (int32_t i = 0; i < 351; ++i) batch.ids[0][i] = (i * 7919) % 128000;
    batch.valid = {130};
    rt::allocator_for(dev).reset_peak();
    const double ms = median_ms(dev, reps, [&] { llm.hidden_states(batch, layers); });
    std::printf("{\"bench\":\"llama_encode\",\"layers\":%d,\"hidden\":%lld,\"tokens\":351,\"ms\":%.2f,"
                "\"peak_allocated_gib\":%.3f,\"device\":\"%s\"}\n",
                layers, static_cast<long long>(lc.hidden_size), ms,
                rt::allocator_for(dev).stats().peak_allocated_bytes / 1073741824.0, dev.str().c_str());
    const ClipTextModel clip = ClipTextModel::random(cc, 2, dev, dt);
    TokenBatch cb;
    cb.ids.assign(1, std::vector<int32_t>(77, 49407));
    for (int32_t i = 0; i < 20; ++i) cb.ids[0][i] = 320 + i;
    const double cms = median_ms(dev, reps, [&] { clip.forward(cb); });
    std::printf("{\"bench\":\"clip_encode\",\"layers\":%d,\"tokens\":77,\"ms\":%.2f,\"device\":\"%s\"}\n",
                cc.num_hidden_layers, cms, dev.str().c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_text: %s\n", e.what());
    return 1;
  }
  return 0;
}
