// The MP4 result of a job: chunks reassembled by offset, checked against the total size and SHA-256
// that the last chunk carries, and written to disk atomically (a temporary file in the target's
// directory, fsync, rename), so a reader never sees a partial or unverified video.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "stavid/v1/video.pb.h"

namespace stavid::client {

// Thrown for a result that does not reassemble (-> exit code 10).
class ResultCorrupt : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ResultAssembler {
 public:
  // Takes one chunk in any order. A second chunk at the same offset must carry the same bytes; a
  // second `last` chunk must agree on size and digest. Throws ResultCorrupt otherwise.
  void add(const stavid::v1::ResultChunk& chunk);

  bool empty() const { return chunks_.empty() && !has_last_; }
  bool has_last() const { return has_last_; }
  uint64_t bytes_received() const { return bytes_received_; }
  size_t chunk_count() const { return chunks_.size(); }

  // The whole MP4 once every byte of [0, total) arrived exactly once (no gap, no overlap, nothing past
  // the end) and its SHA-256 matches. Throws ResultCorrupt naming what is wrong.
  std::string assemble() const;

 private:
  std::map<uint64_t, std::string> chunks_;  // offset -> bytes
  uint64_t bytes_received_ = 0;
  bool has_last_ = false;
  uint64_t total_bytes_ = 0;
  std::string sha256_;  // raw 32 bytes
};

// SHA-256 of `data` (raw 32 bytes), through OpenSSL's EVP interface.
std::string sha256(std::string_view data);
// Lower-case hex of raw bytes.
std::string to_hex(std::string_view raw);

// Writes `bytes` to `path` atomically: a temporary file next to it, fsync, rename over the target.
// Throws std::runtime_error with the path and the system error; leaves no temporary file behind.
void write_file_atomically(const std::string& path, std::string_view bytes);

}  // namespace stavid::client
