// StubPipeline (see stub_pipeline.h).
#include "server/stub_pipeline.h"

#include <cmath>
#include <random>
#include <stdexcept>
#include <thread>

namespace stavid::server {

namespace {

using stavid::v1::GenerateRequest;

[[noreturn]] void invalid(const std::string& message) { throw SubmitError(StatusCode::InvalidArgument, message); }

void check_range(const char* field, double value, double lo, double hi) {
  if (!std::isfinite(value) || value < lo || value > hi) {
    invalid(std::string(field) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
            std::to_string(value));
  }
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

StubPipeline::StubPipeline(StubPipelineOptions options) : options_(std::move(options)) {
  STAVID_CHECK(options_.workers > 0, "stub pipeline: workers must be > 0");
}

void StubPipeline::load() {
  if (options_.load_time.count() > 0) std::this_thread::sleep_for(options_.load_time);
  loaded_ = true;
}

std::string StubPipeline::worker_name(int worker) const { return "cpu" + std::to_string(worker); }

std::vector<stavid::v1::ModelInfo> StubPipeline::models() const {
  stavid::v1::ModelInfo info;
  info.set_name(kModelName);
  info.set_description("stub pipeline: no model, deterministic bytes (tests and benchmarks)");
  info.set_max_frames(129);
  info.set_max_pixels(720ull * 1280ull);
  info.set_default_steps(kDefaultSteps);
  info.add_strategies(kStrategyName);
  info.set_tile_t(6);
  info.set_tile_h(8);
  info.set_tile_w(8);
  return {info};
}

GenerateRequest StubPipeline::normalize(const GenerateRequest& request, const RequestLimits& limits) const {
  GenerateRequest r = request;
  if (r.model() != kModelName) invalid("model: unknown model '" + r.model() + "' (known: stub)");
  if (r.prompt().empty()) invalid("prompt: required");
  if (r.prompt().size() > limits.max_prompt_bytes) {
    invalid("prompt: " + std::to_string(r.prompt().size()) + " bytes, at most " +
            std::to_string(limits.max_prompt_bytes));
  }
  if (r.frames() == 0) r.set_frames(5);
  if (r.frames() % 4 != 1 || r.frames() > limits.max_frames) {
    invalid("frames: must be 4k+1 in [1, " + std::to_string(limits.max_frames) + "], got " +
            std::to_string(r.frames()));
  }
  if (r.height() == 0) r.set_height(64);
  if (r.width() == 0) r.set_width(64);
  if (r.height() % 16 != 0) invalid("height: must be a multiple of 16, got " + std::to_string(r.height()));
  if (r.width() % 16 != 0) invalid("width: must be a multiple of 16, got " + std::to_string(r.width()));
  if (uint64_t{r.height()} * r.width() > limits.max_pixels) {
    invalid("height * width: " + std::to_string(uint64_t{r.height()} * r.width()) + " pixels, at most " +
            std::to_string(limits.max_pixels));
  }
  if (r.steps() == 0) r.set_steps(kDefaultSteps);
  if (r.steps() > limits.max_steps) {
    invalid("steps: must be in [1, " + std::to_string(limits.max_steps) + "], got " + std::to_string(r.steps()));
  }
  if (r.guidance() == 0.0f) r.set_guidance(6.0f);
  check_range("guidance", r.guidance(), 1.0, 20.0);
  check_range("true_cfg_scale", r.true_cfg_scale(), 0.0, 20.0);
  if (r.flow_shift() == 0.0f) r.set_flow_shift(7.0f);
  check_range("flow_shift", r.flow_shift(), 1.0, 20.0);
  if (r.fps() == 0) r.set_fps(24);
  if (r.fps() > 60) invalid("fps: must be in [1, 60], got " + std::to_string(r.fps()));
  check_range("teacache_threshold", r.teacache_threshold(), 0.0, 1.0);
  const auto& sta = r.sta();
  switch (sta.kind()) {
    case stavid::v1::StaMode::KIND_UNSPECIFIED:
    case stavid::v1::StaMode::KIND_DENSE:
      break;
    case stavid::v1::StaMode::KIND_FIXED:
      if (sta.window_t() < 1 || sta.window_h() < 1 || sta.window_w() < 1) {
        invalid("sta.window_t/h/w: each must be >= 1 for KIND_FIXED");
      }
      if (sta.dense_steps() > r.steps()) invalid("sta.dense_steps: at most steps (" + std::to_string(r.steps()) + ")");
      break;
    case stavid::v1::StaMode::KIND_STRATEGY:
      if (sta.strategy() != kStrategyName) invalid("sta.strategy: unknown strategy '" + sta.strategy() + "'");
      break;
    default:
      invalid("sta.kind: unknown value " + std::to_string(static_cast<int>(sta.kind())));
  }
  if (r.output().has_crf() && r.output().crf() > 51) {
    invalid("output.crf: must be in [0, 51], got " + std::to_string(r.output().crf()));
  }
  if (!r.output().has_crf()) r.mutable_output()->set_crf(18);
  static const char* kPresets[] = {"ultrafast", "superfast", "veryfast", "faster", "fast",
                                   "medium",    "slow",      "slower",   "veryslow", "placebo"};
  if (r.output().preset().empty()) r.mutable_output()->set_preset("medium");
  bool preset_ok = false;
  for (const char* p : kPresets) preset_ok = preset_ok || r.output().preset() == p;
  if (!preset_ok) invalid("output.preset: unknown preset '" + r.output().preset() + "'");
  if (r.preview_every_steps() > r.steps()) {
    invalid("preview_every_steps: at most steps (" + std::to_string(r.steps()) + ")");
  }
  // Every stub worker is a group of one.
  if (r.gpu_group_size() > 1) {
    invalid("gpu_group_size: " + std::to_string(r.gpu_group_size()) +
            " is not a group size of this server, allowed 0 (the model's default) or 1");
  }
  return r;
}

size_t StubPipeline::memory_estimate(const GenerateRequest& r) const {
  return size_t{r.frames()} * r.height() * r.width() * options_.memory_per_voxel;
}

Bytes StubPipeline::result_for_seed(uint64_t seed, size_t size) {
  Bytes out(size);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;  // xorshift64*
  for (size_t i = 0; i < size; i += 8) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    const uint64_t v = x * 0x2545F4914F6CDD1Dull;
    for (size_t b = 0; b < 8 && i + b < size; ++b) out[i + b] = static_cast<uint8_t>(v >> (8 * b));
  }
  return out;
}

int64_t StubPipeline::preview_timestamp_ns(const stavid::v1::PreviewFrame& frame) {
  if (frame.data().size() < 8) return 0;
  uint64_t v = 0;
  for (int b = 0; b < 8; ++b) v |= uint64_t{static_cast<uint8_t>(frame.data()[b])} << (8 * b);
  return static_cast<int64_t>(v);
}

stavid::v1::JobCompleted StubPipeline::run(JobContext& ctx, const GenerateRequest& r) {
  stavid::v1::JobCompleted done;
  uint64_t seed = r.seed();
  if (seed == 0) seed = std::random_device{}() | 1ull;
  const bool inject_fault = !options_.fail_marker.empty() && r.prompt().find(options_.fail_marker) != std::string::npos;

  auto t0 = std::chrono::steady_clock::now();
  ctx.stage("text", /*finished=*/false);
  ctx.throw_if_cancelled();
  done.set_text_seconds(seconds_since(t0));
  ctx.stage("text", /*finished=*/true, done.text_seconds());

  t0 = std::chrono::steady_clock::now();
  ctx.stage("denoise", /*finished=*/false);
  const int32_t steps = static_cast<int32_t>(r.steps());
  uint32_t skipped_total = 0;
  for (int32_t i = 0; i < steps; ++i) {
    ctx.throw_if_cancelled();
    const auto ts = std::chrono::steady_clock::now();
    if (inject_fault && i == steps / 2) throw std::runtime_error("injected fault at step " + std::to_string(i));
    const bool skipped = r.teacache_threshold() > 0.0f && i % 2 == 1;
    if (options_.step_time.count() > 0) std::this_thread::sleep_for(skipped ? options_.step_time / 4 : options_.step_time);
    skipped_total += skipped ? 1 : 0;
    ctx.step(i, steps, seconds_since(ts), skipped);
    if (r.preview_every_steps() > 0 && (i + 1) % static_cast<int32_t>(r.preview_every_steps()) == 0) {
      stavid::v1::PreviewFrame frame;
      frame.set_step(static_cast<uint32_t>(i + 1));
      frame.set_width(r.width() / 8);
      frame.set_height(r.height() / 8);
      frame.set_mime_type("application/octet-stream");
      const uint64_t now_ns = static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
              .count());
      std::string data(16, '\0');
      for (int b = 0; b < 8; ++b) data[b] = static_cast<char>(now_ns >> (8 * b));
      frame.set_data(data);
      const std::string wire = frame.SerializeAsString();
      ctx.emit_data("preview", Bytes(wire.begin(), wire.end()));
    }
  }
  done.set_denoise_seconds(seconds_since(t0));
  ctx.stage("denoise", /*finished=*/true, done.denoise_seconds());

  t0 = std::chrono::steady_clock::now();
  ctx.stage("decode", /*finished=*/false);
  ctx.throw_if_cancelled();
  done.set_decode_seconds(seconds_since(t0));
  ctx.stage("decode", /*finished=*/true, done.decode_seconds());

  t0 = std::chrono::steady_clock::now();
  ctx.stage("encode", /*finished=*/false);
  Bytes blob = result_for_seed(seed, options_.result_bytes);
  done.set_encode_seconds(seconds_since(t0));
  ctx.stage("encode", /*finished=*/true, done.encode_seconds());

  done.set_result_bytes(blob.size());
  ctx.set_result(std::move(blob));
  done.set_seed(seed);
  done.set_frames(r.frames());
  done.set_width(r.width());
  done.set_height(r.height());
  done.set_teacache_skipped_steps(skipped_total);
  done.set_sta_sparsity(r.sta().kind() == stavid::v1::StaMode::KIND_FIXED ? 0.5 : 0.0);
  return done;
}

}  // namespace stavid::server
