#include "client/result.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <vector>

namespace stavid::client {

namespace {

constexpr size_t kSha256Bytes = 32;

std::string describe_errno(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

// The process umask without changing it (umask(2) can only swap it, which races with other threads):
// Linux reports it in /proc/self/status; 022 when that line is missing.
mode_t current_umask() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Umask:", 0) == 0) return static_cast<mode_t>(std::stoul(line.substr(6), nullptr, 8));
  }
  return 022;
}

}  // namespace

void ResultAssembler::add(const stavid::v1::ResultChunk& chunk) {
  const uint64_t offset = chunk.offset();
  const std::string& data = chunk.data();
  if (offset > UINT64_MAX - data.size()) {
    throw ResultCorrupt("chunk at offset " + std::to_string(offset) + " runs past 2^64");
  }
  if (chunk.last()) {
    if (chunk.sha256().size() != kSha256Bytes) {
      throw ResultCorrupt("the last chunk carries a " + std::to_string(chunk.sha256().size()) +
                          "-byte SHA-256 (expected 32)");
    }
    if (has_last_ && (chunk.total_bytes() != total_bytes_ || chunk.sha256() != sha256_)) {
      throw ResultCorrupt("two last chunks disagree on the total size or SHA-256");
    }
    has_last_ = true;
    total_bytes_ = chunk.total_bytes();
    sha256_ = chunk.sha256();
  }
  if (data.empty()) return;  // an empty last chunk only carries the size and digest
  auto [it, inserted] = chunks_.try_emplace(offset, data);
  if (!inserted) {
    if (it->second != data) {
      throw ResultCorrupt("two different chunks at offset " + std::to_string(offset));
    }
    return;  // an identical repeat
  }
  bytes_received_ += data.size();
}

std::string ResultAssembler::assemble() const {
  if (!has_last_) throw ResultCorrupt("the stream ended before the last result chunk");
  uint64_t pos = 0;
  for (const auto& [offset, data] : chunks_) {
    if (offset > pos) {
      throw ResultCorrupt("bytes " + std::to_string(pos) + ".." + std::to_string(offset) + " never arrived");
    }
    if (offset < pos) throw ResultCorrupt("chunks overlap at offset " + std::to_string(offset));
    pos = offset + data.size();
  }
  if (pos != total_bytes_) {
    throw ResultCorrupt("received " + std::to_string(pos) + " bytes, the server announced " +
                        std::to_string(total_bytes_));
  }
  std::string out;
  out.reserve(pos);
  for (const auto& [offset, data] : chunks_) out += data;
  const std::string digest = sha256(out);
  if (digest != sha256_) {
    throw ResultCorrupt("SHA-256 mismatch: received " + to_hex(digest) + ", the server announced " +
                        to_hex(sha256_));
  }
  return out;
}

std::string sha256(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_Digest(data.data(), data.size(), digest, &length, EVP_sha256(), nullptr) != 1 ||
      length != kSha256Bytes) {
    throw std::runtime_error("OpenSSL SHA-256 failed");
  }
  return std::string(reinterpret_cast<const char*>(digest), length);
}

std::string to_hex(std::string_view raw) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(raw.size() * 2);
  for (unsigned char c : raw) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

void write_file_atomically(const std::string& path, std::string_view bytes) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  if (target.filename().empty()) throw std::runtime_error("output path " + path + " names a directory");
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::string leaf = ".";  // hidden, next to the target: rename() stays within one file system
  leaf += target.filename().string();
  leaf += ".part-XXXXXX";
  const std::string tmpl = (dir / leaf).string();
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  const int fd = ::mkstemp(name.data());
  if (fd < 0) throw std::runtime_error(describe_errno("cannot create a temporary file in", dir.string()));
  const std::string tmp(name.data());
  auto fail = [&](const std::string& what) {
    const std::string message = describe_errno(what, tmp);
    ::close(fd);
    ::unlink(tmp.c_str());
    throw std::runtime_error(message);
  };
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("cannot write");
    }
    done += static_cast<size_t>(n);
  }
  // mkstemp creates 0600; a video is an ordinary file (0666 less the umask).
  if (::fchmod(fd, 0666 & ~current_umask()) != 0) fail("cannot chmod");
  if (::fsync(fd) != 0) fail("cannot fsync");
  if (::close(fd) != 0) {
    const std::string message = describe_errno("cannot close", tmp);
    ::unlink(tmp.c_str());
    throw std::runtime_error(message);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string message = describe_errno("cannot rename the temporary file to", path);
    ::unlink(tmp.c_str());
    throw std::runtime_error(message);
  }
}

}  // namespace stavid::client
