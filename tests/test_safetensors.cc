// Tests for the safetensors reader and writer. Every file is written by the test itself into a
// fresh temporary directory that is removed afterwards.
#include "model/weights/safetensors.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "kernels/core/dtype.h"
#include "kernels/core/error.h"

namespace stavid {
namespace {

namespace fs = std::filesystem;

using Bytes = std::vector<uint8_t>;

// Runs `fn`, expecting a stavid::Error with `code` whose message contains every needle.
void expect_error(const std::function<void()>& fn, ErrorCode code,
                  std::initializer_list<std::string> needles) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(error_code_name(e.code()), std::string(error_code_name(code)))
        << "message: " << e.message();
    for (const std::string& needle : needles) {
      EXPECT_NE(e.message().find(needle), std::string::npos)
          << "message lacks '" << needle << "': " << e.message();
    }
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-stavid exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "did not throw; expected " << error_code_name(code);
}

#define EXPECT_STAVID_ERROR(stmt, code, ...)          \
  do {                                                \
    SCOPED_TRACE(#stmt);                              \
    expect_error([&] { stmt; }, code, {__VA_ARGS__}); \
  } while (0)

void write_file(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  ASSERT_TRUE(out.good()) << path;
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

void write_text(const std::string& path, const std::string& text) {
  write_file(path, Bytes(text.begin(), text.end()));
}

Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A safetensors file from a raw header string and data section, for hand-made (often corrupt)
// headers.
Bytes make_raw(const std::string& header, const Bytes& data) {
  Bytes out(8);
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

Bytes iota_bytes(size_t n) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i * 7 + 3);
  return b;
}

template <typename T>
TensorToWrite tensor(const std::string& name, StDType dtype, std::vector<int64_t> shape,
                     const std::vector<T>& data) {
  return {name, dtype, std::move(shape), data.data(), data.size() * sizeof(T)};
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (const int64_t d : shape) n *= d;
  return n;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = (fs::temp_directory_path() / "stavid_safetensors_XXXXXX").string();
    ASSERT_NE(::mkdtemp(templ.data()), nullptr);
    dir_ = templ;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  // Writes a raw file and checks that opening it fails with `code`, naming the file and `needles`.
  void expect_open_error(const std::string& name, const Bytes& bytes, ErrorCode code,
                         std::initializer_list<std::string> needles) {
    const std::string p = path(name);
    write_file(p, bytes);
    SCOPED_TRACE(name);
    expect_error([&] { SafetensorsFile::open(p); }, code, {p});
    expect_error([&] { SafetensorsFile::open(p); }, code, needles);
    expect_error([&] { Checkpoint::open(p); }, code, {p});
  }

  std::string dir_;
};

// ---- dtypes -------------------------------------------------------------------------------------

TEST(StDTypeTest, NamesSizesAndComputeDtypes) {
  const struct {
    StDType t;
    const char* name;
    size_t size;
  } cases[] = {
      {StDType::F64, "F64", 8},         {StDType::F32, "F32", 4},
      {StDType::F16, "F16", 2},         {StDType::BF16, "BF16", 2},
      {StDType::F8_E4M3, "F8_E4M3", 1}, {StDType::F8_E5M2, "F8_E5M2", 1},
      {StDType::I64, "I64", 8},         {StDType::I32, "I32", 4},
      {StDType::I16, "I16", 2},         {StDType::I8, "I8", 1},
      {StDType::U8, "U8", 1},           {StDType::BOOL, "BOOL", 1},
  };
  for (const auto& c : cases) {
    EXPECT_STREQ(st_dtype_name(c.t), c.name);
    EXPECT_EQ(st_dtype_size(c.t), c.size) << c.name;
    ASSERT_TRUE(st_dtype_from_name(c.name).has_value()) << c.name;
    EXPECT_EQ(*st_dtype_from_name(c.name), c.t);
  }
  EXPECT_FALSE(st_dtype_from_name("Q7").has_value());
  EXPECT_FALSE(st_dtype_from_name("bf16").has_value());  // the format is case-sensitive
  EXPECT_EQ(st_to_dtype(StDType::F32), DType::F32);
  EXPECT_EQ(st_to_dtype(StDType::F16), DType::F16);
  EXPECT_EQ(st_to_dtype(StDType::BF16), DType::BF16);
  EXPECT_FALSE(st_to_dtype(StDType::F8_E4M3).has_value());
  EXPECT_FALSE(st_to_dtype(StDType::F64).has_value());
  EXPECT_FALSE(st_to_dtype(StDType::I32).has_value());
}

TEST(TensorRecordTest, Numel) {
  TensorRecord r;
  EXPECT_EQ(r.numel(), 1);  // scalar
  r.shape = {2, 3, 13};
  EXPECT_EQ(r.numel(), 78);
  r.shape = {int64_t{1} << 40, int64_t{1} << 40, 0};
  EXPECT_EQ(r.numel(), 0);
  r.shape = {int64_t{1} << 40, int64_t{1} << 40};
  EXPECT_THROW(r.numel(), Error);
}

// ---- round trips --------------------------------------------------------------------------------

TEST_F(SafetensorsTest, RoundTripLoadableDtypes) {
  struct Case {
    std::string name;
    StDType dtype;
    std::vector<int64_t> shape;
  };
  const std::vector<Case> cases = {
      {"f32.a", StDType::F32, {5, 7}},         {"f32.scalar", StDType::F32, {}},
      {"bf16.b", StDType::BF16, {11}},         {"bf16.c", StDType::BF16, {2, 3, 13}},
      {"f16.d", StDType::F16, {5, 7}},         {"f16.scalar", StDType::F16, {}},
      {"f64.e", StDType::F64, {2, 3, 13}},     {"f32.f", StDType::F32, {2, 3, 13}},
      {"bf16.g", StDType::BF16, {1, 1, 1, 3}},
  };
  // Values are multiples of 1/8 below 16 in magnitude: exact in every dtype here.
  std::vector<std::vector<float>> expected(cases.size());
  std::vector<std::vector<uint8_t>> storage(cases.size());
  std::vector<TensorToWrite> to_write;
  for (size_t c = 0; c < cases.size(); ++c) {
    const int64_t n = numel_of(cases[c].shape);
    const size_t elem = st_dtype_size(cases[c].dtype);
    storage[c].resize(static_cast<size_t>(n) * elem);
    for (int64_t i = 0; i < n; ++i) {
      const float v = static_cast<float>((i * 5 + static_cast<int64_t>(c) * 3) % 97 - 48) * 0.125f;
      expected[c].push_back(v);
      uint8_t* dst = storage[c].data() + i * elem;
      switch (cases[c].dtype) {
        case StDType::F32: std::memcpy(dst, &v, 4); break;
        case StDType::F64: {
          const double d = v;
          std::memcpy(dst, &d, 8);
          break;
        }
        case StDType::BF16: {
          const uint16_t h = float_to_bf16(v);
          ASSERT_EQ(bf16_to_float(h), v) << "test value not exact in bf16";
          std::memcpy(dst, &h, 2);
          break;
        }
        case StDType::F16: {
          const uint16_t h = float_to_f16(v);
          ASSERT_EQ(f16_to_float(h), v) << "test value not exact in f16";
          std::memcpy(dst, &h, 2);
          break;
        }
        default: FAIL();
      }
    }
    to_write.push_back(
        {cases[c].name, cases[c].dtype, cases[c].shape, storage[c].data(), storage[c].size()});
  }
  const std::string p = path("model.safetensors");
  write_safetensors(p, to_write);
  EXPECT_FALSE(fs::exists(p + ".tmp"));

  // The header is padded so that the data section starts 8-byte aligned.
  const Bytes raw = read_file(p);
  uint64_t header_len = 0;
  std::memcpy(&header_len, raw.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_TRUE(raw[8 + header_len - 1] == ' ' || raw[8 + header_len - 1] == '}');

  const SafetensorsFile file = SafetensorsFile::open(p);
  const Checkpoint ckpt = Checkpoint::open(p);
  EXPECT_EQ(file.path(), p);
  ASSERT_EQ(file.records().size(), cases.size());
  ASSERT_EQ(ckpt.size(), cases.size());
  // Records come in data-offset order, which is the write order.
  for (size_t c = 0; c < cases.size(); ++c) EXPECT_EQ(file.records()[c].name, cases[c].name);
  EXPECT_EQ(file.records()[0].offset, 8 + header_len);

  for (size_t c = 0; c < cases.size(); ++c) {
    SCOPED_TRACE(cases[c].name);
    const TensorRecord* rec = file.find(cases[c].name);
    ASSERT_NE(rec, nullptr);
    EXPECT_EQ(rec->dtype, cases[c].dtype);
    EXPECT_EQ(rec->shape, cases[c].shape);
    EXPECT_EQ(rec->numel(), numel_of(cases[c].shape));
    EXPECT_EQ(rec->nbytes, storage[c].size());
    EXPECT_EQ(rec->file, p);
    ASSERT_LE(rec->offset + rec->nbytes, raw.size());
    EXPECT_EQ(std::memcmp(raw.data() + rec->offset, storage[c].data(), storage[c].size()), 0);

    const auto span = file.bytes(*rec);
    ASSERT_EQ(span.size(), storage[c].size());
    EXPECT_EQ(std::memcmp(span.data(), storage[c].data(), span.size()), 0);
    EXPECT_EQ(read_as_float(file, *rec), expected[c]);

    const TensorRecord& crec = ckpt.at(cases[c].name);
    EXPECT_EQ(crec.offset, rec->offset);
    const auto cspan = ckpt.bytes(crec);
    ASSERT_EQ(cspan.size(), storage[c].size());
    EXPECT_EQ(std::memcmp(cspan.data(), storage[c].data(), cspan.size()), 0);
    EXPECT_EQ(read_as_float(ckpt, crec), expected[c]);
  }
  EXPECT_EQ(file.find("nope"), nullptr);
  EXPECT_EQ(ckpt.find("nope"), nullptr);
  EXPECT_TRUE(file.metadata().empty());

  std::vector<std::string> sorted;
  for (const auto& c : cases) sorted.push_back(c.name);
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(ckpt.names(), sorted);
}

TEST_F(SafetensorsTest, RoundTripOtherDtypesKeepsBytesButIsNotFloat) {
  const StDType dtypes[] = {StDType::I64, StDType::I32,  StDType::I16,     StDType::I8,
                            StDType::U8,  StDType::BOOL, StDType::F8_E4M3, StDType::F8_E5M2};
  std::vector<Bytes> storage;
  std::vector<TensorToWrite> to_write;
  for (const StDType t : dtypes) storage.push_back(iota_bytes(3 * 5 * st_dtype_size(t)));
  for (size_t i = 0; i < std::size(dtypes); ++i) {
    to_write.push_back({std::string("t.") + st_dtype_name(dtypes[i]),
                        dtypes[i],
                        {3, 5},
                        storage[i].data(),
                        storage[i].size()});
  }
  const std::string p = path("ints.safetensors");
  write_safetensors(p, to_write);
  const Checkpoint ckpt = Checkpoint::open(p);
  for (size_t i = 0; i < std::size(dtypes); ++i) {
    const std::string key = std::string("t.") + st_dtype_name(dtypes[i]);
    const TensorRecord& rec = ckpt.at(key);
    EXPECT_EQ(rec.dtype, dtypes[i]);
    const auto span = ckpt.bytes(rec);
    ASSERT_EQ(span.size(), storage[i].size());
    EXPECT_EQ(std::memcmp(span.data(), storage[i].data(), span.size()), 0);
    EXPECT_STAVID_ERROR(read_as_float(ckpt, rec), ErrorCode::Unsupported, key, p,
                        st_dtype_name(dtypes[i]));
  }
}

TEST_F(SafetensorsTest, F8E4M3IsRecognisedButNotReadableAsFloat) {
  const Bytes data = {0x38, 0x40, 0xb8, 0x00};  // 1, 2, -1, 0 in E4M3
  const std::string p = path("fp8.safetensors");
  write_safetensors(p, {{"w.fp8", StDType::F8_E4M3, {2, 2}, data.data(), data.size()}});
  const SafetensorsFile file = SafetensorsFile::open(p);
  const TensorRecord* rec = file.find("w.fp8");
  ASSERT_NE(rec, nullptr);
  EXPECT_EQ(rec->dtype, StDType::F8_E4M3);
  EXPECT_EQ(rec->nbytes, 4u);
  EXPECT_FALSE(st_to_dtype(rec->dtype).has_value());
  const auto span = file.bytes(*rec);
  ASSERT_EQ(span.size(), 4u);
  EXPECT_EQ(std::memcmp(span.data(), data.data(), 4), 0);
  EXPECT_STAVID_ERROR(read_as_float(file, *rec), ErrorCode::Unsupported, "w.fp8", p, "F8_E4M3");
}

TEST_F(SafetensorsTest, MetadataRoundTrip) {
  const std::map<std::string, std::string> meta = {{"format", "pt"},
                                                   {"model", "stavid-video-1.3b"},
                                                   {"note", "utf-8: \xc3\xa9t\xc3\xa9"},
                                                   {"quote", "a \"quoted\" \\ value"},
                                                   {"empty", ""}};
  const std::vector<float> w = {1.f, 2.f, 3.f};
  const std::string p = path("meta.safetensors");
  write_safetensors(p, {tensor("w", StDType::F32, {3}, w)}, meta);
  const SafetensorsFile file = SafetensorsFile::open(p);
  EXPECT_EQ(file.metadata(), meta);
  EXPECT_EQ(read_as_float(file, *file.find("w")), w);

  // Metadata only, no tensors.
  const std::string p2 = path("meta_only.safetensors");
  write_safetensors(p2, {}, meta);
  const SafetensorsFile file2 = SafetensorsFile::open(p2);
  EXPECT_EQ(file2.metadata(), meta);
  EXPECT_TRUE(file2.records().empty());
}

TEST_F(SafetensorsTest, ZeroElementTensors) {
  const std::vector<float> a = {1.5f, -2.5f};
  const std::vector<uint16_t> b = {float_to_bf16(3.f)};
  const std::string p = path("empty.safetensors");
  write_safetensors(p, {{"empty0", StDType::F32, {0, 5}, nullptr, 0},
                        tensor("a", StDType::F32, {2}, a),
                        {"empty1", StDType::BF16, {3, 0}, nullptr, 0},
                        tensor("b", StDType::BF16, {1}, b),
                        {"empty2", StDType::F16, {0}, nullptr, 0}});
  const Checkpoint ckpt = Checkpoint::open(p);
  EXPECT_EQ(ckpt.size(), 5u);
  for (const char* key : {"empty0", "empty1", "empty2"}) {
    const TensorRecord& rec = ckpt.at(key);
    EXPECT_EQ(rec.numel(), 0) << key;
    EXPECT_EQ(rec.nbytes, 0u) << key;
    EXPECT_EQ(ckpt.bytes(rec).size(), 0u) << key;
    EXPECT_TRUE(read_as_float(ckpt, rec).empty()) << key;
  }
  EXPECT_EQ(ckpt.at("empty0").shape, (std::vector<int64_t>{0, 5}));
  EXPECT_EQ(read_as_float(ckpt, ckpt.at("a")), a);
  EXPECT_EQ(read_as_float(ckpt, ckpt.at("b")), std::vector<float>{3.f});
}

TEST_F(SafetensorsTest, UnalignedAndUnpaddedFilesFromOtherWriters) {
  // Header of odd length, data not aligned, a gap between tensors, tensors listed out of order.
  std::vector<float> f = {0.25f, -8.f};
  std::vector<uint16_t> h = {float_to_f16(1.5f), float_to_f16(-0.5f), float_to_f16(65504.f)};
  Bytes data(3 + 8 + 6);
  std::memcpy(data.data() + 3, f.data(), 8);
  std::memcpy(data.data() + 11, h.data(), 6);
  std::string header = R"({"h":{"dtype":"F16","shape":[3],"data_offsets":[11,17]},)"
                       R"("f":{"shape":[2],"dtype":"F32","data_offsets":[3,11],"extra":1}})";
  if (header.size() % 2 == 0) header += ' ';  // odd length: nothing after it is aligned
  ASSERT_NE(header.size() % 8, 0u);
  const std::string p = path("odd.safetensors");
  write_file(p, make_raw(header, data));
  const SafetensorsFile file = SafetensorsFile::open(p);
  ASSERT_EQ(file.records().size(), 2u);
  EXPECT_EQ(file.records()[0].name, "f");
  EXPECT_EQ(file.records()[1].name, "h");
  EXPECT_EQ(file.records()[0].offset, 8 + header.size() + 3);
  EXPECT_EQ(read_as_float(file, *file.find("f")), f);
  EXPECT_EQ(read_as_float(file, *file.find("h")), (std::vector<float>{1.5f, -0.5f, 65504.f}));
}

TEST_F(SafetensorsTest, MoveKeepsMappingAlive) {
  const std::vector<float> w = {4.f, 5.f, 6.f, 7.f};
  const std::string p = path("move.safetensors");
  write_safetensors(p, {tensor("w", StDType::F32, {2, 2}, w)});
  SafetensorsFile a = SafetensorsFile::open(p);
  SafetensorsFile b = std::move(a);
  EXPECT_EQ(read_as_float(b, *b.find("w")), w);
  SafetensorsFile c = SafetensorsFile::open(p);
  c = std::move(b);
  EXPECT_EQ(read_as_float(c, *c.find("w")), w);
  Checkpoint ck1 = Checkpoint::open(p);
  Checkpoint ck2 = std::move(ck1);
  EXPECT_EQ(read_as_float(ck2, ck2.at("w")), w);
}

TEST_F(SafetensorsTest, BytesRejectsForeignRecords) {
  const std::vector<float> w = {1.f};
  const std::string p1 = path("one.safetensors");
  const std::string p2 = path("two.safetensors");
  write_safetensors(p1, {tensor("w", StDType::F32, {1}, w)});
  write_safetensors(p2, {tensor("w", StDType::F32, {1}, w)});
  const SafetensorsFile f1 = SafetensorsFile::open(p1);
  const Checkpoint c2 = Checkpoint::open(p2);
  EXPECT_STAVID_ERROR(c2.bytes(*f1.find("w")), ErrorCode::InvalidArgument, "w", p1);
  TensorRecord forged = *f1.find("w");
  forged.nbytes = 1 << 20;
  EXPECT_STAVID_ERROR(f1.bytes(forged), ErrorCode::InvalidArgument, "w", p1);
}

// ---- writer validation --------------------------------------------------------------------------

TEST_F(SafetensorsTest, WriterRejectsBadInput) {
  const std::vector<float> w = {1.f, 2.f, 3.f, 4.f, 5.f, 6.f};
  const std::string p = path("bad.safetensors");
  EXPECT_STAVID_ERROR(write_safetensors(p, {{"w", StDType::F32, {2, 2}, w.data(), 24}}),
                      ErrorCode::InvalidArgument, "w", p, "24", "16");
  EXPECT_STAVID_ERROR(
      write_safetensors(p, {tensor("w", StDType::F32, {6}, w), tensor("w", StDType::F32, {6}, w)}),
      ErrorCode::InvalidArgument, "w", p, "twice");
  EXPECT_STAVID_ERROR(write_safetensors(p, {tensor("w", StDType::F32, {-1, -6}, w)}),
                      ErrorCode::InvalidArgument, "w", "negative");
  EXPECT_STAVID_ERROR(write_safetensors(p, {tensor("__metadata__", StDType::F32, {6}, w)}),
                      ErrorCode::InvalidArgument, "__metadata__");
  EXPECT_STAVID_ERROR(write_safetensors(p, {{"w", StDType::F32, {6}, nullptr, 24}}),
                      ErrorCode::InvalidArgument, "w", "null");
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".tmp"));

  const std::string missing_dir = path("no/such/dir/x.safetensors");
  EXPECT_STAVID_ERROR(write_safetensors(missing_dir, {tensor("w", StDType::F32, {6}, w)}),
                      ErrorCode::NotFound, missing_dir);
}

TEST_F(SafetensorsTest, WriterReplacesExistingFile) {
  const std::vector<float> a = {1.f, 2.f};
  const std::vector<float> b = {3.f};
  const std::string p = path("replace.safetensors");
  write_safetensors(p, {tensor("a", StDType::F32, {2}, a)});
  write_safetensors(p, {tensor("b", StDType::F32, {1}, b)});
  const SafetensorsFile file = SafetensorsFile::open(p);
  EXPECT_EQ(file.find("a"), nullptr);
  EXPECT_EQ(read_as_float(file, *file.find("b")), b);
}

// ---- sharded checkpoints and directories --------------------------------------------------------

class ShardedTest : public SafetensorsTest {
 protected:
  // Writes three shards of four tensors each; tensor "layers.<i>.w" holds i * 16 + j.
  void write_shards(const std::string& subdir) {
    fs::create_directories(path(subdir));
    for (int s = 0; s < 3; ++s) {
      std::vector<TensorToWrite> tensors;
      std::vector<std::vector<float>>& store = values_[s];
      store.clear();
      for (int k = 0; k < 4; ++k) {
        const int i = s * 4 + k;
        std::vector<float> v(static_cast<size_t>(i + 1));
        for (size_t j = 0; j < v.size(); ++j) v[j] = static_cast<float>(i * 16 + j);
        store.push_back(std::move(v));
      }
      for (int k = 0; k < 4; ++k) {
        const int i = s * 4 + k;
        tensors.push_back(tensor("layers." + std::to_string(i) + ".w", StDType::F32,
                                 {static_cast<int64_t>(i + 1)}, store[k]));
      }
      write_safetensors(path(subdir + "/" + shard_name(s)), tensors);
    }
  }
  static std::string shard_name(int s) {
    return "model-0000" + std::to_string(s + 1) + "-of-00003.safetensors";
  }
  // The HF index for the shards; with `skip_last_of_each`, the last tensor of every shard is left
  // out of the weight_map (but every shard is still named).
  static std::string weight_map_json(bool skip_last_of_each = false) {
    std::string j = R"({"metadata": {"total_size": 312}, "weight_map": {)";
    for (int i = 0; i < 12; ++i) {
      if (skip_last_of_each && i % 4 == 3) continue;
      if (j.back() != '{') j += ",";
      j += "\"layers." + std::to_string(i) + ".w\": \"" + shard_name(i / 4) + "\"";
    }
    return j + "}}";
  }
  void check_checkpoint(const Checkpoint& ckpt, const std::string& subdir) {
    ASSERT_EQ(ckpt.size(), 12u);
    std::vector<std::string> expected_names;
    for (int i = 0; i < 12; ++i) expected_names.push_back("layers." + std::to_string(i) + ".w");
    std::sort(expected_names.begin(), expected_names.end());
    EXPECT_EQ(ckpt.names(), expected_names);
    for (int i = 0; i < 12; ++i) {
      const TensorRecord& rec = ckpt.at("layers." + std::to_string(i) + ".w");
      EXPECT_EQ(rec.shape, std::vector<int64_t>{static_cast<int64_t>(i + 1)});
      EXPECT_EQ(fs::path(rec.file).filename().string(), shard_name(i / 4));
      EXPECT_EQ(fs::path(rec.file).parent_path().filename().string(), subdir);
      EXPECT_EQ(read_as_float(ckpt, rec), values_[i / 4][i % 4]);
    }
  }

  std::vector<std::vector<float>> values_[3];
};

TEST_F(ShardedTest, IndexFile) {
  write_shards("ckpt");
  const std::string index = path("ckpt/model.safetensors.index.json");
  write_text(index, weight_map_json());
  const Checkpoint ckpt = Checkpoint::open(index);
  EXPECT_EQ(ckpt.path(), index);
  check_checkpoint(ckpt, "ckpt");
  EXPECT_STAVID_ERROR(ckpt.at("layers.99.w"), ErrorCode::NotFound, "layers.99.w", index);
}

TEST_F(ShardedTest, DirectoryWithIndex) {
  write_shards("ckpt");
  write_text(path("ckpt/model.safetensors.index.json"), weight_map_json());
  write_text(path("ckpt/config.json"), "{}");  // other files are ignored
  const Checkpoint ckpt = Checkpoint::open(path("ckpt"));
  check_checkpoint(ckpt, "ckpt");
}

TEST_F(ShardedTest, KeysMissingFromWeightMapAreStillLoadable) {
  write_shards("ckpt");
  write_text(path("ckpt/model.safetensors.index.json"),
             weight_map_json(/*skip_last_of_each=*/true));
  const Checkpoint ckpt = Checkpoint::open(path("ckpt/model.safetensors.index.json"));
  check_checkpoint(ckpt, "ckpt");
}

TEST_F(ShardedTest, MissingShard) {
  write_shards("ckpt");
  fs::remove(path("ckpt/" + shard_name(2)));
  const std::string index = path("ckpt/model.safetensors.index.json");
  write_text(index, weight_map_json());
  EXPECT_STAVID_ERROR(Checkpoint::open(index), ErrorCode::NotFound, shard_name(2), index);
  EXPECT_STAVID_ERROR(Checkpoint::open(path("ckpt")), ErrorCode::NotFound, shard_name(2), index);
}

TEST_F(ShardedTest, KeyMissingFromShard) {
  write_shards("ckpt");
  const std::string index = path("ckpt/model.safetensors.index.json");
  std::string j = weight_map_json();
  j.insert(j.rfind("}}"), ", \"ghost.bias\": \"" + shard_name(1) + "\"");
  write_text(index, j);
  EXPECT_STAVID_ERROR(Checkpoint::open(index), ErrorCode::DataLoss, "ghost.bias", shard_name(1),
                      index);
}

TEST_F(ShardedTest, DuplicateKeyAcrossShards) {
  write_shards("ckpt");
  // Rewrite shard 3 so that it also holds layers.0.w, which shard 1 has.
  const std::vector<float> dup = {9.f};
  write_safetensors(path("ckpt/" + shard_name(2)),
                    {tensor("layers.8.w", StDType::F32, {9}, values_[2][0]),
                     tensor("layers.9.w", StDType::F32, {10}, values_[2][1]),
                     tensor("layers.10.w", StDType::F32, {11}, values_[2][2]),
                     tensor("layers.11.w", StDType::F32, {12}, values_[2][3]),
                     tensor("layers.0.w", StDType::F32, {1}, dup)});
  const std::string index = path("ckpt/model.safetensors.index.json");
  write_text(index, weight_map_json());
  EXPECT_STAVID_ERROR(Checkpoint::open(index), ErrorCode::DataLoss, "layers.0.w", shard_name(0),
                      shard_name(2), index);
}

TEST_F(ShardedTest, BadIndexFiles) {
  write_shards("ckpt");
  const std::string index = path("ckpt/model.safetensors.index.json");
  write_text(index, R"({"weight_map": {"a": "x.safetensors",)");
  EXPECT_STAVID_ERROR(Checkpoint::open(index), ErrorCode::DataLoss, index, "parse error");
  write_text(index, R"({"metadata": {}})");
  EXPECT_STAVID_ERROR(Checkpoint::open(index), ErrorCode::DataLoss, index, "weight_map");
  write_text(index, R"({"weight_map": ["a"]})");
  EXPECT_STAVID_ERROR(Checkpoint::open(index), ErrorCode::DataLoss, index, "weight_map");
  write_text(index, R"({"weight_map": {"a": 3}})");
  EXPECT_STAVID_ERROR(Checkpoint::open(index), ErrorCode::DataLoss, index, "'a'");
  write_text(index, R"([1, 2])");
  EXPECT_STAVID_ERROR(Checkpoint::open(index), ErrorCode::DataLoss, index);
  write_text(index, "");
  EXPECT_STAVID_ERROR(Checkpoint::open(index), ErrorCode::DataLoss, index);
  const std::string missing = path("ckpt/missing.safetensors.index.json");
  EXPECT_STAVID_ERROR(Checkpoint::open(missing), ErrorCode::NotFound, missing);
}

TEST_F(SafetensorsTest, DirectoryAutoDetection) {
  const std::vector<float> w = {1.f, 2.f};
  // Exactly one .safetensors file and no index: that file.
  fs::create_directories(path("single"));
  write_safetensors(path("single/model.safetensors"), {tensor("w", StDType::F32, {2}, w)});
  const Checkpoint ckpt = Checkpoint::open(path("single"));
  EXPECT_EQ(ckpt.path(), path("single/model.safetensors"));
  EXPECT_EQ(read_as_float(ckpt, ckpt.at("w")), w);

  // Two .safetensors files and no index: ambiguous, both named.
  fs::create_directories(path("two"));
  write_safetensors(path("two/a.safetensors"), {tensor("w", StDType::F32, {2}, w)});
  write_safetensors(path("two/b.safetensors"), {tensor("v", StDType::F32, {2}, w)});
  EXPECT_STAVID_ERROR(Checkpoint::open(path("two")), ErrorCode::InvalidArgument, path("two"),
                      "a.safetensors", "b.safetensors");

  // Two index files: ambiguous.
  fs::create_directories(path("two_index"));
  write_text(path("two_index/a.safetensors.index.json"), R"({"weight_map": {}})");
  write_text(path("two_index/b.safetensors.index.json"), R"({"weight_map": {}})");
  EXPECT_STAVID_ERROR(Checkpoint::open(path("two_index")), ErrorCode::InvalidArgument,
                      "a.safetensors.index.json", "b.safetensors.index.json");

  // Nothing usable.
  fs::create_directories(path("none"));
  write_text(path("none/readme.txt"), "hello");
  EXPECT_STAVID_ERROR(Checkpoint::open(path("none")), ErrorCode::NotFound, path("none"));

  // Missing path.
  EXPECT_STAVID_ERROR(Checkpoint::open(path("nowhere")), ErrorCode::NotFound, path("nowhere"));
  EXPECT_STAVID_ERROR(SafetensorsFile::open(path("nowhere.safetensors")), ErrorCode::NotFound,
                      path("nowhere.safetensors"));
  // A directory is not a safetensors file.
  EXPECT_STAVID_ERROR(SafetensorsFile::open(path("single")), ErrorCode::NotFound, path("single"));
}

// ---- corrupt files ------------------------------------------------------------------------------

TEST_F(SafetensorsTest, TooShortForLengthField) {
  for (size_t n = 0; n < 8; ++n) {
    expect_open_error("short" + std::to_string(n) + ".safetensors", Bytes(n, 0),
                      ErrorCode::DataLoss, {"truncated"});
  }
}

TEST_F(SafetensorsTest, TruncationAtEveryLength) {
  const std::vector<float> a = {1.f, 2.f, 3.f};
  const std::vector<uint16_t> b = {float_to_bf16(1.f), float_to_bf16(-2.f)};
  const std::vector<uint16_t> c = {float_to_f16(0.5f)};
  const std::string full_path = path("full.safetensors");
  write_safetensors(full_path,
                    {tensor("a", StDType::F32, {3}, a),
                     tensor("b", StDType::BF16, {2}, b),
                     {"empty", StDType::F32, {0}, nullptr, 0},
                     tensor("c", StDType::F16, {}, c)},
                    {{"k", "v"}});
  const Bytes full = read_file(full_path);
  ASSERT_GT(full.size(), 8u);
  ASSERT_NO_THROW(SafetensorsFile::open(full_path));

  const std::string p = path("cut.safetensors");
  for (size_t len = 0; len < full.size(); ++len) {
    SCOPED_TRACE("length " + std::to_string(len));
    write_file(p, Bytes(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(len)));
    // Every byte of this file is length field, header or tensor data, so every cut loses
    // something and must be reported.
    expect_error([&] { SafetensorsFile::open(p); }, ErrorCode::DataLoss, {p});
  }
}

TEST_F(SafetensorsTest, HeaderLengthLargerThanFile) {
  Bytes bytes = make_raw(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", {7});
  const uint64_t real = bytes.size() - 8;
  const uint64_t bogus = 1000;
  std::memcpy(bytes.data(), &bogus, 8);
  expect_open_error("long_header.safetensors", bytes, ErrorCode::DataLoss,
                    {"1000", std::to_string(real)});
  const uint64_t huge = ~uint64_t{0};
  std::memcpy(bytes.data(), &huge, 8);
  expect_open_error("huge_header.safetensors", bytes, ErrorCode::DataLoss, {std::to_string(huge)});
}

TEST_F(SafetensorsTest, HeaderLengthAbsurd) {
  // A sparse 300 MiB file whose length field claims a 257 MiB header: inside the file, but over
  // the limit, so it is rejected before anything is parsed.
  const std::string p = path("absurd.safetensors");
  const uint64_t claimed = uint64_t{257} << 20;
  Bytes prefix(8);
  std::memcpy(prefix.data(), &claimed, 8);
  write_file(p, prefix);
  ASSERT_EQ(::truncate(p.c_str(), 300 << 20), 0);
  expect_error([&] { SafetensorsFile::open(p); }, ErrorCode::DataLoss,
               {p, std::to_string(claimed), "limit"});
}

TEST_F(SafetensorsTest, BadJson) {
  expect_open_error("bad_json.safetensors", make_raw("{\"a\": {\"dtype\": ", {}),
                    ErrorCode::DataLoss, {"parse error"});
  expect_open_error("empty_header.safetensors", make_raw("", {}), ErrorCode::DataLoss, {"JSON"});
  expect_open_error("nul_header.safetensors", make_raw(std::string(16, '\0'), {}),
                    ErrorCode::DataLoss, {"JSON"});
  expect_open_error("bad_utf8.safetensors", make_raw("{\"\xff\xfe\": 1}", {}), ErrorCode::DataLoss,
                    {"JSON"});
  expect_open_error("deep.safetensors",
                    make_raw(std::string(100000, '[') + std::string(100000, ']'), {}),
                    ErrorCode::DataLoss, {"deep"});
  expect_open_error("dup_key.safetensors",
                    make_raw(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                             R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                             {1, 2}),
                    ErrorCode::DataLoss, {"'a'", "twice"});
}

TEST_F(SafetensorsTest, HeaderNotAnObject) {
  expect_open_error("array.safetensors", make_raw("[1, 2, 3]", {}), ErrorCode::DataLoss,
                    {"object"});
  expect_open_error("string.safetensors", make_raw("\"hello\"", {}), ErrorCode::DataLoss,
                    {"object"});
  expect_open_error("entry_number.safetensors", make_raw(R"({"w.key": 5})", {}),
                    ErrorCode::DataLoss, {"w.key", "object"});
}

TEST_F(SafetensorsTest, MissingOrWronglyTypedFields) {
  const Bytes data = iota_bytes(16);
  struct Case {
    const char* name;
    std::string entry;
    std::string needle;
  };
  const Case cases[] = {
      {"no_dtype", R"({"shape":[4],"data_offsets":[0,16]})", "dtype"},
      {"dtype_number", R"({"dtype":4,"shape":[4],"data_offsets":[0,16]})", "dtype"},
      {"no_shape", R"({"dtype":"F32","data_offsets":[0,16]})", "shape"},
      {"shape_object", R"({"dtype":"F32","shape":{"a":4},"data_offsets":[0,16]})", "shape"},
      {"shape_string", R"({"dtype":"F32","shape":["4"],"data_offsets":[0,16]})", "shape"},
      {"shape_float", R"({"dtype":"F32","shape":[4.0],"data_offsets":[0,16]})", "shape"},
      {"shape_huge", R"({"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,16]})",
       "too large"},
      {"negative_dim", R"({"dtype":"F32","shape":[-4],"data_offsets":[0,16]})", "negative"},
      {"negative_dim2", R"({"dtype":"F32","shape":[-2,-2],"data_offsets":[0,16]})", "negative"},
      {"no_offsets", R"({"dtype":"F32","shape":[4]})", "data_offsets"},
      {"offsets_one", R"({"dtype":"F32","shape":[4],"data_offsets":[16]})", "data_offsets"},
      {"offsets_three", R"({"dtype":"F32","shape":[4],"data_offsets":[0,8,16]})", "data_offsets"},
      {"offsets_string", R"({"dtype":"F32","shape":[4],"data_offsets":["0","16"]})",
       "data_offsets"},
      {"offsets_negative", R"({"dtype":"F32","shape":[4],"data_offsets":[-16,0]})", "data_offsets"},
      {"offsets_float", R"({"dtype":"F32","shape":[4],"data_offsets":[0,16.0]})", "data_offsets"},
      {"offsets_reversed", R"({"dtype":"F32","shape":[0],"data_offsets":[16,0]})", "data_offsets"},
      {"unknown_dtype", R"({"dtype":"Q7","shape":[4],"data_offsets":[0,16]})",
       "unknown dtype 'Q7'"},
      {"lowercase_dtype", R"({"dtype":"f32","shape":[4],"data_offsets":[0,16]})",
       "unknown dtype 'f32'"},
      {"size_mismatch", R"({"dtype":"F32","shape":[2,3],"data_offsets":[0,16]})", "24"},
      {"size_mismatch_small", R"({"dtype":"F32","shape":[2],"data_offsets":[0,16]})", "16"},
      {"out_of_range", R"({"dtype":"F32","shape":[5],"data_offsets":[0,20]})", "16 bytes"},
      {"out_of_range_far",
       R"({"dtype":"U8","shape":[1],"data_offsets":[18446744073709551614,18446744073709551615]})",
       "truncated"},
      {"numel_overflow",
       R"({"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,16]})", "overflow"},
      {"bytes_overflow", R"({"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,16]})",
       "overflow"},
  };
  for (const Case& c : cases) {
    const std::string header = R"({"blocks.0.attn.qkv.weight":)" + c.entry + "}";
    expect_open_error(std::string(c.name) + ".safetensors", make_raw(header, data),
                      ErrorCode::DataLoss, {"blocks.0.attn.qkv.weight", c.needle});
  }
}

TEST_F(SafetensorsTest, SizeMismatchGivesBothNumbers) {
  expect_open_error(
      "mismatch.safetensors",
      make_raw(R"({"w":{"dtype":"BF16","shape":[3,5],"data_offsets":[0,32]}})", iota_bytes(32)),
      ErrorCode::DataLoss, {"'w'", "30", "32"});
}

TEST_F(SafetensorsTest, OverlappingTensors) {
  expect_open_error("overlap.safetensors",
                    make_raw(R"({"first":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                             R"("second":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                             iota_bytes(24)),
                    ErrorCode::DataLoss, {"first", "second", "overlap"});
  // Identical ranges.
  expect_open_error("same_range.safetensors",
                    make_raw(R"({"x":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                             R"("y":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})",
                             iota_bytes(4)),
                    ErrorCode::DataLoss, {"'x'", "'y'", "overlap"});
  // A tensor nested inside a longer one, with a third in between in offset order.
  expect_open_error("nested.safetensors",
                    make_raw(R"({"big":{"dtype":"U8","shape":[32],"data_offsets":[0,32]},)"
                             R"("mid":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},)"
                             R"("tail":{"dtype":"U8","shape":[4],"data_offsets":[32,36]}})",
                             iota_bytes(36)),
                    ErrorCode::DataLoss, {"big", "mid"});
  // Empty tensors occupy no bytes, so they overlap nothing; touching ranges are fine too.
  const std::string p = path("touching.safetensors");
  write_file(p, make_raw(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                         R"("e":{"dtype":"F32","shape":[0],"data_offsets":[2,2]},)"
                         R"("b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
                         iota_bytes(8)));
  const SafetensorsFile file = SafetensorsFile::open(p);
  EXPECT_EQ(file.records().size(), 3u);
}

TEST_F(SafetensorsTest, BadMetadata) {
  expect_open_error("meta_array.safetensors", make_raw(R"({"__metadata__": ["a"]})", {}),
                    ErrorCode::DataLoss, {"__metadata__"});
  expect_open_error("meta_number.safetensors", make_raw(R"({"__metadata__": {"epoch": 3}})", {}),
                    ErrorCode::DataLoss, {"__metadata__", "epoch"});
}

// ---- robustness ---------------------------------------------------------------------------------

TEST_F(SafetensorsTest, RandomHeaderCorruptionNeverCrashes) {
  const std::vector<float> a = {1.f, 2.f, 3.f, 4.f, 5.f, 6.f};
  const std::vector<uint16_t> b = {float_to_bf16(1.f), float_to_bf16(2.f), float_to_bf16(3.f)};
  const std::vector<uint16_t> c = {float_to_f16(1.f), float_to_f16(2.f)};
  const std::vector<int32_t> d = {7, 8, 9, 10};
  const std::string src = path("valid.safetensors");
  write_safetensors(
      src,
      {tensor("model.a", StDType::F32, {2, 3}, a), tensor("model.b", StDType::BF16, {3}, b),
       tensor("model.c", StDType::F16, {2}, c), tensor("model.d", StDType::I32, {2, 2}, d)},
      {{"format", "pt"}});
  const Bytes valid = read_file(src);
  uint64_t header_len = 0;
  std::memcpy(&header_len, valid.data(), 8);
  const size_t header_end = 8 + static_cast<size_t>(header_len);

  std::mt19937 rng(20240611);
  std::uniform_int_distribution<size_t> pos_dist(0, header_end - 1);
  std::uniform_int_distribution<int> byte_dist(0, 255);
  const std::string p = path("corrupt.safetensors");
  int opened = 0;
  int rejected = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    Bytes bytes = valid;
    const size_t pos = pos_dist(rng);
    uint8_t value = static_cast<uint8_t>(byte_dist(rng));
    if (value == bytes[pos]) value ^= 0x5a;
    bytes[pos] = value;
    write_file(p, bytes);
    try {
      const SafetensorsFile file = SafetensorsFile::open(p);
      ++opened;
      // Whatever survived validation must be readable within bounds.
      for (const TensorRecord& rec : file.records()) {
        const auto span = file.bytes(rec);
        ASSERT_LE(rec.offset + span.size(), bytes.size());
        if (st_to_dtype(rec.dtype).has_value() || rec.dtype == StDType::F64) {
          EXPECT_EQ(read_as_float(file, rec).size(), static_cast<size_t>(rec.numel()));
        }
      }
      const Checkpoint ckpt = Checkpoint::open(p);
      EXPECT_EQ(ckpt.size(), file.records().size());
    } catch (const Error& e) {
      ++rejected;
      EXPECT_NE(e.message().find(p), std::string::npos) << e.message();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "iteration " << iter << " (byte " << pos << " = " << int{value}
                    << "): non-stavid exception: " << e.what();
    }
  }
  EXPECT_EQ(opened + rejected, 2000);
  EXPECT_GT(rejected, 0);
  EXPECT_GT(opened, 0);  // e.g. corrupted padding spaces or metadata text still parse
}

}  // namespace
}  // namespace stavid
