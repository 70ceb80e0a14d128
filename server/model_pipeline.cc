#include "server/model_pipeline.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string_view>

#include "kernels/core/error.h"
#include "kernels/sta.h"
#include "model/dit/dit.h"
#include "model/dit/sta_strategy.h"
#include "model/dit/teacache.h"
#include "model/parallel/communicator.h"
#include "model/parallel/parallel_vae.h"
#include "model/runtime/cuda_runtime.h"
#include "model/sampler/flow_match.h"
#include "model/text/prompt_encoder.h"
#include "model/vae/vae.h"
#include "model/weights/json_file.h"
#include "model/weights/safetensors.h"
#include "model/weights/tensor_io.h"
#include "server/media/mp4_writer.h"
#include "server/preview.h"

namespace stavid::server {

namespace pb = stavid::v1;
namespace fs = std::filesystem;

// ---- state ----

// What every worker shares for one model: configs, tokenizers, strategies (immutable after load).
struct ModelPipeline::ModelState {
  const ModelConfig* cfg = nullptr;
  dit::DitConfig dit;
  vae::VaeConfig vae;
  std::map<std::string, nlohmann::json> strategies;                   // name -> mask-strategy JSON
  std::map<std::string, std::array<int32_t, 3>> strategy_max_window;  // name -> largest window per axis
  std::shared_ptr<const text::BpeTokenizer> llm_tok, clip_tok;
  std::optional<text::LlamaConfig> llama;
  std::optional<text::ClipTextConfig> clip;
  text::PromptEncoderOptions encoder_options;
  int32_t text_slots = 0;  // text tokens reaching the DiT
};

// One model's instances on one worker's device.
struct ModelPipeline::WorkerModel {
  std::unique_ptr<dit::HunyuanDit> dit;
  std::unique_ptr<vae::VaeDecoder> vae;
  std::unique_ptr<text::PromptEncoder> encoder;  // or the fixed embeddings:
  Tensor text_states, pooled;
  int32_t text_len = 0;
};

// One device of a worker (a worker of one device has one rank).
struct ModelPipeline::Rank {
  Device device;
  std::unique_ptr<rt::OwnedStream> stream;  // groups on CUDA: the stream every job of this rank uses
  std::vector<WorkerModel> models;          // parallel to models_ (text encoders on rank 0 only)
};

struct ModelPipeline::Worker {
  DType dtype = DType::F32;
  std::string name;
  std::vector<uint32_t> gpus;
  std::vector<Rank> ranks;  // 1: no sequence parallelism
  std::vector<std::unique_ptr<parallel::Communicator>> comms;  // one per rank when ranks > 1

  void make_comms() {
    comms.clear();
    if (ranks.size() < 2) return;
    std::vector<Device> devices;
    std::vector<int> ordinals;
    for (const Rank& r : ranks) {
      devices.push_back(r.device);
      ordinals.push_back(r.device.index);
    }
    comms = ranks[0].device.is_cuda() && parallel::nccl_available()
                ? parallel::make_nccl_group(ordinals)
                : parallel::make_in_process_group(static_cast<int>(ranks.size()), devices);
  }
};

namespace {

constexpr std::array<std::string_view, 10> kPresets = {"ultrafast", "superfast", "veryfast", "faster", "fast",
                                                       "medium",    "slow",      "slower",   "veryslow", "placebo"};
constexpr uint32_t kMaxDimension = 8192;  // media::Mp4Writer::kMaxDimension
constexpr uint32_t kSizeMultiple = 16;    // VAE x8, DiT patch x2
constexpr int32_t kMaxPriority = 10;
constexpr float kMaxGuidance = 20.f, kMaxShift = 20.f, kMaxCfg = 20.f;
constexpr uint32_t kMaxFps = 60;
constexpr uint32_t kMaxCrf = 51;

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

[[noreturn]] void bad(const std::string& field, const std::string& why) {
  throw SubmitError(StatusCode::InvalidArgument, field + ": " + why);
}

// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    for (int k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMin[4] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += static_cast<size_t>(n) + 1;
  }
  return true;
}

std::string fmt(double x) {
  std::ostringstream os;
  os << x;
  return os.str();
}

// Latent and token sizes of a request.
struct Geometry {
  std::array<int32_t, 3> latent{};  // T, H, W of the latents
  std::array<int32_t, 3> tokens{};  // after patching
  std::array<int32_t, 3> tiles{};   // the STA tile grid (tokens padded up to whole tiles)
  int64_t image_tokens() const { return static_cast<int64_t>(tokens[0]) * tokens[1] * tokens[2]; }
};

Geometry geometry_of(const dit::DitConfig& dc, const vae::VaeConfig& vc, const std::array<int32_t, 3>& tile,
                     uint32_t frames, uint32_t height, uint32_t width) {
  Geometry g;
  g.latent = {static_cast<int32_t>((frames - 1) / vc.temporal_compression_ratio + 1),
              static_cast<int32_t>(height / vc.spatial_compression_ratio),
              static_cast<int32_t>(width / vc.spatial_compression_ratio)};
  g.tokens = {g.latent[0] / dc.patch_size_t, g.latent[1] / dc.patch_size, g.latent[2] / dc.patch_size};
  for (int d = 0; d < 3; ++d) g.tiles[d] = (g.tokens[d] + tile[d] - 1) / tile[d];
  return g;
}

// Kept fraction of image attention for one step's plan, averaged over layers and heads.
class KeptFraction {
 public:
  KeptFraction(const Geometry& g, const std::array<int32_t, 3>& tile)
      : geom_(make_sta_geometry(g.tokens.data(), tile.data(), 0, 0)) {}
  double of(const dit::AttentionPlan& plan) {
    if (plan.dense()) return 1.0;
    double kept = 0;
    size_t n = 0;
    for (const auto& layer : plan.windows)
      for (const StaWindow& w : layer) {
        const std::array<int32_t, 3> key = {w.t, w.h, w.w};
        auto it = cache_.find(key);
        if (it == cache_.end()) it = cache_.emplace(key, sta_kept_fraction(geom_, w)).first;
        kept += it->second;
        ++n;
      }
    return n ? kept / static_cast<double>(n) : 1.0;
  }

 private:
  StaGeometry geom_;
  std::map<std::array<int32_t, 3>, double> cache_;
};

dit::StaStrategy strategy_for(const pb::StaMode& sta, const dit::DitConfig& dc, const std::array<int32_t, 3>& tile,
                              const Geometry& g, const std::map<std::string, nlohmann::json>& strategies) {
  switch (sta.kind()) {
    case pb::StaMode::KIND_FIXED:
      return dit::StaStrategy::fixed(StaWindow{static_cast<int32_t>(sta.window_t()), static_cast<int32_t>(sta.window_h()),
                                               static_cast<int32_t>(sta.window_w())},
                                     static_cast<int>(sta.dense_steps()), tile);
    case pb::StaMode::KIND_STRATEGY:
      return dit::StaStrategy::from_json(strategies.at(sta.strategy()), dc, tile, g.tokens);
    case pb::StaMode::KIND_DENSE:
    case pb::StaMode::KIND_UNSPECIFIED:
    default:
      return dit::StaStrategy::dense(tile);
  }
}

uint64_t pick_seed() {
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  uint64_t s = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  s ^= static_cast<uint64_t>(Clock::now().time_since_epoch().count()) * 0x9E3779B97F4A7C15ull;
  s ^= (counter.fetch_add(1) + 1) * 0xBF58476D1CE4E5B9ull;
  return s == 0 ? 1 : s;
}

// Prefixes errors with the model's name, keeping the code.
template <typename F>
auto for_model(const std::string& name, F&& f) {
  try {
    return f();
  } catch (const Error& e) {
    STAVID_THROW(e.code(), "model \"", name, "\": ", e.message());
  }
}

}  // namespace

// ---- construction and loading ----

ModelPipeline::ModelPipeline(ServingConfig config, PipelineOptions options)
    : config_(std::move(config)), options_(std::move(options)) {
  STAVID_CHECK(!config_.models.empty(), "pipeline: the serving config lists no models");
  STAVID_CHECK(options_.cpu_workers >= 1, "pipeline: cpu_workers must be >= 1, got ", options_.cpu_workers);
  STAVID_CHECK(options_.default_crf >= 0 && options_.default_crf <= static_cast<int32_t>(kMaxCrf),
               "pipeline: default_crf must be in 0..51");
  STAVID_CHECK(std::find(kPresets.begin(), kPresets.end(), options_.default_preset) != kPresets.end(),
               "pipeline: unknown default_preset \"", options_.default_preset, "\"");
  int gpus = options_.use_cuda ? rt::cuda_device_count() : 0;
  if (options_.max_gpus > 0 && options_.group_sizes.empty()) gpus = std::min(gpus, options_.max_gpus);
  std::vector<int> sizes = options_.group_sizes;
  int devices = 0;
  for (int k : sizes) {
    STAVID_CHECK(k >= 1, "pipeline: group sizes must be >= 1, got ", k);
    devices += k;
  }
  STAVID_CHECK(gpus == 0 || devices <= gpus, "pipeline: the GPU groups need ", devices, " GPUs, ", gpus, " are visible");
  if (sizes.empty()) sizes.assign(static_cast<size_t>(gpus > 0 ? gpus : options_.cpu_workers), 1);
  const int n = static_cast<int>(sizes.size());
  int next_gpu = 0;
  for (int i = 0; i < n; ++i) {
    auto w = std::make_unique<Worker>();
    const int k = sizes[static_cast<size_t>(i)];
    if (gpus > 0) {
      w->dtype = DType::BF16;
      w->name = "gpu" + std::to_string(next_gpu) + (k > 1 ? "-" + std::to_string(next_gpu + k - 1) : "");
      for (int r = 0; r < k; ++r, ++next_gpu) {
        w->gpus.push_back(static_cast<uint32_t>(next_gpu));
        Rank rank;
        rank.device = Device::cuda(next_gpu);
        if (k > 1) rank.stream = std::make_unique<rt::OwnedStream>(rank.device);
        w->ranks.push_back(std::move(rank));
      }
    } else {
      w->dtype = DType::F32;
      w->name = n == 1 ? "cpu" : "cpu" + std::to_string(i);
      for (int r = 0; r < k; ++r) w->ranks.push_back(Rank{Device::cpu(), nullptr, {}});
    }
    w->make_comms();
    workers_.push_back(std::move(w));
  }
}

ModelPipeline::~ModelPipeline() = default;

int ModelPipeline::num_workers() const { return static_cast<int>(workers_.size()); }

std::string ModelPipeline::worker_name(int worker) const {
  STAVID_CHECK(worker >= 0 && worker < num_workers(), "pipeline: no worker ", worker);
  return workers_[worker]->name;
}

std::vector<uint32_t> ModelPipeline::worker_gpus(int worker) const {
  STAVID_CHECK(worker >= 0 && worker < num_workers(), "pipeline: no worker ", worker);
  return workers_[worker]->gpus;
}

void ModelPipeline::load() {
  if (loaded()) return;
  std::vector<std::unique_ptr<ModelState>> states;
  for (const ModelConfig& m : config_.models) {
    auto s = std::make_unique<ModelState>();
    s->cfg = &m;
    for_model(m.name, [&] {
      s->dit = dit::DitConfig::from_file((fs::path(m.dit.dir) / "config.json").string());
      s->dit.validate();
      s->vae = vae::VaeConfig::from_file((fs::path(m.vae.dir) / "config.json").string());
      s->vae.validate();
      STAVID_CHECK(s->vae.latent_channels == s->dit.in_channels && s->vae.latent_channels == s->dit.out_channels,
                   "the VAE has ", s->vae.latent_channels, " latent channels but the DiT takes ", s->dit.in_channels,
                   " and produces ", s->dit.out_channels);
      STAVID_CHECK(kSizeMultiple % (s->vae.spatial_compression_ratio * s->dit.patch_size) == 0,
                   "VAE spatial compression ", s->vae.spatial_compression_ratio, " x DiT patch ", s->dit.patch_size,
                   " does not divide ", kSizeMultiple, " (request sizes are multiples of ", kSizeMultiple, ")");
      // Strategies: keys and heads checked against the model now; windows against each request's
      // tile grid in normalize().
      const std::array<int32_t, 3> huge = {m.tile[0] << 16, m.tile[1] << 16, m.tile[2] << 16};
      for (const auto& [name, path] : m.strategies) {
        nlohmann::json j = read_json_file(path, "mask strategy", ErrorCode::InvalidArgument);
        try {
          dit::StaStrategy::from_json(j, s->dit, m.tile, huge);
        } catch (const Error& e) {
          STAVID_THROW(e.code(), "strategy \"", name, "\" (", path, "): ", e.message());
        }
        std::array<int32_t, 3> mx = {1, 1, 1};
        for (const auto& [key, value] : j.items())
          for (int d = 0; d < 3; ++d) mx[d] = std::max(mx[d], value[d].get<int32_t>());
        s->strategies[name] = std::move(j);
        s->strategy_max_window[name] = mx;
      }
      if (m.text_encoder) {
        const TextEncoderConfig& t = *m.text_encoder;
        s->llm_tok = std::make_shared<text::BpeTokenizer>(text::BpeTokenizer::from_file(t.llama_tokenizer));
        s->clip_tok = std::make_shared<text::BpeTokenizer>(text::BpeTokenizer::from_file(t.clip_tokenizer));
        s->llama = text::LlamaConfig::from_file((fs::path(t.llama_dir) / "config.json").string());
        s->clip = text::ClipTextConfig::from_file((fs::path(t.clip_dir) / "config.json").string());
        STAVID_CHECK(s->llama->hidden_size == s->dit.text_embed_dim, "the LLM's hidden size ", s->llama->hidden_size,
                     " differs from the DiT's text_embed_dim ", s->dit.text_embed_dim);
        STAVID_CHECK(s->clip->hidden_size == s->dit.pooled_projection_dim, "CLIP's hidden size ", s->clip->hidden_size,
                     " differs from the DiT's pooled_projection_dim ", s->dit.pooled_projection_dim);
        STAVID_CHECK(s->llama->num_hidden_layers > t.skip_layers, "text_encoder.skip_layers ", t.skip_layers,
                     " leaves no LLM layer (it has ", s->llama->num_hidden_layers, ")");
        STAVID_CHECK(s->llm_tok->vocab_size() <= static_cast<size_t>(s->llama->vocab_size), "the LLM tokenizer has ",
                     s->llm_tok->vocab_size(), " ids but the LLM's vocabulary only ", s->llama->vocab_size);
        STAVID_CHECK(s->clip_tok->vocab_size() <= static_cast<size_t>(s->clip->vocab_size), "the CLIP tokenizer has ",
                     s->clip_tok->vocab_size(), " ids but CLIP's vocabulary only ", s->clip->vocab_size);
        STAVID_CHECK(t.clip_length <= s->clip->max_position_embeddings, "text_encoder.clip_length ", t.clip_length,
                     " exceeds CLIP's ", s->clip->max_position_embeddings, " positions");
        if (t.prompt_template) s->encoder_options.templ.text = *t.prompt_template;
        s->encoder_options.templ.crop_start = t.crop_start;
        s->encoder_options.max_length = t.max_length;
        s->encoder_options.skip_layers = t.skip_layers;
        s->encoder_options.clip_length = t.clip_length;
        s->encoder_options.cache_capacity = t.cache_capacity;
        s->text_slots = t.max_length;
      } else {
        const Checkpoint e = Checkpoint::open(m.embeddings);
        const TensorRecord& text = e.at("text");
        const TensorRecord& mask = e.at("text_mask");
        const TensorRecord& pooled = e.at("pooled");
        STAVID_CHECK(text.shape.size() == 3 && text.shape[0] == 1 && text.shape[1] >= 1 &&
                         text.shape[2] == s->dit.text_embed_dim,
                     m.embeddings, ": \"text\" must be [1, L, ", s->dit.text_embed_dim, "]");
        STAVID_CHECK(mask.shape == (std::vector<int64_t>{1, text.shape[1]}), m.embeddings,
                     ": \"text_mask\" must be [1, ", text.shape[1], "]");
        STAVID_CHECK(pooled.shape == (std::vector<int64_t>{1, s->dit.pooled_projection_dim}), m.embeddings,
                     ": \"pooled\" must be [1, ", s->dit.pooled_projection_dim, "]");
        s->text_slots = static_cast<int32_t>(text.shape[1]);
      }
    });
    states.push_back(std::move(s));
  }
  // A model's default group size must be one the server has (InvalidArgument).
  for (const auto& s : states) {
    const uint32_t k = s->cfg->group_size;
    for_model(s->cfg->name, [&] {
      STAVID_CHECK(k == 0 || has_group_size(static_cast<int>(k)), "group_size ", k,
                   " is not a group size of this server (its workers have ", group_sizes_text(), ")");
    });
  }
  // Sequence-parallel groups need a group size dividing every model's heads (InvalidArgument).
  for (auto& w : workers_)
    for (const auto& s : states)
      for_model(s->cfg->name,
                [&] { parallel::check_head_split(s->dit.num_attention_heads, static_cast<int>(w->ranks.size())); });
  for (auto& w : workers_) {
    for (size_t ri = 0; ri < w->ranks.size(); ++ri) {
      Rank& rank = w->ranks[ri];
      const Device device = rank.device;
      rt::set_device(device);
      rank.models.clear();
      for (const auto& s : states) {
        const ModelConfig& m = *s->cfg;
        WorkerModel wm;
        for_model(m.name, [&] {
          wm.dit = std::make_unique<dit::HunyuanDit>(
              s->dit, dit::DitWeights::load(s->dit, Checkpoint::open(m.dit.checkpoint()), device, w->dtype), device,
              w->dtype);
          wm.vae = std::make_unique<vae::VaeDecoder>(s->vae, Checkpoint::open(m.vae.checkpoint()), device, w->dtype);
          if (m.text_encoder && ri == 0) {
            text::LlamaLoadOptions lo;
            lo.num_layers = s->llama->num_hidden_layers - m.text_encoder->skip_layers;
            lo.final_norm = false;
            auto llm = std::make_shared<const text::LlamaModel>(
                text::LlamaModel::load(m.text_encoder->llama_dir, device, w->dtype, lo));
            auto clip = std::make_shared<const text::ClipTextModel>(
                text::ClipTextModel::load(m.text_encoder->clip_dir, device, w->dtype));
            wm.encoder = std::make_unique<text::PromptEncoder>(s->llm_tok, std::move(llm), s->clip_tok, std::move(clip),
                                                               s->encoder_options);
          } else if (!m.text_encoder) {
            const Checkpoint e = Checkpoint::open(m.embeddings);
            wm.text_states = load_tensor(e, e.at("text"), device, DType::F32);
            wm.pooled = load_tensor(e, e.at("pooled"), device, DType::F32);
            for (float v : read_as_float(e, e.at("text_mask"))) wm.text_len += v > 0.5f;
            STAVID_CHECK(wm.text_len >= 1, m.embeddings, ": \"text_mask\" marks no valid token");
          }
        });
        rank.models.push_back(std::move(wm));
      }
    }
  }
  models_ = std::move(states);
  loaded_.store(true, std::memory_order_release);
  // The configured defaults must make a valid request for every model that has them all.
  for (const ModelConfig& m : config_.models) {
    if (!m.default_frames || !m.default_height || !m.default_width) continue;
    pb::GenerateRequest probe;
    probe.set_model(m.name);
    probe.set_prompt("x");
    RequestLimits unlimited;
    unlimited.max_frames = std::numeric_limits<uint32_t>::max();
    unlimited.max_pixels = std::numeric_limits<uint64_t>::max();
    try {
      normalize(probe, unlimited);
    } catch (const SubmitError& e) {
      loaded_.store(false, std::memory_order_release);
      STAVID_THROW(ErrorCode::InvalidArgument, config_.path, ": model \"", m.name,
                   "\": its defaults do not make a valid request: ", e.what());
    }
  }
}

// ---- queries ----

size_t ModelPipeline::model_index(const std::string& name) const {
  for (size_t i = 0; i < config_.models.size(); ++i)
    if (config_.models[i].name == name) return i;
  return config_.models.size();
}

const ModelPipeline::ModelState& ModelPipeline::model_state(const std::string& name) const {
  const size_t i = model_index(name);
  STAVID_CHECK(i < models_.size(), "pipeline: unknown model \"", name, "\"");
  return *models_[i];
}

std::vector<pb::ModelInfo> ModelPipeline::models() const {
  std::vector<pb::ModelInfo> out;
  for (const ModelConfig& m : config_.models) {
    pb::ModelInfo info;
    info.set_name(m.name);
    info.set_description(m.description);
    info.set_max_frames(m.max_frames);
    info.set_max_pixels(m.max_pixels);
    info.set_default_steps(m.default_steps);
    for (const auto& [name, path] : m.strategies) info.add_strategies(name);
    info.set_tile_t(static_cast<uint32_t>(m.tile[0]));
    info.set_tile_h(static_cast<uint32_t>(m.tile[1]));
    info.set_tile_w(static_cast<uint32_t>(m.tile[2]));
    out.push_back(std::move(info));
  }
  return out;
}

pb::GenerateRequest ModelPipeline::normalize(const pb::GenerateRequest& request, const RequestLimits& limits) const {
  if (!loaded()) throw SubmitError(StatusCode::Unavailable, "the models are still loading");
  pb::GenerateRequest r = request;
  std::string names;
  for (const ModelConfig& m : config_.models) names += (names.empty() ? "" : ", ") + m.name;
  if (r.model().empty()) bad("model", "required, allowed: " + names);
  const size_t mi = model_index(r.model());
  if (mi >= models_.size()) bad("model", "unknown model \"" + r.model() + "\", allowed: " + names);
  const ModelState& s = *models_[mi];
  const ModelConfig& m = *s.cfg;
  const std::string prompt_range = "allowed 1.." + std::to_string(limits.max_prompt_bytes) + " bytes of UTF-8";

  if (r.prompt().empty()) bad("prompt", "required, " + prompt_range);
  if (r.prompt().size() > limits.max_prompt_bytes)
    bad("prompt", std::to_string(r.prompt().size()) + " bytes is too long, " + prompt_range);
  if (!valid_utf8(r.prompt())) bad("prompt", "not valid UTF-8, " + prompt_range);
  if (r.negative_prompt().size() > limits.max_prompt_bytes)
    bad("negative_prompt", std::to_string(r.negative_prompt().size()) + " bytes is too long, allowed 0.." +
                               std::to_string(limits.max_prompt_bytes) + " bytes of UTF-8");
  if (!valid_utf8(r.negative_prompt()))
    bad("negative_prompt", "not valid UTF-8, allowed 0.." + std::to_string(limits.max_prompt_bytes) + " bytes of UTF-8");

  // frames: 4k + 1 within the smaller of the server's and the model's limits.
  const uint32_t max_frames = std::min(limits.max_frames, m.max_frames);
  const std::string frames_range = "allowed 4k+1 in 1.." + std::to_string(max_frames);
  if (r.frames() == 0) r.set_frames(m.default_frames);
  if (r.frames() == 0) bad("frames", "required, " + frames_range);
  if (r.frames() % 4 != 1) bad("frames", std::to_string(r.frames()) + " is not 4k+1, " + frames_range);
  if (r.frames() > max_frames) bad("frames", std::to_string(r.frames()) + " is too many, " + frames_range);

  // height, width: multiples of 16, each at most 8192, height * width within the pixel limit.
  const uint64_t max_pixels = std::min(limits.max_pixels, m.max_pixels);
  const std::string size_range = "allowed multiples of 16 in 16.." + std::to_string(kMaxDimension) +
                                 " with height * width <= " + std::to_string(max_pixels);
  if (r.height() == 0) r.set_height(m.default_height);
  if (r.width() == 0) r.set_width(m.default_width);
  for (const auto& [field, v] : {std::pair<const char*, uint32_t>{"height", r.height()}, {"width", r.width()}}) {
    if (v == 0) bad(field, "required, " + size_range);
    if (v % kSizeMultiple != 0) bad(field, std::to_string(v) + " is not a multiple of 16, " + size_range);
    if (v > kMaxDimension) bad(field, std::to_string(v) + " is too large, " + size_range);
  }
  if (static_cast<uint64_t>(r.height()) * r.width() > max_pixels)
    bad("height", std::to_string(r.height()) + " x width " + std::to_string(r.width()) + " = " +
                      std::to_string(static_cast<uint64_t>(r.height()) * r.width()) + " pixels is too many, " +
                      size_range);
  const Geometry g = geometry_of(s.dit, s.vae, m.tile, r.frames(), r.height(), r.width());
  if (g.latent[0] % s.dit.patch_size_t != 0)
    bad("frames", std::to_string(r.frames()) + " gives " + std::to_string(g.latent[0]) +
                      " latent frames, not a multiple of the model's temporal patch " +
                      std::to_string(s.dit.patch_size_t) + ", " + frames_range);

  // steps
  const std::string steps_range = "allowed 1.." + std::to_string(limits.max_steps);
  if (r.steps() == 0) r.set_steps(m.default_steps);
  if (r.steps() > limits.max_steps) bad("steps", std::to_string(r.steps()) + " is too many, " + steps_range);

  // guidance, true CFG, flow shift
  if (std::isnan(r.guidance()) || r.guidance() < 0.f) bad("guidance", fmt(r.guidance()) + ", allowed 1..20 (0: model default)");
  if (r.guidance() == 0.f) r.set_guidance(m.default_guidance);
  if (r.guidance() < 1.f || r.guidance() > kMaxGuidance)
    bad("guidance", fmt(r.guidance()) + " is out of range, allowed 1..20 (0: model default)");
  const float cfg = r.true_cfg_scale();
  if (std::isnan(cfg) || cfg < 0.f || (cfg > 0.f && cfg < 1.f) || cfg > kMaxCfg)
    bad("true_cfg_scale", fmt(cfg) + " is out of range, allowed 0 or 1 (off) or 1..20");
  if (cfg > 1.f && !m.text_encoder)
    bad("true_cfg_scale", "model \"" + m.name + "\" has fixed text embeddings (no text encoder), allowed 0 or 1");
  if (std::isnan(r.flow_shift()) || r.flow_shift() < 0.f)
    bad("flow_shift", fmt(r.flow_shift()) + ", allowed 1..20 (0: model default)");
  if (r.flow_shift() == 0.f) r.set_flow_shift(m.default_flow_shift);
  if (r.flow_shift() < 1.f || r.flow_shift() > kMaxShift)
    bad("flow_shift", fmt(r.flow_shift()) + " is out of range, allowed 1..20 (0: model default)");

  // fps, TeaCache
  if (r.fps() == 0) r.set_fps(m.default_fps);
  if (r.fps() > kMaxFps) bad("fps", std::to_string(r.fps()) + " is out of range, allowed 1..60 (0: default)");
  if (std::isnan(r.teacache_threshold()) || r.teacache_threshold() < 0.f || r.teacache_threshold() > 1.f)
    bad("teacache_threshold", fmt(r.teacache_threshold()) + " is out of range, allowed 0..1 (0: off)");

  // STA
  pb::StaMode* sta = r.mutable_sta();
  const bool window_set = sta->window_t() || sta->window_h() || sta->window_w();
  const std::string grid = std::to_string(g.tiles[0]) + "x" + std::to_string(g.tiles[1]) + "x" + std::to_string(g.tiles[2]);
  switch (sta->kind()) {
    case pb::StaMode::KIND_UNSPECIFIED:
      if (window_set || sta->dense_steps() || !sta->strategy().empty())
        bad("sta.kind", "unspecified but other sta fields are set, allowed KIND_DENSE, KIND_FIXED, KIND_STRATEGY");
      *sta = m.default_sta;
      break;
    case pb::StaMode::KIND_DENSE:
    case pb::StaMode::KIND_FIXED:
    case pb::StaMode::KIND_STRATEGY:
      break;
    default:
      bad("sta.kind", std::to_string(sta->kind()) + " is unknown, allowed KIND_DENSE, KIND_FIXED, KIND_STRATEGY");
  }
  if (sta->kind() != pb::StaMode::KIND_FIXED && (window_set || sta->dense_steps()) &&
      request.sta().kind() != pb::StaMode::KIND_UNSPECIFIED)
    bad("sta.window_t", "window and dense_steps apply to KIND_FIXED only, allowed 0 here");
  if (sta->kind() != pb::StaMode::KIND_STRATEGY && !sta->strategy().empty() &&
      request.sta().kind() != pb::StaMode::KIND_UNSPECIFIED)
    bad("sta.strategy", "applies to KIND_STRATEGY only, allowed empty here");
  if (sta->kind() == pb::StaMode::KIND_FIXED) {
    const uint32_t w[3] = {sta->window_t(), sta->window_h(), sta->window_w()};
    static constexpr const char* kAxis[3] = {"sta.window_t", "sta.window_h", "sta.window_w"};
    for (int d = 0; d < 3; ++d)
      if (w[d] < 1 || w[d] > static_cast<uint32_t>(g.tiles[d]))
        bad(kAxis[d], std::to_string(w[d]) + " does not fit the " + grid + " tile grid of this size, allowed 1.." +
                          std::to_string(g.tiles[d]));
    if (sta->dense_steps() > r.steps())
      bad("sta.dense_steps", std::to_string(sta->dense_steps()) + " exceeds the steps, allowed 0.." +
                                 std::to_string(r.steps()));
  } else if (sta->kind() == pb::StaMode::KIND_STRATEGY) {
    std::string known;
    for (const auto& [name, path] : m.strategies) known += (known.empty() ? "" : ", ") + name;
    if (known.empty()) known = "(none)";
    auto it = s.strategy_max_window.find(sta->strategy());
    if (it == s.strategy_max_window.end())
      bad("sta.strategy", "unknown strategy \"" + sta->strategy() + "\" for model \"" + m.name + "\", allowed: " + known);
    for (int d = 0; d < 3; ++d)
      if (it->second[d] > g.tiles[d])
        bad("sta.strategy", "\"" + sta->strategy() + "\" has windows up to " + std::to_string(it->second[d]) +
                                " tiles on axis " + std::to_string(d) + ", larger than the " + grid +
                                " tile grid of this size; allowed: a larger video or another strategy");
  }

  // priority, output, previews
  if (r.priority() < -kMaxPriority || r.priority() > kMaxPriority)
    bad("priority", std::to_string(r.priority()) + " is out of range, allowed -10..10");
  pb::OutputOptions* out = r.mutable_output();
  if (!out->has_crf()) out->set_crf(static_cast<uint32_t>(options_.default_crf));
  if (out->crf() > kMaxCrf) bad("output.crf", std::to_string(out->crf()) + " is out of range, allowed 0..51");
  if (out->preset().empty()) out->set_preset(options_.default_preset);
  if (std::find(kPresets.begin(), kPresets.end(), out->preset()) == kPresets.end())
    bad("output.preset", "\"" + out->preset() + "\" is unknown, allowed ultrafast, superfast, veryfast, faster, fast, "
                                                 "medium, slow, slower, veryslow, placebo");
  if (r.preview_every_steps() > r.steps())
    bad("preview_every_steps", std::to_string(r.preview_every_steps()) + " exceeds the steps, allowed 0.." +
                                   std::to_string(r.steps()) + " (0: no previews)");
  // GPU group: 0 takes the model's group_size (0 there too: any worker).
  if (r.gpu_group_size() == 0) r.set_gpu_group_size(m.group_size);
  if (r.gpu_group_size() != 0) {
    const uint32_t k = r.gpu_group_size();
    if (!has_group_size(static_cast<int>(k)))
      bad("gpu_group_size", std::to_string(k) + " is not a group size of this server, allowed 0 (the model's default) or " +
                                group_sizes_text());
    if (s.dit.num_attention_heads % static_cast<int64_t>(k) != 0)
      bad("gpu_group_size", std::to_string(k) + " does not divide the model's " +
                                std::to_string(s.dit.num_attention_heads) + " attention heads");
  }
  return r;
}

int ModelPipeline::worker_group_size(int worker) const {
  STAVID_CHECK(worker >= 0 && worker < num_workers(), "pipeline: no worker ", worker);
  return static_cast<int>(workers_[worker]->ranks.size());
}

bool ModelPipeline::has_group_size(int size) const {
  for (const auto& w : workers_)
    if (static_cast<int>(w->ranks.size()) == size) return true;
  return false;
}

std::string ModelPipeline::group_sizes_text() const {
  std::set<size_t> sizes;
  for (const auto& w : workers_) sizes.insert(w->ranks.size());
  std::string out;
  for (size_t k : sizes) out += (out.empty() ? "" : ", ") + std::to_string(k);
  return out;
}

size_t ModelPipeline::memory_estimate(const pb::GenerateRequest& r) const {
  if (!loaded()) throw SubmitError(StatusCode::Unavailable, "the models are still loading");
  const ModelState& s = model_state(r.model());
  const ModelConfig& m = *s.cfg;
  const Worker& w = *workers_.front();
  const size_t esz = dtype_size(w.dtype);
  const Geometry g = geometry_of(s.dit, s.vae, m.tile, r.frames(), r.height(), r.width());
  const bool cfg = r.true_cfg_scale() > 1.f;
  const size_t streams = cfg ? 2 : 1;

  size_t weights = static_cast<size_t>(s.dit.parameter_count() + s.vae.decoder_parameter_count());
  size_t text = 0;
  if (s.llama) {
    text::LlamaConfig loaded = *s.llama;
    loaded.num_hidden_layers -= m.text_encoder->skip_layers;
    weights += static_cast<size_t>(loaded.parameter_count() + s.clip->parameter_count());
    const size_t tokens = streams * static_cast<size_t>(s.encoder_options.templ.crop_start + s.encoder_options.max_length);
    const size_t scores = std::min<size_t>(size_t{256} << 20, tokens * tokens * s.llama->num_attention_heads * 4);
    text = tokens * static_cast<size_t>(6 * s.llama->hidden_size + 2 * s.llama->intermediate_size) * esz + scores;
  }
  weights *= esz;

  const size_t latent = static_cast<size_t>(s.dit.in_channels) * g.latent[0] * g.latent[1] * g.latent[2] * 4;
  const size_t latents = latent * (cfg ? 6 : 4);  // noise, x, velocity (x2 and the combine with CFG), preview
  const size_t n_img = static_cast<size_t>(g.image_tokens());
  const size_t n = n_img + static_cast<size_t>(s.text_slots);
  const size_t block = n * static_cast<size_t>(12 * s.dit.hidden() + 2 * s.dit.mlp_hidden()) * esz;
  const size_t teacache = r.teacache_threshold() > 0.f ? streams * 2 * n_img * static_cast<size_t>(s.dit.hidden()) * esz : 0;
  const size_t denoise = block + teacache + latents;

  const Shape z = {1, s.vae.latent_channels, g.latent[0], g.latent[1], g.latent[2]};
  size_t decode = 0;
  try {
    const vae::VaeDecoder& vd = *w.ranks.front().models.at(model_index(r.model())).vae;
    const vae::VaeDecoder::DecodePlan plan =
        m.vae_memory_budget_bytes ? vd.plan_for_budget(z, m.vae_memory_budget_bytes) : vae::VaeDecoder::DecodePlan{};
    decode = vd.estimate_peak_bytes(z, plan) + latent;
  } catch (const Error&) {
    return std::numeric_limits<size_t>::max();
  }
  return weights + std::max({text, denoise, decode});
}

// ---- run ----

pb::JobCompleted ModelPipeline::run(JobContext& ctx, const pb::GenerateRequest& r) {
  STAVID_CHECK_CODE(loaded(), ErrorCode::Internal, "pipeline: run() before load()");
  const int wi = ctx.worker();
  STAVID_CHECK_CODE(wi >= 0 && wi < num_workers(), ErrorCode::Internal, "pipeline: no worker ", wi);
  Worker& w = *workers_[wi];
  const uint64_t seed = r.seed() != 0 ? r.seed() : pick_seed();  // one seed for every rank
  if (w.ranks.size() == 1) return run_rank(ctx, r, w, 0, seed);
  pb::JobCompleted done;
  try {
    parallel::run_on_ranks(w.comms, [&](int rank) {
      std::optional<rt::StreamGuard> guard;
      if (w.ranks[rank].stream) guard.emplace(w.ranks[rank].stream->get());
      pb::JobCompleted d = run_rank(ctx, r, w, rank, seed);
      if (rank == 0) done = std::move(d);
    });
  } catch (...) {
    w.make_comms();  // a failing rank aborted the group
    throw;
  }
  return done;
}

pb::JobCompleted ModelPipeline::run_rank(JobContext& ctx, const pb::GenerateRequest& r, Worker& w, int rank,
                                         uint64_t seed) {
  const size_t mi = model_index(r.model());
  STAVID_CHECK(mi < models_.size(), "pipeline: unknown model \"", r.model(), "\"");
  const ModelState& s = *models_[mi];
  const ModelConfig& m = *s.cfg;
  Rank& rk = w.ranks[static_cast<size_t>(rank)];
  WorkerModel& wm = rk.models[mi];
  dit::HunyuanDit& model = *wm.dit;
  const dit::DitConfig& dc = s.dit;
  // Ranks > 0 of a group compute with rank 0 and report nothing; rank 0 reports and encodes.
  parallel::Communicator* comm = w.comms.empty() ? nullptr : w.comms[static_cast<size_t>(rank)].get();
  const bool lead = rank == 0;
  model.set_communicator(comm);
  const Device device = rk.device;
  rt::set_device(device);
  auto sync = [&] {
    if (device.is_cuda()) rt::synchronize(rt::current_stream(device));
  };

  auto stage = [&](std::string_view name, bool finished, double seconds = 0.0) {
    if (lead) ctx.stage(name, finished, seconds);
  };

  pb::JobCompleted done;
  done.set_seed(seed);
  const int steps = static_cast<int>(r.steps());
  const bool cfg = r.true_cfg_scale() > 1.f;
  const Geometry g = geometry_of(dc, s.vae, m.tile, r.frames(), r.height(), r.width());

  // ---- text ----
  ctx.throw_if_cancelled();
  stage("text", false);
  auto t0 = Clock::now();
  struct Conditioning {
    Tensor states, pooled;
    int32_t len = 0;
  };
  Conditioning cond, uncond;
  if (wm.encoder) {
    std::vector<std::string> prompts = {r.prompt()};
    if (cfg) prompts.push_back(r.negative_prompt());
    const text::PromptEmbeddings e = wm.encoder->encode(prompts);
    cond = {e.text_states.slice(0, 0, 1).contiguous(), e.pooled.slice(0, 0, 1).contiguous(), e.text_len[0]};
    if (cfg) uncond = {e.text_states.slice(0, 1, 2).contiguous(), e.pooled.slice(0, 1, 2).contiguous(), e.text_len[1]};
  } else if (wm.text_states.defined()) {
    cond = {wm.text_states, wm.pooled, wm.text_len};
  }
  if (comm && m.text_encoder) {
    // The encoders live on rank 0: it broadcasts the conditioning (fp32) to the other ranks.
    auto share = [&](Conditioning& c) {
      Tensor states = lead ? c.states.to(DType::F32).contiguous()
                           : Tensor::empty({1, s.text_slots, dc.text_embed_dim}, DType::F32, device);
      Tensor pooled = lead ? c.pooled.to(DType::F32).contiguous()
                           : Tensor::empty({1, dc.pooled_projection_dim}, DType::F32, device);
      Tensor len = Tensor::full({1}, static_cast<float>(c.len), DType::F32, Device::cpu());
      comm->broadcast(states, 0);
      comm->broadcast(pooled, 0);
      comm->broadcast(len, 0);
      c = {states, pooled, static_cast<int32_t>(len.item())};
    };
    share(cond);
    if (cfg) share(uncond);
  }
  sync();
  done.set_text_seconds(seconds_since(t0));
  stage("text", true, done.text_seconds());

  // ---- denoise ----
  ctx.throw_if_cancelled();
  stage("denoise", false);
  t0 = Clock::now();
  const dit::StaStrategy strategy = strategy_for(r.sta(), dc, m.tile, g, s.strategies);
  KeptFraction kept(g, m.tile);
  double kept_sum = 0;
  int kept_steps = 0;
  dit::TeaCache cache_cond(dit::TeaCacheOptions{r.teacache_threshold()}, steps);
  dit::TeaCache cache_uncond(dit::TeaCacheOptions{r.teacache_threshold()}, steps);
  const float guidance = r.guidance() * 1000.f;  // the DiT's guidance embedding takes the scale x 1000
  const bool faulty = options_.fault.at_step >= 0 &&
                      r.prompt().find(options_.fault.prompt_marker) != std::string::npos;
  bool computed = false;
  uint32_t skipped_steps = 0;
  auto forward = [&](const Tensor& x, const sampler::StepInfo& st, const Conditioning& c, dit::TeaCache& cache,
                     const dit::AttentionPlan& plan) {
    dit::DitInputs in;
    in.latent = x;
    in.timestep = {sampler::timestep_of(st.sigma)};
    in.text_states = c.states;
    in.text_len = {c.len};
    in.pooled = c.pooled;
    in.guidance = {guidance};
    dit::HunyuanDit::State state = model.embed(in, plan);
    computed = cache.run_blocks(model, state) || computed;
    return model.final_layer(state, state.img);  // [1, C, T, H, W] fp32
  };
  const Tensor noise = Tensor::randn({1, dc.in_channels, g.latent[0], g.latent[1], g.latent[2]}, seed, DType::F32,
                                     device);  // [1, C, T, H, W]: whole on every rank
  auto step_t0 = Clock::now();
  const Tensor latents = sampler::sample_euler(
      noise, sampler::flow_sigmas(steps, r.flow_shift()),
      [&](const Tensor& x, const sampler::StepInfo& st) {
        ctx.throw_if_cancelled();
        computed = false;
        const dit::AttentionPlan plan = strategy.plan(st.step, dc);
        Tensor v = forward(x, st, cond, cache_cond, plan);
        if (cfg) {
          ctx.throw_if_cancelled();
          v = sampler::cfg_combine(v, forward(x, st, uncond, cache_uncond, plan), r.true_cfg_scale());
        }
        if (computed) {
          kept_sum += kept.of(plan);
          ++kept_steps;
        }
        return v;
      },
      [&](const Tensor& x, const sampler::StepInfo& st) {
        sync();
        const double secs = seconds_since(step_t0);
        if (lead) ctx.step(st.step, steps, secs, /*skipped=*/!computed);
        skipped_steps += computed ? 0 : 1;
        if (lead && r.preview_every_steps() > 0 && (st.step + 1) % static_cast<int>(r.preview_every_steps()) == 0) {
          const std::vector<float> mid = x.select(2, x.size(2) / 2).contiguous().to_host_f32();  // [1, C, H, W]
          const pb::PreviewFrame p = make_latent_preview(mid, dc.in_channels, /*frames=*/1, g.latent[1], g.latent[2],
                                                         static_cast<uint32_t>(st.step));
          const std::string bytes = p.SerializeAsString();
          ctx.emit_data("preview", Bytes(bytes.begin(), bytes.end()));
        }
        if (lead && faulty && st.step == options_.fault.at_step)
          STAVID_THROW(ErrorCode::Internal, "fault injection: job failed on purpose after denoise step ", st.step);
        ctx.throw_if_cancelled();
        step_t0 = Clock::now();
        return true;
      });
  sync();
  done.set_denoise_seconds(seconds_since(t0));
  done.set_teacache_skipped_steps(skipped_steps);
  done.set_sta_sparsity(kept_steps ? 1.0 - kept_sum / kept_steps : 0.0);
  stage("denoise", true, done.denoise_seconds());

  // ---- decode ----
  ctx.throw_if_cancelled();
  stage("decode", false);
  t0 = Clock::now();
  vae::VaeDecoder& vd = *wm.vae;
  const vae::ChunkHook check_cancel = [&] { ctx.throw_if_cancelled(); };
  Tensor raw;
  if (comm) {
    // A group: the spatial tiles of the budget's plan (at least one per rank) spread over the ranks.
    // (No reserve limit here: CPU ranks share one allocator.)
    const vae::VaeDecoder::DecodePlan plan =
        m.vae_memory_budget_bytes ? vd.plan_for_budget(latents.shape(), m.vae_memory_budget_bytes) : vae::VaeDecoder::DecodePlan{};
    raw = parallel::decode_tiled_parallel(vd, *comm, latents,
                                          parallel::plan_with_tiles(vd, latents.shape(), plan, comm->size()), check_cancel);
  } else {
    // With a budget, decode_with_budget also holds the device cache to it while the VAE runs.
    raw = m.vae_memory_budget_bytes ? vd.decode_with_budget(latents, m.vae_memory_budget_bytes, check_cancel)
                                    : vd.decode_tiled(latents, vae::VaeDecoder::DecodePlan{}, check_cancel);
  }
  if (!lead) return done;  // rank 0 encodes
  const Tensor frames = vae::VaeDecoder::postprocess(raw);  // [1, 3, F, H, W] host
  done.set_decode_seconds(seconds_since(t0));
  stage("decode", true, done.decode_seconds());

  // ---- encode ----
  ctx.throw_if_cancelled();
  ctx.stage("encode", false);
  t0 = Clock::now();
  const int64_t nf = frames.size(2), h = frames.size(3), wd = frames.size(4);
  Bytes mp4;
  media::Mp4Options mo;
  mo.fps = static_cast<int>(r.fps());
  mo.crf = static_cast<int>(r.output().crf());
  mo.preset = r.output().preset();
  mo.fragmented = false;  // faststart: moov first, the layout every player handles
  media::Mp4Writer writer(static_cast<int>(wd), static_cast<int>(h), mo,
                          [&](const uint8_t* d, size_t n) { mp4.insert(mp4.end(), d, d + n); });
  const float* px = frames.data_as<float>();
  for (int64_t f = 0; f < nf; ++f) {
    ctx.throw_if_cancelled();
    writer.add_frame_planar_f32(px + f * h * wd, nf * h * wd);  // frame f of [3, F, H, W]
  }
  writer.finish();
  done.set_encode_seconds(seconds_since(t0));
  ctx.stage("encode", true, done.encode_seconds());

  done.set_frames(static_cast<uint32_t>(nf));
  done.set_width(static_cast<uint32_t>(wd));
  done.set_height(static_cast<uint32_t>(h));
  done.set_result_bytes(mp4.size());
  ctx.set_result(std::move(mp4));
  return done;
}

}  // namespace stavid::server
