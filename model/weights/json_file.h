// Reads a JSON file (configs, mask strategies) with the project's errors: NotFound when the file
// cannot be opened, `parse_error_code` (DataLoss by default) when it is not JSON; both name the file
// and prefix the message with `what` ("VAE config", ...).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"

namespace stavid {

nlohmann::json read_json_file(const std::string& path, const std::string& what,
                              ErrorCode parse_error_code = ErrorCode::DataLoss);

// Runs config.validate(), prefixing a failure's message with `what` ("Llama config <path>") and
// keeping its code.
template <typename Config>
void validate_in_context(const Config& config, const std::string& what) {
  try {
    config.validate();
  } catch (const Error& e) {
    STAVID_THROW(e.code(), what, ": ", e.message());
  }
}

// Reads the fields of one config object into typed members, naming the config (`what`) and the key
// in its errors: a missing required field throws InvalidArgument; a field of the wrong type throws
// nlohmann::json::exception, which callers turn into InvalidArgument with `what`.
class JsonFields {
 public:
  JsonFields(const nlohmann::json& j, const std::string& what) : j_(j), what_(what) {}

  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  template <typename T>
  void required(const char* key, T& value) const {
    STAVID_CHECK(has(key), what_, ": required field \"", key, "\" is missing");
    j_.at(key).get_to(value);
  }

  template <typename T, typename U>
  void optional(const char* key, T& value, U fallback) const {
    if (has(key))
      j_.at(key).get_to(value);
    else
      value = static_cast<T>(fallback);
  }

 private:
  const nlohmann::json& j_;
  const std::string& what_;
};

}  // namespace stavid
