// Sliding Tile Attention benchmark: one JSON object per line on stdout, like bench_ops.
//   {"bench":"sta","case":"paper_333","canvas":[30,48,80],"tile":[6,8,8],"window":[3,3,3],"text":0,
//    "text_valid":0,"heads":24,"dim":128,"dtype":"bf16","ms":..,"kept":..,"eff_tflops":..,
//    "dense_equiv_tflops":..,"kernel":"portable_m128","device":".."}
// - ms: median over --reps runs after warm-up (CUDA events on the GPU, steady_clock on the CPU), on
//   random normal (non-zero) inputs.
// - kept: visible image key tiles / all tiles, averaged over heads (1 - sparsity).
// - eff_tflops: sta_effective_flops / time (image-image FLOPs x kept, the paper's convention);
//   dense_equiv_tflops: the full 4 * N_img^2 * d * heads FLOPs over the same time.
// - The "mixed" case gives each of the 24 heads one of the five calibrated windows, round-robin; its
//   line adds "weighted_single_ms" (each window timed alone with all heads, weighted by the share of
//   heads using it) and "mixed_over_weighted" (the goal: <= 1.05). The single runs print as
//   "mixed_single_<window>" lines.
// GPU cases: the paper shape (30x48x80, tile 6x8x8) at (3,3,3), (5,5,5) and full (5,6,10), each
// without text and with 256 text slots (200 valid); the 720p canvas 33x45x80 with tiles 6x8x8, 3x8x8
// and 3x8x16 at (3,3,3); the mixed set. Without a GPU (or with --cpu) a tiny CPU variant runs instead.
// - With the Hopper kernel (the default on sm_90; STAVID_STA_HOPPER=0 runs the portable kernels)
//   the line adds "variant" (STAVID_STA_HOPPER_VARIANT, kernels/sta.h); --variants A,B,... times
//   each case once per variant in turn (setting the variable), so variants of one case run back to
//   back on one machine state.
//
// Usage: bench_sta [--cpu] [--reps N] [--only CASE[,CASE...]] [--variants NAME[,NAME...]]
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "kernels/core/error.h"
#include "kernels/sta.h"
#include "model/runtime/cuda_runtime.h"
#include "model/runtime/tensor.h"
#include "bench/bench_util.h"

#if defined(STAVID_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace stavid {
namespace {

struct Options {
  bool cpu = false;
  int reps = 0;  // 0: the device's default
  std::string only;
  std::vector<std::string> variants;  // Hopper variants to time in turn (empty: as the environment says)
};

struct BenchCase {
  std::string name;
  std::array<int32_t, 3> canvas, tile;
  int32_t text = 0, text_valid = 0;
  std::vector<StaWindow> windows;  // one per head
  bool mixed = false;
};

// The five windows calibrated for HunyuanVideo on the 5x6x10 grid (spec section 6).
const StaWindow kCalibrated[] = {{5, 3, 3}, {3, 3, 5}, {1, 6, 10}, {5, 6, 1}, {5, 1, 10}};

using bench::device_name;
using bench::time_ms;

std::string kv(const char* k, double v) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "\"%s\":%.6g", k, v);
  return buf;
}
std::string ks(const char* k, const std::string& v) {
  return std::string("\"") + k + "\":\"" + v + "\"";
}
std::string ka(const char* k, const std::array<int32_t, 3>& v) {
  return std::string("\"") + k + "\":[" + std::to_string(v[0]) + "," + std::to_string(v[1]) + "," +
         std::to_string(v[2]) + "]";
}
std::string window_label(StaWindow w) {
  return std::to_string(w.t) + "," + std::to_string(w.h) + "," + std::to_string(w.w);
}

struct Result {
  double ms = 0, flops = 0, dense_flops = 0, kept = 0;
  std::string kernel;
  std::string variant;  // the Hopper kernel's variant ("" for the other kernels)
};

class StaBench {
 public:
  StaBench(const Options& o, Device dev, int32_t heads, int32_t head_dim, DType dt)
      : o_(o), dev_(dev), heads_(heads), head_dim_(head_dim), dt_(dt), dname_(device_name(dev)) {}

  // Times one configuration: all heads in one call, windows per head.
  Result run(const BenchCase& c) {
    const StaGeometry g = make_sta_geometry(c.canvas.data(), c.tile.data(), c.text, c.text_valid);
    const int64_t seq = g.seq_len();
    const Shape shape{1, heads_, seq, head_dim_};
    Tensor q = Tensor::randn(shape, 1, dt_, dev_), k = Tensor::randn(shape, 2, dt_, dev_);
    Tensor v = Tensor::randn(shape, 3, dt_, dev_), o = Tensor::empty(shape, dt_, dev_);
    const Stream s = rt::current_stream(dev_);
    Tensor windows = Tensor::zeros({3 * static_cast<int64_t>(heads_)}, DType::F32, dev_);  // 12 bytes per window
    static_assert(sizeof(StaWindow) == 3 * sizeof(float));
    rt::copy_bytes(windows.data(), dev_, c.windows.data(), Device::cpu(), c.windows.size() * sizeof(StaWindow), s);

    StaAttentionParams p;
    p.q = q.data();
    p.k = k.data();
    p.v = v.data();
    p.o = o.data();
    const int64_t strides[3] = {heads_ * seq * head_dim_, seq * head_dim_, head_dim_};
    for (int64_t* st : {p.q_stride, p.k_stride, p.v_stride, p.o_stride}) std::copy(strides, strides + 3, st);
    p.batch = 1;
    p.heads = heads_;
    p.head_dim = head_dim_;
    p.geom = g;
    p.windows = static_cast<const StaWindow*>(windows.data());
    p.host_windows = c.windows.data();
    p.dtype = dt_;
    p.device = dev_;

    Result r;
    const StaKernel kernel = select_sta_kernel(p);
    r.kernel = sta_kernel_name(kernel);
    if (kernel == StaKernel::Hopper) r.variant = detail::sta_hopper_variant_name(detail::sta_hopper_variant());
    r.flops = sta_effective_flops(p, c.windows.data());
    const double n = static_cast<double>(g.img_tokens());
    r.dense_flops = 4.0 * n * n * head_dim_ * heads_;
    r.kept = r.flops / r.dense_flops;
    const int reps = o_.reps > 0 ? o_.reps : (dev_.is_cuda() ? 10 : 3);
    r.ms = time_ms(
        dev_, reps, [&] { sta_attention(p, s); }, dev_.is_cuda() ? 2 : 1);
    return r;
  }

  std::string line(const BenchCase& c, const Result& r) const {
    const std::string window = c.mixed ? ks("window", "mixed") : "\"window\":[" + window_label(c.windows[0]) + "]";
    return ks("bench", "sta") + "," + ks("case", c.name) + "," + ka("canvas", c.canvas) + "," + ka("tile", c.tile) +
           "," + window + "," + kv("text", c.text) + "," + kv("text_valid", c.text_valid) + "," + kv("heads", heads_) +
           "," + kv("dim", head_dim_) + "," + ks("dtype", dtype_name(dt_)) + "," + kv("ms", r.ms) + "," +
           kv("kept", r.kept) + "," + kv("eff_tflops", r.flops / r.ms / 1e9) + "," +
           kv("dense_equiv_tflops", r.dense_flops / r.ms / 1e9) + "," + ks("kernel", r.kernel) + "," +
           (r.variant.empty() ? "" : ks("variant", r.variant) + ",") + ks("device", dname_);
  }

  void emit(const std::string& fields) const {
    std::printf("{%s}\n", fields.c_str());
    std::fflush(stdout);
  }

  // Runs a case (once per --variants entry), or its mixed variant with the weighted sum of
  // single-window runs.
  void bench(const BenchCase& c) {
    if (!o_.only.empty() && ("," + o_.only + ",").find("," + c.name + ",") == std::string::npos) return;
    if (o_.variants.empty()) {
      bench_one(c);
      return;
    }
    for (const std::string& v : o_.variants) {
      setenv("STAVID_STA_HOPPER_VARIANT", v.c_str(), 1);
      bench_one(c);
    }
  }

 private:
  void bench_one(const BenchCase& c) {
    try {
      const Result r = run(c);
      if (!c.mixed) {
        emit(line(c, r));
        return;
      }
      double weighted = 0;
      for (const StaWindow& w : kCalibrated) {
        const int64_t users = std::count_if(c.windows.begin(), c.windows.end(),
                                            [&](const StaWindow& x) { return x.t == w.t && x.h == w.h && x.w == w.w; });
        if (users == 0) continue;
        BenchCase single = c;
        single.name = "mixed_single_" + window_label(w);
        single.mixed = false;
        single.windows.assign(c.windows.size(), w);
        const Result rs = run(single);
        emit(line(single, rs) + "," + kv("heads_using", static_cast<double>(users)));
        weighted += rs.ms * static_cast<double>(users) / static_cast<double>(c.windows.size());
      }
      emit(line(c, r) + "," + kv("weighted_single_ms", weighted) + "," + kv("mixed_over_weighted", r.ms / weighted));
    } catch (const Error& e) {
      emit(ks("bench", "sta") + "," + ks("case", c.name) + "," + ks("error", e.message()));
    }
  }

  const Options& o_;
  Device dev_;
  int32_t heads_, head_dim_;
  DType dt_;
  std::string dname_;
};

std::vector<StaWindow> round_robin(int32_t heads) {
  std::vector<StaWindow> w;
  for (int32_t h = 0; h < heads; ++h) w.push_back(kCalibrated[h % 5]);
  return w;
}

void run_gpu(const Options& o) {
  constexpr int32_t kHeads = 24;
  StaBench b(o, Device::cuda(0), kHeads, 128, DType::BF16);
  const std::array<int32_t, 3> paper{30, 48, 80}, p720{33, 45, 80}, t688{6, 8, 8}, t388{3, 8, 8};
  const std::pair<const char*, StaWindow> windows[] = {{"333", {3, 3, 3}}, {"555", {5, 5, 5}}, {"full", {5, 6, 10}}};
  for (const auto& [label, w] : windows) {
    const std::vector<StaWindow> all(kHeads, w);
    b.bench({std::string("paper_") + label, paper, t688, 0, 0, all});
    b.bench({std::string("paper_") + label + "_text", paper, t688, 256, 200, all});
  }
  const std::vector<StaWindow> w333(kHeads, StaWindow{3, 3, 3});
  b.bench({"paper_333_text256", paper, t688, 256, 256, w333});  // every text slot valid: no masks
  b.bench({"720p_688_333", p720, t688, 0, 0, w333});
  b.bench({"720p_388_333", p720, t388, 0, 0, w333});
  // 720p with 384-token tiles that keep t whole (33 = 11 x 3) and w whole (80 = 5 x 16): only h pads
  // (45 -> 48), and 128-row CTAs.
  b.bench({"720p_3816_333", p720, {3, 8, 16}, 0, 0, w333});
  b.bench({"mixed", paper, t688, 0, 0, round_robin(kHeads), true});
}

void run_cpu(const Options& o) {
  constexpr int32_t kHeads = 4;
  StaBench b(o, Device::cpu(), kHeads, 64, DType::BF16);
  const std::array<int32_t, 3> canvas{6, 16, 16}, tile{2, 8, 8};  // grid 3x2x2, 1536 tokens
  const std::pair<const char*, StaWindow> windows[] = {{"111", {1, 1, 1}}, {"311", {3, 1, 1}}, {"full", {3, 2, 2}}};
  for (const auto& [label, w] : windows) {
    const std::vector<StaWindow> all(kHeads, w);
    b.bench({std::string("cpu_") + label, canvas, tile, 0, 0, all});
    b.bench({std::string("cpu_") + label + "_text", canvas, tile, 64, 50, all});
  }
  b.bench({"mixed", canvas, tile, 0, 0, round_robin(kHeads), true});
}

}  // namespace
}  // namespace stavid

int main(int argc, char** argv) {
  stavid::Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--cpu") {
      o.cpu = true;
    } else if (a == "--reps" && i + 1 < argc) {
      o.reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--only" && i + 1 < argc) {
      o.only = argv[++i];
    } else if (a == "--variants" && i + 1 < argc) {
      const std::string list = argv[++i];
      for (size_t p = 0; p <= list.size();) {
        const size_t e = std::min(list.find(',', p), list.size());
        if (e > p) o.variants.push_back(list.substr(p, e - p));
        p = e + 1;
      }
    } else {
      std::fprintf(stderr, "usage: bench_sta [--cpu] [--reps N] [--only CASE[,CASE...]] [--variants NAME[,NAME...]]\n");
      return 2;
    }
  }
  // A misspelt variant fails here, before any timing (each name is parsed as the kernel will parse it).
  for (const std::string& v : o.variants) {
    setenv("STAVID_STA_HOPPER_VARIANT", v.c_str(), 1);
    try {
      (void)stavid::detail::sta_hopper_variant();
    } catch (const stavid::Error& e) {
      std::fprintf(stderr, "bench_sta: --variants: %s\n", e.what());
      return 2;
    }
  }
  if (!o.cpu && !stavid::rt::cuda_available()) {
    std::fprintf(stderr, "bench_sta: no CUDA device; running the tiny CPU variant\n");
    o.cpu = true;
  }
  try {
    if (o.cpu) {
      stavid::run_cpu(o);
    } else {
      stavid::run_gpu(o);
    }
  } catch (const stavid::Error& e) {
    std::fprintf(stderr, "bench_sta: %s\n", e.what());
    return 1;
  }
  return 0;
}
