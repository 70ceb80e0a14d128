#include "model/weights/json_file.h"

#include <fstream>

namespace stavid {

nlohmann::json read_json_file(const std::string& path, const std::string& what, ErrorCode parse_error_code) {
  std::ifstream f(path);
  STAVID_CHECK_CODE(f.good(), ErrorCode::NotFound, what, ": cannot open ", path);
  try {
    nlohmann::json j;
    f >> j;
    return j;
  } catch (const nlohmann::json::exception& e) {
    STAVID_THROW(parse_error_code, what, ": ", path, " is not valid JSON: ", e.what());
  }
}

}  // namespace stavid
