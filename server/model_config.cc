#include "server/model_config.h"

#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "kernels/core/error.h"
#include "model/weights/json_file.h"

namespace stavid::server {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// One JSON object of the config: typed getters that name "<source>: <path>.<key>" in every error,
// and finish() rejecting the keys nobody asked for.
class Reader {
 public:
  Reader(const json& j, std::string source, std::string path, std::string base_dir)
      : j_(j), source_(std::move(source)), path_(std::move(path)), base_(std::move(base_dir)) {
    if (!j_.is_object()) fail(path_, "expected an object");
  }

  [[noreturn]] void fail(const std::string& key_path, const std::string& why,
                         ErrorCode code = ErrorCode::InvalidArgument) const {
    STAVID_THROW(code, source_, ": ", key_path.empty() ? "(top level)" : key_path, ": ", why);
  }
  std::string key_path(const char* key) const { return path_.empty() ? key : path_ + "." + key; }

  const json* get(const char* key) {
    used_.insert(key);
    auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }
  const json& need(const char* key) {
    const json* v = get(key);
    if (!v) fail(key_path(key), "required");
    return *v;
  }
  Reader object(const char* key) { return Reader(need(key), source_, key_path(key), base_); }
  std::optional<Reader> optional_object(const char* key) {
    const json* v = get(key);
    if (!v) return std::nullopt;
    return Reader(*v, source_, key_path(key), base_);
  }

  std::string string(const char* key, bool required, const std::string& fallback = "") {
    const json* v = required ? &need(key) : get(key);
    if (!v) return fallback;
    if (!v->is_string()) fail(key_path(key), "expected a string");
    return v->get<std::string>();
  }
  int64_t integer(const char* key, int64_t lo, int64_t hi, int64_t fallback) {
    const json* v = get(key);
    if (!v) return fallback;
    return integer_value(*v, key_path(key), lo, hi);
  }
  int64_t integer_value(const json& v, const std::string& kp, int64_t lo, int64_t hi) const {
    if (!v.is_number_integer()) fail(kp, "expected an integer");
    const int64_t x = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)
                          ? INT64_MAX
                          : v.get<int64_t>();
    if (x < lo || x > hi) fail(kp, detail::str_cat(x, " is out of range, allowed ", lo, "..", hi));
    return x;
  }
  float number(const char* key, double lo, double hi, float fallback) {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_number()) fail(key_path(key), "expected a number");
    const double x = v->get<double>();
    if (!(x >= lo && x <= hi)) fail(key_path(key), detail::str_cat(x, " is out of range, allowed ", lo, "..", hi));
    return static_cast<float>(x);
  }
  std::array<int32_t, 3> triple(const char* key, int64_t lo, int64_t hi, std::array<int32_t, 3> fallback) {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_array() || v->size() != 3) fail(key_path(key), "expected [t, h, w]");
    std::array<int32_t, 3> out{};
    for (int d = 0; d < 3; ++d)
      out[d] = static_cast<int32_t>(integer_value((*v)[d], detail::str_cat(key_path(key), "[", d, "]"), lo, hi));
    return out;
  }
  // A path relative to the config's directory; must exist as a file (dir = false) or a directory.
  std::string path(const char* key, bool required, bool dir) {
    const std::string raw = string(key, required);
    if (raw.empty()) {
      if (required) fail(key_path(key), "must not be empty");
      return raw;
    }
    return resolve(raw, key_path(key), dir);
  }
  std::string resolve(const std::string& raw, const std::string& kp, bool dir) const {
    fs::path p(raw);
    if (p.is_relative()) p = fs::path(base_) / p;
    p = p.lexically_normal();
    std::error_code ec;
    const fs::file_status st = fs::status(p, ec);
    const std::string quoted = detail::str_cat('"', p.string(), '"');
    if (!fs::exists(st)) fail(kp, quoted + " does not exist", ErrorCode::NotFound);
    if (dir && !fs::is_directory(st)) fail(kp, quoted + " is not a directory", ErrorCode::NotFound);
    if (!dir && fs::is_directory(st)) fail(kp, quoted + " is a directory, expected a file", ErrorCode::NotFound);
    return p.string();
  }

  // Every key present must have been asked for.
  void finish() const {
    for (const auto& [key, value] : j_.items())
      if (!used_.count(key)) fail(key_path(key.c_str()), "unknown key");
  }
  const json& raw() const { return j_; }
  const std::string& path_prefix() const { return path_; }

 private:
  const json& j_;
  std::string source_, path_, base_;
  std::set<std::string> used_;
};

bool valid_name(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
  return true;
}

ModelFiles model_files(Reader& parent, const char* key) {
  Reader r = parent.object(key);
  ModelFiles f;
  f.dir = r.path("dir", /*required=*/true, /*dir=*/true);
  const std::string cfg = (fs::path(f.dir) / "config.json").string();
  if (!fs::is_regular_file(cfg)) r.fail(r.key_path("dir"), "\"" + f.dir + "\" has no config.json", ErrorCode::NotFound);
  f.weights = r.path("weights", /*required=*/false, /*dir=*/false);
  r.finish();
  return f;
}

void encoder_files(Reader& parent, const char* key, std::string* dir, std::string* tokenizer) {
  Reader r = parent.object(key);
  *dir = r.path("dir", true, true);
  *tokenizer = r.path("tokenizer", true, false);
  r.finish();
}

stavid::v1::StaMode sta_mode(Reader& r, const ModelConfig& m) {
  stavid::v1::StaMode s;
  const std::string kind = r.string("kind", true);
  if (kind == "dense") {
    s.set_kind(stavid::v1::StaMode::KIND_DENSE);
  } else if (kind == "fixed") {
    s.set_kind(stavid::v1::StaMode::KIND_FIXED);
    const auto w = r.triple("window", 1, 1 << 16, {0, 0, 0});
    if (w[0] == 0) r.fail(r.key_path("window"), "required for kind \"fixed\"");
    s.set_window_t(static_cast<uint32_t>(w[0]));
    s.set_window_h(static_cast<uint32_t>(w[1]));
    s.set_window_w(static_cast<uint32_t>(w[2]));
    s.set_dense_steps(static_cast<uint32_t>(r.integer("dense_steps", 0, 200, 0)));
  } else if (kind == "strategy") {
    s.set_kind(stavid::v1::StaMode::KIND_STRATEGY);
    s.set_strategy(r.string("strategy", true));
    if (!m.strategies.count(s.strategy()))
      r.fail(r.key_path("strategy"), "\"" + s.strategy() + "\" is not in this model's \"strategies\"");
  } else {
    r.fail(r.key_path("kind"), "\"" + kind + "\" is not one of dense, fixed, strategy");
  }
  r.finish();
  return s;
}

ModelConfig model_config(Reader& r) {
  ModelConfig m;
  m.name = r.string("name", true);
  if (!valid_name(m.name)) r.fail(r.key_path("name"), "\"" + m.name + "\": use 1..64 characters of [A-Za-z0-9._-]");
  m.description = r.string("description", false);
  m.dit = model_files(r, "dit");
  m.vae = model_files(r, "vae");
  if (auto te = r.optional_object("text_encoder")) {
    TextEncoderConfig t;
    encoder_files(*te, "llama", &t.llama_dir, &t.llama_tokenizer);
    encoder_files(*te, "clip", &t.clip_dir, &t.clip_tokenizer);
    if (te->get("template")) {
      t.prompt_template = te->string("template", true);
      if (t.prompt_template->find("{}") == std::string::npos) te->fail(te->key_path("template"), "has no \"{}\"");
    }
    t.crop_start = static_cast<int32_t>(te->integer("crop_start", 0, 4096, t.crop_start));
    t.max_length = static_cast<int32_t>(te->integer("max_length", 1, 4096, t.max_length));
    t.skip_layers = static_cast<int32_t>(te->integer("skip_layers", 0, 1024, t.skip_layers));
    t.clip_length = static_cast<int32_t>(te->integer("clip_length", 2, 4096, t.clip_length));
    t.cache_capacity = static_cast<uint32_t>(te->integer("cache_capacity", 1, 1 << 20, t.cache_capacity));
    te->finish();
    m.text_encoder = t;
  }
  m.embeddings = r.path("embeddings", false, false);
  if (m.text_encoder.has_value() == !m.embeddings.empty())
    r.fail(r.path_prefix(), "set exactly one of \"text_encoder\" and \"embeddings\"");
  m.tile = r.triple("tile", 1, 1024, m.tile);
  m.max_frames = static_cast<uint32_t>(r.integer("max_frames", 1, 1 << 20, m.max_frames));
  if (m.max_frames % 4 != 1) r.fail(r.key_path("max_frames"), "must be 4k + 1");
  m.max_pixels = static_cast<uint64_t>(r.integer("max_pixels", 256, int64_t{1} << 40, static_cast<int64_t>(m.max_pixels)));
  m.vae_memory_budget_bytes =
      static_cast<size_t>(r.integer("vae_memory_budget_mib", 0, int64_t{1} << 30, 0)) << 20;
  m.group_size = static_cast<uint32_t>(r.integer("group_size", 0, 1024, 0));
  if (auto st = r.optional_object("strategies")) {
    for (const auto& [name, value] : st->raw().items()) {
      const std::string kp = st->key_path(name.c_str());
      if (!valid_name(name)) st->fail(kp, "use 1..64 characters of [A-Za-z0-9._-] for a strategy name");
      if (!value.is_string()) st->fail(kp, "expected a string (a mask-strategy JSON file)");
      m.strategies[name] = st->resolve(value.get<std::string>(), kp, /*dir=*/false);
      st->get(name.c_str());
    }
    st->finish();
  }
  m.default_sta.set_kind(stavid::v1::StaMode::KIND_DENSE);
  if (auto d = r.optional_object("defaults")) {
    m.default_frames = static_cast<uint32_t>(d->integer("frames", 1, 1 << 20, 0));
    m.default_height = static_cast<uint32_t>(d->integer("height", 16, 1 << 16, 0));
    m.default_width = static_cast<uint32_t>(d->integer("width", 16, 1 << 16, 0));
    m.default_steps = static_cast<uint32_t>(d->integer("steps", 1, 200, m.default_steps));
    m.default_guidance = d->number("guidance", 1.0, 20.0, m.default_guidance);
    m.default_flow_shift = d->number("flow_shift", 1.0, 20.0, m.default_flow_shift);
    m.default_fps = static_cast<uint32_t>(d->integer("fps", 1, 60, m.default_fps));
    if (auto s = d->optional_object("sta")) m.default_sta = sta_mode(*s, m);
    d->finish();
  }
  r.finish();
  return m;
}

}  // namespace

ServingConfig ServingConfig::from_json(const nlohmann::json& j, const std::string& source,
                                       const std::string& base_dir) {
  ServingConfig c;
  Reader top(j, source, "", base_dir);
  const json& models = top.need("models");
  if (!models.is_array() || models.empty()) top.fail("models", "expected a non-empty array of models");
  std::set<std::string> names;
  for (size_t i = 0; i < models.size(); ++i) {
    Reader r(models[i], source, detail::str_cat("models[", i, "]"), base_dir);
    ModelConfig m = model_config(r);
    if (!names.insert(m.name).second) r.fail(r.key_path("name"), "duplicate model name \"" + m.name + "\"");
    c.models.push_back(std::move(m));
  }
  top.finish();
  return c;
}

ServingConfig ServingConfig::from_file(const std::string& path) {
  const json j = read_json_file(path, "serving config");
  const fs::path base = fs::path(path).parent_path();
  ServingConfig c = from_json(j, path, base.empty() ? "." : base.string());
  c.path = path;
  return c;
}

const ModelConfig* ServingConfig::find(const std::string& name) const {
  for (const ModelConfig& m : models)
    if (m.name == name) return &m;
  return nullptr;
}

}  // namespace stavid::server
