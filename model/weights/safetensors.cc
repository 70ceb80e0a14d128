#include "model/weights/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"

namespace stavid {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this reader maps it without byte swapping");

namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = uint64_t{256} << 20;  // a sane header is a few MiB at most
constexpr uint64_t kMaxIndexBytes = uint64_t{256} << 20;
constexpr int kMaxJsonDepth = 32;  // a valid header nests 3 deep; this only stops hostile input

struct StDTypeInfo {
  StDType type;
  const char* name;
  size_t size;
};

constexpr StDTypeInfo kStDTypes[] = {
    {StDType::F64, "F64", 8},   {StDType::F32, "F32", 4},         {StDType::F16, "F16", 2},
    {StDType::BF16, "BF16", 2}, {StDType::F8_E4M3, "F8_E4M3", 1}, {StDType::F8_E5M2, "F8_E5M2", 1},
    {StDType::I64, "I64", 8},   {StDType::I32, "I32", 4},         {StDType::I16, "I16", 2},
    {StDType::I8, "I8", 1},     {StDType::U8, "U8", 1},           {StDType::BOOL, "BOOL", 1},
};

const StDTypeInfo* st_dtype_info(StDType t) {
  for (const StDTypeInfo& info : kStDTypes) {
    if (info.type == t) return &info;
  }
  return nullptr;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// Element count of a shape whose dims are all non-negative; nullopt when it overflows int64. A zero
// dim makes the tensor empty however large the other dims are.
std::optional<int64_t> checked_numel(const std::vector<int64_t>& shape) {
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  int64_t n = 1;
  for (const int64_t dim : shape) {
    if (__builtin_mul_overflow(n, dim, &n)) return std::nullopt;
  }
  return n;
}

std::string json_type_name(const Json& j) { return j.type_name(); }

// A JSON value for an error message, cut short so that a hostile header cannot bloat the message.
std::string brief_dump(const Json& j) {
  std::string s = j.dump();
  constexpr size_t kMaxChars = 80;
  if (s.size() > kMaxChars) s = s.substr(0, kMaxChars) + "...";
  return s;
}

// Parses JSON text. Rejects nesting deeper than kMaxJsonDepth and duplicate keys within one object
// (nlohmann would silently keep the last one, hiding a tensor). Parse failures throw DataLoss
// starting with `what` (which names the file) and carrying the parser's message.
Json parse_json(const char* first, const char* last, const std::string& what) {
  std::vector<std::set<std::string>> open_objects;
  const Json::parser_callback_t callback = [&](int depth, Json::parse_event_t event,
                                               Json& parsed) -> bool {
    switch (event) {
      case Json::parse_event_t::object_start:
      case Json::parse_event_t::array_start:
        if (depth >= kMaxJsonDepth) {
          STAVID_THROW(ErrorCode::DataLoss, what, " nests JSON more than ", kMaxJsonDepth,
                       " levels deep");
        }
        if (event == Json::parse_event_t::object_start) open_objects.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!open_objects.empty() && parsed.is_string()) {
          const std::string& key = parsed.get_ref<const std::string&>();
          if (!open_objects.back().insert(key).second) {
            STAVID_THROW(ErrorCode::DataLoss, what, " has the key '", key,
                         "' twice in one JSON object");
          }
        }
        break;
      default: break;
    }
    return true;
  };
  try {
    return Json::parse(first, last, callback);
  } catch (const Json::exception& e) {
    STAVID_THROW(ErrorCode::DataLoss, what, " is not valid JSON: ", e.what());
  }
}

// Owns a file descriptor.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  // Closes now and reports the result (close can report a deferred write error).
  int close() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// Opens a regular file for reading; throws NotFound naming `path` (and `kind`) on failure.
int open_regular_file(const std::string& path, const char* kind, struct stat* st) {
  // O_NONBLOCK keeps a FIFO from blocking the open; it is then rejected as not a regular file.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    STAVID_THROW(ErrorCode::NotFound, "cannot open ", kind, " '", path, "': ", std::strerror(err));
  }
  if (::fstat(fd, st) != 0) {
    const int err = errno;
    ::close(fd);
    STAVID_THROW(ErrorCode::NotFound, "cannot stat ", kind, " '", path, "': ", std::strerror(err));
  }
  if (!S_ISREG(st->st_mode)) {
    ::close(fd);
    STAVID_THROW(ErrorCode::NotFound, "cannot read ", kind, " '", path, "': not a regular file");
  }
  return fd;
}

std::string read_text_file(const std::string& path, const char* kind) {
  struct stat st {};
  Fd fd(open_regular_file(path, kind, &st));
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  STAVID_CHECK_CODE(size <= kMaxIndexBytes, ErrorCode::DataLoss, kind, " '", path, "' is ", size,
                    " bytes, more than the ", kMaxIndexBytes, "-byte limit");
  std::string text(size, '\0');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::read(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      STAVID_THROW(ErrorCode::NotFound, "cannot read ", kind, " '", path,
                   "': ", std::strerror(err));
    }
    if (n == 0) break;  // the file shrank while reading; parse what is there
    done += static_cast<size_t>(n);
  }
  text.resize(done);
  return text;
}

// Reads a non-negative JSON integer; nullopt when `j` is anything else.
std::optional<uint64_t> json_to_u64(const Json& j) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    if (v >= 0) return static_cast<uint64_t>(v);
  }
  return std::nullopt;
}

struct ParsedEntry {
  TensorRecord record;
  uint64_t begin = 0;  // relative to the data section
  uint64_t end = 0;
};

// Validates one header entry against the data section size.
ParsedEntry parse_entry(const std::string& path, const std::string& key, const Json& entry,
                        uint64_t data_start, uint64_t data_size) {
#define STAVID_ENTRY_CHECK(cond, ...)                                                             \
  STAVID_CHECK_CODE(cond, ErrorCode::DataLoss, "corrupt safetensors file '", path, "': tensor '", \
                    key, "': ", __VA_ARGS__)
  STAVID_ENTRY_CHECK(entry.is_object(), "header entry is a JSON ", json_type_name(entry),
                     ", expected an object with dtype, shape and data_offsets");

  const auto dtype_it = entry.find("dtype");
  STAVID_ENTRY_CHECK(dtype_it != entry.end(), "header entry has no \"dtype\"");
  STAVID_ENTRY_CHECK(dtype_it->is_string(), "\"dtype\" is a JSON ", json_type_name(*dtype_it),
                     ", expected a string");
  const std::string& dtype_name = dtype_it->get_ref<const std::string&>();
  const std::optional<StDType> dtype = st_dtype_from_name(dtype_name);
  STAVID_ENTRY_CHECK(dtype.has_value(), "unknown dtype '", dtype_name, "'");

  const auto shape_it = entry.find("shape");
  STAVID_ENTRY_CHECK(shape_it != entry.end(), "header entry has no \"shape\"");
  STAVID_ENTRY_CHECK(shape_it->is_array(), "\"shape\" is a JSON ", json_type_name(*shape_it),
                     ", expected an array of integers");
  std::vector<int64_t> shape;
  shape.reserve(shape_it->size());
  for (const Json& dim_json : *shape_it) {
    STAVID_ENTRY_CHECK(dim_json.is_number_integer(), "\"shape\" holds a JSON ",
                       json_type_name(dim_json), ", expected only integers");
    STAVID_ENTRY_CHECK(dim_json.is_number_unsigned() || dim_json.get<int64_t>() >= 0,
                       "negative dimension ", dim_json.get<int64_t>(), " in shape");
    const uint64_t dim_u = dim_json.get<uint64_t>();
    STAVID_ENTRY_CHECK(dim_u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                       "dimension ", dim_u, " is too large");
    shape.push_back(static_cast<int64_t>(dim_u));
  }
  const std::optional<int64_t> numel = checked_numel(shape);
  STAVID_ENTRY_CHECK(numel.has_value(), "element count of shape ", shape_string(shape),
                     " overflows 64 bits");

  const auto offsets_it = entry.find("data_offsets");
  STAVID_ENTRY_CHECK(offsets_it != entry.end(), "header entry has no \"data_offsets\"");
  STAVID_ENTRY_CHECK(offsets_it->is_array() && offsets_it->size() == 2,
                     "\"data_offsets\" must be an array of two integers [begin, end], found ",
                     brief_dump(*offsets_it));
  const std::optional<uint64_t> begin = json_to_u64((*offsets_it)[0]);
  const std::optional<uint64_t> end = json_to_u64((*offsets_it)[1]);
  STAVID_ENTRY_CHECK(begin.has_value() && end.has_value(),
                     "\"data_offsets\" must hold two non-negative integers, found ",
                     brief_dump(*offsets_it));
  STAVID_ENTRY_CHECK(*begin <= *end, "data_offsets [", *begin, ", ", *end,
                     "] end before they begin");
  STAVID_ENTRY_CHECK(*end <= data_size, "data_offsets [", *begin, ", ", *end,
                     "] reach past the end of the data section, which has only ", data_size,
                     " bytes (file truncated?)");

  const size_t elem_size = st_dtype_size(*dtype);
  uint64_t expected = 0;
  STAVID_ENTRY_CHECK(
      !__builtin_mul_overflow(static_cast<uint64_t>(*numel), uint64_t{elem_size}, &expected),
      "byte size of shape ", shape_string(shape), " overflows 64 bits");
  STAVID_ENTRY_CHECK(*end - *begin == expected, "shape ", shape_string(shape), " of ", dtype_name,
                     " needs ", expected, " bytes but data_offsets [", *begin, ", ", *end,
                     "] span ", *end - *begin, " bytes (shape/size mismatch)");
#undef STAVID_ENTRY_CHECK

  ParsedEntry out;
  out.record.name = key;
  out.record.dtype = *dtype;
  out.record.shape = std::move(shape);
  out.record.file = path;
  out.record.offset = data_start + *begin;
  out.record.nbytes = expected;
  out.begin = *begin;
  out.end = *end;
  return out;
}

std::vector<float> convert_to_float(std::span<const std::byte> src, const TensorRecord& record) {
  const std::byte* p = src.data();
  switch (record.dtype) {
    case StDType::F32: {
      std::vector<float> out(src.size() / 4);
      if (!out.empty()) std::memcpy(out.data(), p, out.size() * 4);
      return out;
    }
    case StDType::F64: {
      std::vector<float> out(src.size() / 8);
      for (size_t i = 0; i < out.size(); ++i) {
        double v;
        std::memcpy(&v, p + i * 8, 8);
        out[i] = static_cast<float>(v);
      }
      return out;
    }
    case StDType::F16:
    case StDType::BF16: {
      const bool bf16 = record.dtype == StDType::BF16;
      std::vector<float> out(src.size() / 2);
      for (size_t i = 0; i < out.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, p + i * 2, 2);
        out[i] = bf16 ? bf16_to_float(h) : f16_to_float(h);
      }
      return out;
    }
    default: break;
  }
  STAVID_THROW(ErrorCode::Unsupported, "tensor '", record.name, "' in '", record.file,
               "' has dtype ", st_dtype_name(record.dtype),
               ", which cannot be read as float (supported: F64, F32, F16, BF16)");
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::string join_names(const std::vector<std::string>& names) {
  std::string s;
  for (const std::string& n : names) {
    if (!s.empty()) s += ", ";
    s += "'" + n + "'";
  }
  return s.empty() ? "(none)" : s;
}

}  // namespace

// ---- dtypes -------------------------------------------------------------------------------------

size_t st_dtype_size(StDType t) {
  const StDTypeInfo* info = st_dtype_info(t);
  return info != nullptr ? info->size : 0;
}

const char* st_dtype_name(StDType t) {
  const StDTypeInfo* info = st_dtype_info(t);
  return info != nullptr ? info->name : "?";
}

std::optional<StDType> st_dtype_from_name(std::string_view name) {
  for (const StDTypeInfo& info : kStDTypes) {
    if (name == info.name) return info.type;
  }
  return std::nullopt;
}

std::optional<DType> st_to_dtype(StDType t) {
  switch (t) {
    case StDType::F32: return DType::F32;
    case StDType::F16: return DType::F16;
    case StDType::BF16: return DType::BF16;
    default: return std::nullopt;
  }
}

int64_t TensorRecord::numel() const {
  for (const int64_t dim : shape) {
    STAVID_CHECK(dim >= 0, "tensor '", name, "' has negative dimension ", dim);
  }
  const std::optional<int64_t> n = checked_numel(shape);
  STAVID_CHECK(n.has_value(), "tensor '", name, "': element count of shape ", shape_string(shape),
               " overflows 64 bits");
  return *n;
}

// ---- SafetensorsFile ----------------------------------------------------------------------------

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  struct stat st {};
  Fd fd(open_regular_file(path, "safetensors file", &st));
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  STAVID_CHECK_CODE(file_size >= 8, ErrorCode::DataLoss, "safetensors file '", path,
                    "' is truncated: ", file_size,
                    " bytes, shorter than the 8-byte header length field");

  SafetensorsFile file;  // owns the mapping from here on, so every throw below unmaps it
  file.path_ = path;
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (map == MAP_FAILED) {
    const int err = errno;
    STAVID_THROW(ErrorCode::NotFound, "cannot map safetensors file '", path,
                 "': ", std::strerror(err));
  }
  file.base_ = static_cast<const std::byte*>(map);
  file.size_ = file_size;
  fd.close();  // the mapping keeps the file alive

  uint64_t header_len = 0;
  std::memcpy(&header_len, file.base_, 8);
  STAVID_CHECK_CODE(header_len <= file_size - 8, ErrorCode::DataLoss, "corrupt safetensors file '",
                    path, "': header length ", header_len, " is larger than the ", file_size - 8,
                    " bytes that follow the length field (file truncated?)");
  STAVID_CHECK_CODE(header_len <= kMaxHeaderBytes, ErrorCode::DataLoss,
                    "corrupt safetensors file '", path, "': header length ", header_len,
                    " exceeds the ", kMaxHeaderBytes, "-byte limit");
  file.data_start_ = 8 + header_len;
  const uint64_t data_size = file_size - file.data_start_;

  const char* header_text = reinterpret_cast<const char*>(file.base_ + 8);
  const std::string what = "header of safetensors file '" + path + "'";
  const Json header = parse_json(header_text, header_text + header_len, what);
  STAVID_CHECK_CODE(header.is_object(), ErrorCode::DataLoss, "corrupt safetensors file '", path,
                    "': the header is a JSON ", json_type_name(header), ", expected an object");

  std::vector<ParsedEntry> entries;
  entries.reserve(header.size());
  try {
    for (const auto& [key, value] : header.items()) {
      if (key == "__metadata__") {
        STAVID_CHECK_CODE(value.is_object(), ErrorCode::DataLoss, "corrupt safetensors file '",
                          path, "': \"__metadata__\" is a JSON ", json_type_name(value),
                          ", expected an object of strings");
        for (const auto& [mkey, mvalue] : value.items()) {
          STAVID_CHECK_CODE(mvalue.is_string(), ErrorCode::DataLoss, "corrupt safetensors file '",
                            path, "': \"__metadata__\" value for '", mkey, "' is a JSON ",
                            json_type_name(mvalue), ", expected a string");
          file.metadata_.emplace(mkey, mvalue.get<std::string>());
        }
        continue;
      }
      entries.push_back(parse_entry(path, key, value, file.data_start_, data_size));
    }
  } catch (const Json::exception& e) {
    // Every access above is type-checked first; this is a backstop so that a JSON library
    // exception can never escape as anything but a stavid::Error.
    STAVID_THROW(ErrorCode::DataLoss, "corrupt safetensors file '", path, "': ", e.what());
  }

  std::sort(entries.begin(), entries.end(), [](const ParsedEntry& a, const ParsedEntry& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.record.name < b.record.name;
  });
  // Empty tensors occupy no bytes and cannot overlap anything.
  const ParsedEntry* last_owner = nullptr;  // the non-empty entry reaching furthest so far
  for (const ParsedEntry& e : entries) {
    if (e.begin == e.end) continue;
    if (last_owner != nullptr && e.begin < last_owner->end) {
      STAVID_THROW(ErrorCode::DataLoss, "corrupt safetensors file '", path, "': tensors '",
                   last_owner->record.name, "' (data_offsets [", last_owner->begin, ", ",
                   last_owner->end, "]) and '", e.record.name, "' (data_offsets [", e.begin, ", ",
                   e.end, "]) overlap");
    }
    if (last_owner == nullptr || e.end > last_owner->end) last_owner = &e;
  }

  file.records_.reserve(entries.size());
  for (ParsedEntry& e : entries) {
    file.index_.emplace(e.record.name, file.records_.size());
    file.records_.push_back(std::move(e.record));
  }
  return file;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      base_(std::exchange(other.base_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      data_start_(std::exchange(other.data_start_, 0)),
      records_(std::move(other.records_)),
      index_(std::move(other.index_)),
      metadata_(std::move(other.metadata_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    data_start_ = std::exchange(other.data_start_, 0);
    records_ = std::move(other.records_);
    index_ = std::move(other.index_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { release(); }

void SafetensorsFile::release() {
  if (base_ != nullptr) ::munmap(const_cast<std::byte*>(base_), size_);
  base_ = nullptr;
  size_ = 0;
}

const TensorRecord* SafetensorsFile::find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &records_[it->second];
}

std::span<const std::byte> SafetensorsFile::bytes(const TensorRecord& record) const {
  STAVID_CHECK(base_ != nullptr && record.file == path_ && record.offset >= data_start_ &&
                   record.offset <= size_ && record.nbytes <= size_ - record.offset,
               "tensor '", record.name, "' (file '", record.file, "', bytes at ", record.offset,
               " + ", record.nbytes, ") does not belong to safetensors file '", path_, "'");
  return {base_ + record.offset, static_cast<size_t>(record.nbytes)};
}

// ---- Checkpoint ---------------------------------------------------------------------------------

Checkpoint Checkpoint::open(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return open_directory(path);
  if (ends_with(path, ".json")) return open_index(path);
  return open_single(path);
}

Checkpoint Checkpoint::open_single(const std::string& path) {
  Checkpoint ckpt;
  ckpt.path_ = path;
  ckpt.add_file(SafetensorsFile::open(path));
  return ckpt;
}

Checkpoint Checkpoint::open_index(const std::string& index_path) {
  const std::string text = read_text_file(index_path, "checkpoint index");
  const std::string what = "checkpoint index '" + index_path + "'";
  const Json index = parse_json(text.data(), text.data() + text.size(), what);
  STAVID_CHECK_CODE(index.is_object(), ErrorCode::DataLoss, what, " is a JSON ",
                    json_type_name(index), ", expected an object with a \"weight_map\"");
  const auto map_it = index.find("weight_map");
  STAVID_CHECK_CODE(map_it != index.end(), ErrorCode::DataLoss, what,
                    " has no \"weight_map\" object");
  STAVID_CHECK_CODE(map_it->is_object(), ErrorCode::DataLoss, what, ": \"weight_map\" is a JSON ",
                    json_type_name(*map_it), ", expected an object of tensor name -> shard file");

  // Shard path (normalized, so two spellings of one file open it once) -> listed keys.
  struct Shard {
    std::string listed_name;  // as written in the index, for messages
    std::vector<std::string> keys;
  };
  std::map<std::string, Shard> shards;
  const fs::path folder = fs::path(index_path).parent_path();
  for (const auto& [key, value] : map_it->items()) {
    STAVID_CHECK_CODE(value.is_string() && !value.get_ref<const std::string&>().empty(),
                      ErrorCode::DataLoss, what, ": weight_map entry for tensor '", key,
                      "' is a JSON ", json_type_name(value), ", expected a shard file name");
    const std::string& listed = value.get_ref<const std::string&>();
    const std::string shard_path = (folder / listed).lexically_normal().string();
    Shard& shard = shards[shard_path];
    shard.listed_name = listed;
    shard.keys.push_back(key);
  }

  Checkpoint ckpt;
  ckpt.path_ = index_path;
  for (auto& [shard_path, shard] : shards) {
    std::error_code ec;
    STAVID_CHECK_CODE(fs::exists(shard_path, ec), ErrorCode::NotFound, "shard '", shard.listed_name,
                      "' (", shard_path, ") named by checkpoint index '", index_path,
                      "' does not exist");
    std::optional<SafetensorsFile> file;
    try {
      file.emplace(SafetensorsFile::open(shard_path));
    } catch (const Error& e) {
      STAVID_THROW(e.code(), e.message(), " (shard of checkpoint index '", index_path, "')");
    }
    for (const std::string& key : shard.keys) {
      STAVID_CHECK_CODE(file->find(key) != nullptr, ErrorCode::DataLoss, "tensor '", key,
                        "' is listed in the weight_map of checkpoint index '", index_path,
                        "' under shard '", shard.listed_name,
                        "', but that shard has no such tensor (", shard_path, ")");
    }
    ckpt.add_file(std::move(*file));
  }
  return ckpt;
}

Checkpoint Checkpoint::open_directory(const std::string& dir) {
  std::vector<std::string> indexes;
  std::vector<std::string> singles;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;
    if (!it->is_regular_file(type_ec)) continue;
    const std::string name = it->path().filename().string();
    if (ends_with(name, ".safetensors.index.json")) {
      indexes.push_back(name);
    } else if (ends_with(name, ".safetensors")) {
      singles.push_back(name);
    }
  }
  STAVID_CHECK_CODE(!ec, ErrorCode::NotFound, "cannot list checkpoint directory '", dir,
                    "': ", ec.message());
  std::sort(indexes.begin(), indexes.end());
  std::sort(singles.begin(), singles.end());

  if (indexes.size() == 1) return open_index((fs::path(dir) / indexes[0]).string());
  if (indexes.empty() && singles.size() == 1) {
    return open_single((fs::path(dir) / singles[0]).string());
  }
  STAVID_CHECK_CODE(!indexes.empty() || !singles.empty(), ErrorCode::NotFound,
                    "checkpoint directory '", dir,
                    "' holds no *.safetensors.index.json and no *.safetensors file");
  STAVID_THROW(ErrorCode::InvalidArgument, "checkpoint directory '", dir,
               "' is ambiguous (index files: ", join_names(indexes),
               "; safetensors files: ", join_names(singles),
               "); expected exactly one *.safetensors.index.json, or none and exactly one "
               "*.safetensors file; pass the file to load instead");
}

void Checkpoint::add_file(SafetensorsFile file) {
  const size_t file_index = files_.size();
  files_.push_back(std::make_unique<SafetensorsFile>(std::move(file)));
  const SafetensorsFile& added = *files_.back();
  file_by_path_.emplace(added.path(), file_index);
  for (const TensorRecord& record : added.records()) {
    const auto [it, inserted] = tensors_.emplace(record.name, &record);
    STAVID_CHECK_CODE(inserted, ErrorCode::DataLoss, "tensor '", record.name,
                      "' appears in two shards of checkpoint '", path_, "': '", it->second->file,
                      "' and '", record.file, "'");
  }
}

const TensorRecord* Checkpoint::find(std::string_view name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : it->second;
}

const TensorRecord& Checkpoint::at(std::string_view name) const {
  const TensorRecord* record = find(name);
  STAVID_CHECK_CODE(record != nullptr, ErrorCode::NotFound, "tensor '", name,
                    "' not found in checkpoint '", path_, "' (", tensors_.size(), " tensors)");
  return *record;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, record] : tensors_) out.push_back(name);
  return out;  // std::map iterates in sorted order
}

std::span<const std::byte> Checkpoint::bytes(const TensorRecord& record) const {
  const auto it = file_by_path_.find(record.file);
  STAVID_CHECK(it != file_by_path_.end(), "tensor '", record.name, "' refers to file '",
               record.file, "', which is not part of checkpoint '", path_, "'");
  return files_[it->second]->bytes(record);
}

// ---- read_as_float ------------------------------------------------------------------------------

std::vector<float> read_as_float(const SafetensorsFile& file, const TensorRecord& record) {
  return convert_to_float(file.bytes(record), record);
}

std::vector<float> read_as_float(const Checkpoint& checkpoint, const TensorRecord& record) {
  return convert_to_float(checkpoint.bytes(record), record);
}

// ---- writer -------------------------------------------------------------------------------------

namespace {

ErrorCode io_error_code(int err) {
  return (err == ENOENT || err == ENOTDIR || err == EACCES || err == EPERM) ? ErrorCode::NotFound
                                                                            : ErrorCode::Internal;
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  using OrderedJson = nlohmann::ordered_json;
  OrderedJson header = OrderedJson::object();
  if (!metadata.empty()) {
    OrderedJson meta = OrderedJson::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header["__metadata__"] = std::move(meta);
  }

  std::set<std::string_view> seen;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    STAVID_CHECK(!t.name.empty(), "writing '", path, "': a tensor has an empty name");
    STAVID_CHECK(t.name != "__metadata__", "writing '", path,
                 "': '__metadata__' is reserved and cannot name a tensor");
    STAVID_CHECK(seen.insert(t.name).second, "writing '", path, "': tensor '", t.name,
                 "' is given twice");
    const size_t elem_size = st_dtype_size(t.dtype);
    STAVID_CHECK(elem_size != 0, "writing '", path, "': tensor '", t.name,
                 "' has an invalid dtype value ", static_cast<int>(t.dtype));
    for (const int64_t dim : t.shape) {
      STAVID_CHECK(dim >= 0, "writing '", path, "': tensor '", t.name, "' has negative dimension ",
                   dim, " in shape ", shape_string(t.shape));
    }
    const std::optional<int64_t> numel = checked_numel(t.shape);
    STAVID_CHECK(numel.has_value(), "writing '", path, "': tensor '", t.name,
                 "': element count of shape ", shape_string(t.shape), " overflows 64 bits");
    uint64_t expected = 0;
    STAVID_CHECK(
        !__builtin_mul_overflow(static_cast<uint64_t>(*numel), uint64_t{elem_size}, &expected),
        "writing '", path, "': tensor '", t.name, "': byte size of shape ", shape_string(t.shape),
        " overflows 64 bits");
    STAVID_CHECK(t.nbytes == expected, "writing '", path, "': tensor '", t.name, "' has nbytes ",
                 t.nbytes, " but shape ", shape_string(t.shape), " of ", st_dtype_name(t.dtype),
                 " needs ", expected, " bytes");
    STAVID_CHECK(t.data != nullptr || t.nbytes == 0, "writing '", path, "': tensor '", t.name,
                 "' has ", t.nbytes, " bytes but a null data pointer");
    OrderedJson entry = OrderedJson::object();
    entry["dtype"] = st_dtype_name(t.dtype);
    entry["shape"] = t.shape;
    entry["data_offsets"] = OrderedJson::array({offset, offset + t.nbytes});
    header[t.name] = std::move(entry);
    offset += t.nbytes;
  }

  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    STAVID_THROW(ErrorCode::InvalidArgument, "writing '", path,
                 "': tensor names and metadata must be valid UTF-8: ", e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();
  char prefix[8];
  std::memcpy(prefix, &header_len, 8);

  const std::string tmp = path + ".tmp";
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    const int err = errno;
    STAVID_THROW(io_error_code(err), "cannot create '", tmp, "' to write '", path,
                 "': ", std::strerror(err));
  }
  bool committed = false;
  struct Cleanup {
    const std::string& tmp;
    const bool& committed;
    ~Cleanup() {
      if (!committed) ::unlink(tmp.c_str());
    }
  } cleanup{tmp, committed};

  const auto write_all = [&](const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t written = ::write(fd.get(), p, n);
      if (written < 0 && errno == EINTR) continue;
      if (written <= 0) {
        const int err = written < 0 ? errno : EIO;
        STAVID_THROW(ErrorCode::Internal, "writing '", tmp, "' (for '", path,
                     "') failed: ", std::strerror(err));
      }
      p += written;
      n -= static_cast<size_t>(written);
    }
  };
  write_all(prefix, 8);
  write_all(text.data(), text.size());
  for (const TensorToWrite& t : tensors) {
    if (t.nbytes > 0) write_all(t.data, t.nbytes);
  }
  if (::fsync(fd.get()) != 0 || fd.close() != 0) {
    const int err = errno;
    STAVID_THROW(ErrorCode::Internal, "flushing '", tmp, "' (for '", path,
                 "') failed: ", std::strerror(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    STAVID_THROW(io_error_code(err), "cannot rename '", tmp, "' to '", path,
                 "': ", std::strerror(err));
  }
  committed = true;
}

}  // namespace stavid
