// Safetensors checkpoints: a read-only, memory-mapped reader and a small writer.
//
// File format (little-endian throughout):
//   bytes [0, 8)        u64 N, the length of the JSON header
//   bytes [8, 8 + N)    UTF-8 JSON object; each key is a tensor name mapped to
//                       {"dtype": "BF16", "shape": [d0, d1, ...], "data_offsets": [begin, end]}
//                       with offsets relative to the data section, plus an optional
//                       "__metadata__" object of string -> string. Writers pad N with spaces.
//   bytes [8 + N, ...)  the data section: raw row-major tensor bytes.
// A Checkpoint is one such file, or a Hugging Face sharded set described by a
// "*.safetensors.index.json" ({"metadata": {...}, "weight_map": {"name": "shard.safetensors"}}).
//
// Error policy: the bytes on disk are untrusted. Every problem throws stavid::Error (never a crash,
// never an out-of-bounds read) whose message names the file and, where there is one, the tensor
// key: NotFound for missing or unreadable files and absent keys, DataLoss for corrupt or truncated
// files and indexes, InvalidArgument for bad caller input, Unsupported for dtypes that cannot be
// converted. The whole header is validated at open time (types, dtype names, sizes, bounds,
// overlaps), so later accessors only do cheap lookups. A mapped file that another process
// truncates while it is open can still raise SIGBUS; checkpoints are assumed immutable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/core/dtype.h"

namespace stavid {

// Element types a safetensors file may declare. Only F32, F16 and BF16 are compute dtypes.
enum class StDType { F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U8, BOOL };

// Bytes per element (0 for a value outside the enum).
size_t st_dtype_size(StDType t);
// The file's spelling: "F32", "BF16", "F8_E4M3", "BOOL", ...
const char* st_dtype_name(StDType t);
// Parses the file's spelling; nullopt for anything unknown (case-sensitive, as in the format).
std::optional<StDType> st_dtype_from_name(std::string_view name);
// The compute dtype with the same storage, if there is one.
std::optional<DType> st_to_dtype(StDType t);

struct TensorRecord {
  std::string name;
  StDType dtype = StDType::F32;
  std::vector<int64_t> shape;  // empty for a scalar
  std::string file;            // path of the file holding the bytes
  uint64_t offset = 0;         // absolute byte offset in `file`
  uint64_t nbytes = 0;

  // Product of the dims (1 for a scalar). Records from a reader are checked not to overflow.
  int64_t numel() const;
};

// One safetensors file, mapped read-only for the lifetime of the object. Move-only.
class SafetensorsFile {
 public:
  // Maps and validates the file; throws stavid::Error (see the policy above).
  static SafetensorsFile open(const std::string& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  // All tensors, ordered by data offset (ties by name).
  const std::vector<TensorRecord>& records() const { return records_; }
  // nullptr when the file has no tensor of that name.
  const TensorRecord* find(std::string_view name) const;
  // The tensor's bytes inside the mapping; valid while this object lives. Throws InvalidArgument
  // for a record that does not belong to this file.
  std::span<const std::byte> bytes(const TensorRecord& record) const;
  // The "__metadata__" object (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  void release();

  std::string path_;
  const std::byte* base_ = nullptr;  // start of the mapping (nullptr when empty or moved from)
  size_t size_ = 0;                  // file size in bytes
  uint64_t data_start_ = 0;          // 8 + header length
  std::vector<TensorRecord> records_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in records_
  std::map<std::string, std::string> metadata_;
};

// A set of named tensors that may span several safetensors files. Move-only.
class Checkpoint {
 public:
  // `path` is a .safetensors file, a *.safetensors.index.json, or a directory holding exactly one
  // index (preferred) or else exactly one .safetensors file.
  static Checkpoint open(const std::string& path);

  const std::string& path() const { return path_; }
  // nullptr when absent.
  const TensorRecord* find(std::string_view name) const;
  // Throws NotFound naming the key and the checkpoint.
  const TensorRecord& at(std::string_view name) const;
  // Every tensor name, sorted.
  std::vector<std::string> names() const;
  // The bytes of a record returned by this checkpoint; valid while this object lives.
  std::span<const std::byte> bytes(const TensorRecord& record) const;
  size_t size() const { return tensors_.size(); }

 private:
  static Checkpoint open_single(const std::string& path);
  static Checkpoint open_index(const std::string& index_path);
  static Checkpoint open_directory(const std::string& dir);
  void add_file(SafetensorsFile file);

  std::string path_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> file_by_path_;  // file path -> position in files_
  std::map<std::string, const TensorRecord*, std::less<>> tensors_;
};

// Converts an F64, F32, F16 or BF16 tensor to float. Other dtypes throw Unsupported naming the
// key, the file and the dtype.
std::vector<float> read_as_float(const SafetensorsFile& file, const TensorRecord& record);
std::vector<float> read_as_float(const Checkpoint& checkpoint, const TensorRecord& record);

struct TensorToWrite {
  std::string name;
  StDType dtype = StDType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;  // must equal numel * st_dtype_size(dtype)
};

// Writes `tensors` in the order given (header padded with spaces to a multiple of 8, so data
// starts 8-byte aligned) to `path + ".tmp"`, then renames it over `path`. Bad input throws
// InvalidArgument naming the tensor; I/O failures throw naming the path.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace stavid
