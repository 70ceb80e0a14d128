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

}  // namespace stavid
