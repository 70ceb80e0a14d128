// Tokenizer tests: golden ids from outside this code base, and load-time errors.
//   llama3/     ids from the npm package llama3-tokenizer-js for the corpus (golden.json); the vocabulary
//               itself (Meta's license) is built into the build tree by tools/tokenizer/fetch_llama3.sh
//               llama3-tokenizer-js 1.2.0 on 280 strings
//   small_bpe/  a 300-merge byte-level BPE (Llama-3 pre-tokenizer, ignore_merges false, BOS+EOS template)
//   clip_tiny/  a 300-merge CLIP-style BPE (NFC, whitespace collapse, lower case, "</w>", 77-token padding)
// The small fixtures' ids come from tools/tokenizer/reference_bpe.mjs; tools/tokenizer/regen.sh rebuilds all.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kernels/core/error.h"
#include "model/text/tokenizer.h"

namespace stavid::text {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

#define STAVID_REQUIRE_PCRE2()                                                                     \
  do {                                                                                             \
    if (!tokenizer_supported()) GTEST_SKIP() << "built without PCRE2: tokenizers are unsupported"; \
  } while (0)

const std::string kDataDir = std::string(STAVID_TEST_DATA_DIR) + "/tokenizer";

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json read_json(const fs::path& path) {
  const std::string text = read_text(path);
  EXPECT_FALSE(text.empty()) << "missing fixture " << path;
  return json::parse(text);
}

// xz -dc of a fixture; empty when xz is not installed.
std::string read_xz(const fs::path& path) {
  if (std::system("command -v xz > /dev/null 2>&1") != 0) return std::string();
  const std::string cmd = "xz -dc '" + path.string() + "'";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return std::string();
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  return pclose(pipe) == 0 ? out : std::string();
}

std::string escaped(const std::string& s) {
  return json(s).dump();
}

std::string ids_str(const std::vector<int32_t>& ids) {
  return json(ids).dump();
}

std::vector<int32_t> ids_of(const json& j) {
  return j.get<std::vector<int32_t>>();
}

// A fresh temporary directory, removed at scope exit.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("stavid_tokenizer_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path write(const std::string& name, const std::string& text) const {
    const fs::path p = path_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }

 private:
  fs::path path_;
};

// Compares every golden case: ids without and with specials, and decode(encode(x)) when `round_trip`.
// Returns the number of cases checked.
size_t check_golden(const BpeTokenizer& tok, const json& golden, bool round_trip) {
  size_t n = 0, bad = 0;
  for (const json& c : golden["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const std::vector<int32_t> want = ids_of(c["ids"]);
    const std::vector<int32_t> got = tok.encode(text, /*add_special=*/false);
    const std::vector<int32_t> got_special = tok.encode(text, /*add_special=*/true);
    const bool ok = got == want && got_special == ids_of(c["ids_special"]);
    EXPECT_TRUE(ok) << "text " << escaped(text) << "\n  want " << ids_str(want) << "\n  got  " << ids_str(got);
    if (round_trip) {
      EXPECT_EQ(tok.decode(got), text) << "round trip of " << escaped(text);
    }
    bad += ok ? 0 : 1;
    ++n;
    if (bad > 10) break;  // enough to diagnose
  }
  return n;
}

// ---------------------------------------------------------------------------------------------------------
// The real Llama-3 tokenizer against llama3-tokenizer-js

class Llama3Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!tokenizer_supported()) return;
    const std::string text = read_xz(std::string(STAVID_LLAMA3_TOKENIZER_DIR) + "/tokenizer.json.xz");
    if (text.empty()) return;
    tok_ = new BpeTokenizer(BpeTokenizer::from_json(text, "llama3/tokenizer.json"));
    golden_ = new json(read_json(kDataDir + "/llama3/golden.json"));
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete golden_;
    tok_ = nullptr;
    golden_ = nullptr;
  }
  void SetUp() override {
    STAVID_REQUIRE_PCRE2();
    if (tok_ == nullptr) {
      GTEST_SKIP() << "no " << STAVID_LLAMA3_TOKENIZER_DIR << "/tokenizer.json.xz: the Llama-3 vocabulary is not "
                   << "committed; tools/tokenizer/fetch_llama3.sh builds it from npm (make test runs it)";
    }
  }
  static BpeTokenizer* tok_;
  static json* golden_;
};
BpeTokenizer* Llama3Test::tok_ = nullptr;
json* Llama3Test::golden_ = nullptr;

TEST_F(Llama3Test, VocabularyAndSpecialTokens) {
  const BpeTokenizer& tok = *tok_;
  EXPECT_EQ(tok.vocab_size(), 128256u);
  EXPECT_EQ(tok.bos_id(), 128000);
  EXPECT_EQ(tok.eos_id(), kNoToken);  // the template adds only BOS; tokenizer_config.json names EOS
  EXPECT_EQ(tok.token_to_id("<|begin_of_text|>"), 128000);
  EXPECT_EQ(tok.token_to_id("<|end_of_text|>"), 128001);
  EXPECT_EQ(tok.token_to_id("<|start_header_id|>"), 128006);
  EXPECT_EQ(tok.token_to_id("<|end_header_id|>"), 128007);
  EXPECT_EQ(tok.token_to_id("<|eot_id|>"), 128009);
  EXPECT_EQ(tok.token_to_id("Hello"), 9906);
  EXPECT_EQ(tok.token_to_id("\xC4\xA0world"), 1917);  // "Ġworld"
  EXPECT_EQ(tok.token_to_id("no such token"), kNoToken);
  EXPECT_EQ(tok.id_to_token(128009), "<|eot_id|>");
  EXPECT_TRUE(tok.is_special(128009));
  EXPECT_FALSE(tok.is_special(9906));
  EXPECT_EQ(tok.prefix_ids(), std::vector<int32_t>{128000});
  EXPECT_TRUE(tok.suffix_ids().empty());
  EXPECT_EQ(tok.encode("Hello world!"), (std::vector<int32_t>{128000, 9906, 1917, 0}));
}

TEST_F(Llama3Test, MatchesLlama3TokenizerJs) {
  const size_t n = check_golden(*tok_, *golden_, /*round_trip=*/true);
  EXPECT_GE(n, 200u);
}

TEST_F(Llama3Test, HunyuanVideoTemplate) {
  const std::string tmpl = (*golden_)["template"].get<std::string>();
  const std::string prefix = tmpl.substr(0, tmpl.find("{}"));
  // crop_start: the template's tokens before the prompt, BOS included.
  EXPECT_EQ(tok_->encode(prefix).size(), 95u);
  EXPECT_EQ((*golden_)["template_prefix_tokens"].get<size_t>(), 95u);

  // Tokenize template.format(prompt) to 256 + 95 tokens, right-padded.
  std::string text = tmpl;
  text.replace(text.find("{}"), 2, "A cat walks on the grass, realistic style.");
  const std::vector<int32_t> ids = tok_->encode(text);
  const PaddedIds p = tok_->encode_padded(text, 351, /*pad_id=*/128001);
  ASSERT_EQ(p.ids.size(), 351u);
  ASSERT_EQ(p.mask.size(), 351u);
  EXPECT_EQ(p.length, ids.size());
  EXPECT_TRUE(std::equal(ids.begin(), ids.end(), p.ids.begin()));
  EXPECT_EQ(p.ids[p.length - 1], 128009);  // <|eot_id|> ends the valid tokens
  for (size_t i = 0; i < 351; ++i) {
    EXPECT_EQ(p.mask[i], i < p.length ? 1 : 0);
    if (i >= p.length) {
      EXPECT_EQ(p.ids[i], 128001);
    }
  }

  // Truncation keeps BOS and cuts the text.
  std::string long_prompt;
  for (int i = 0; i < 400; ++i) long_prompt += " word";
  const PaddedIds t = tok_->encode_padded(long_prompt, 351, 128001);
  EXPECT_EQ(t.length, 351u);
  EXPECT_EQ(t.ids[0], 128000);
  EXPECT_EQ(t.ids[1], tok_->token_to_id("\xC4\xA0word"));
  EXPECT_THROW(tok_->encode_padded(long_prompt, 351), Error);  // no pad token in the file
}

TEST_F(Llama3Test, CacheOffAndThreadsGiveTheSameIds) {
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> want;
  for (const json& c : (*golden_)["cases"]) {
    texts.push_back(c["text"].get<std::string>());
    want.push_back(ids_of(c["ids"]));
  }
  std::atomic<int> mismatches{0};
  auto worker = [&](size_t start) {
    for (size_t k = 0; k < texts.size(); ++k) {
      const size_t i = (start + k) % texts.size();
      if (tok_->encode(texts[i], false) != want[i]) ++mismatches;
    }
  };
  std::thread a(worker, 0), b(worker, texts.size() / 2);
  a.join();
  b.join();
  EXPECT_EQ(mismatches.load(), 0);

  BpeTokenizer copy = *tok_;  // shares the cache
  copy.set_cache_capacity(0);
  for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(copy.encode(texts[i], false), want[i]);
  copy.set_cache_capacity(16384);
}

TEST_F(Llama3Test, SkipSpecialAndBadInput) {
  const std::vector<int32_t> ids = tok_->encode("Hi<|eot_id|>");
  EXPECT_EQ(tok_->decode(ids), "<|begin_of_text|>Hi<|eot_id|>");
  EXPECT_EQ(tok_->decode(ids, /*skip_special=*/true), "Hi");
  // A token that is half of a UTF-8 sequence decodes to U+FFFD.
  const std::vector<int32_t> emoji = tok_->encode("\xF0\x9F\x98\x80", false);
  ASSERT_GE(emoji.size(), 2u);
  EXPECT_EQ(tok_->decode({emoji[0]}), "\xEF\xBF\xBD");
  try {
    tok_->encode("bad \xFF byte");
    ADD_FAILURE() << "invalid UTF-8 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
  }
  try {
    tok_->decode({200000});
    ADD_FAILURE() << "unknown id accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
  }
  EXPECT_TRUE(tok_->encode("", false).empty());
  EXPECT_EQ(tok_->encode(""), std::vector<int32_t>{128000});
}

// ---------------------------------------------------------------------------------------------------------
// Small trained fixtures against the independent JavaScript implementation

TEST(SmallBpe, MatchesReferenceImplementation) {
  STAVID_REQUIRE_PCRE2();
  const BpeTokenizer tok = BpeTokenizer::from_file(kDataDir + "/small_bpe/tokenizer.json");
  const json golden = read_json(kDataDir + "/small_bpe/golden.json");
  EXPECT_EQ(tok.bos_id(), golden["bos"].get<int32_t>());
  EXPECT_EQ(tok.eos_id(), golden["eos"].get<int32_t>());
  EXPECT_EQ(tok.pad_id(), golden["pad"].get<int32_t>());  // from the "padding" section
  EXPECT_EQ(tok.vocab_size(), 556u + 4u);
  EXPECT_GE(check_golden(tok, golden, /*round_trip=*/true), 200u);

  // <extra> is an added token that is not special: skip_special keeps it.
  const std::vector<int32_t> ids = tok.encode("x<extra>y");
  EXPECT_EQ(tok.decode(ids, /*skip_special=*/true), "x<extra>y");
  EXPECT_EQ(tok.decode(ids), "<|bos|>x<extra>y<|eos|>");
  const PaddedIds p = tok.encode_padded("hello world", 8);
  EXPECT_EQ(p.ids.back(), tok.pad_id());
  EXPECT_EQ(p.ids[p.length - 1], tok.eos_id());
}

TEST(SmallBpe, FromDirectoryWithTokenizerConfig) {
  STAVID_REQUIRE_PCRE2();
  TempDir dir;
  dir.write("tokenizer.json", read_text(kDataDir + "/small_bpe/tokenizer.json"));
  dir.write("tokenizer_config.json",
            R"({"bos_token": {"content": "<|bos|>", "special": true}, "eos_token": "<extra>", "pad_token": null})");
  const BpeTokenizer tok = BpeTokenizer::from_file(dir.path().string());
  EXPECT_EQ(tok.bos_id(), tok.token_to_id("<|bos|>"));
  EXPECT_EQ(tok.eos_id(), tok.token_to_id("<extra>"));
  EXPECT_EQ(tok.pad_id(), tok.token_to_id("<|pad|>"));  // null leaves the file's pad
  EXPECT_EQ(tok.source(), (dir.path() / "tokenizer.json").string());
}

TEST(ClipTiny, MatchesReferenceImplementation) {
  STAVID_REQUIRE_PCRE2();
  const BpeTokenizer tok = BpeTokenizer::from_file(kDataDir + "/clip_tiny/tokenizer.json");
  const json golden = read_json(kDataDir + "/clip_tiny/golden.json");
  EXPECT_EQ(tok.bos_id(), golden["bos"].get<int32_t>());
  EXPECT_EQ(tok.eos_id(), golden["eos"].get<int32_t>());
  EXPECT_EQ(tok.pad_id(), kNoToken);
  EXPECT_EQ(tok.special_ids().unk, tok.eos_id());
  EXPECT_GE(check_golden(tok, golden, /*round_trip=*/false), 100u);

  for (const json& c : golden["padded"]) {
    const std::string text = c["text"].get<std::string>();
    const PaddedIds p = tok.encode_padded(text, c["max_len"].get<size_t>(), c["pad_id"].get<int32_t>());
    EXPECT_EQ(p.ids, ids_of(c["ids"])) << escaped(text) << " max_len " << c["max_len"];
    EXPECT_EQ(p.mask, ids_of(c["mask"])) << escaped(text) << " max_len " << c["max_len"];
  }
  EXPECT_THROW(tok.encode_padded("a", 1, 0), Error);  // cannot hold BOS + EOS
  EXPECT_THROW(tok.encode_padded("a", 77), Error);    // no pad token in the file
}

TEST(ClipTiny, DecodeJoinsWords) {
  STAVID_REQUIRE_PCRE2();
  const BpeTokenizer tok = BpeTokenizer::from_file(kDataDir + "/clip_tiny/tokenizer.json");
  EXPECT_EQ(tok.decode(tok.encode("A  Cat walks\ton the GRASS", false)), "a cat walks on the grass");
  EXPECT_EQ(tok.decode(tok.encode("Photo of a dog"), /*skip_special=*/true), "photo of a dog");
  EXPECT_EQ(tok.encode("Cafe\xCC\x81"), tok.encode("caf\xC3\xA9"));  // NFD input composes
}

// ---------------------------------------------------------------------------------------------------------
// Pipeline pieces on hand-written tokenizers

// A byte-level BPE over all 256 bytes with no merges: decode(encode(x)) shows what the normalizer made of x.
std::string byte_vocab_json(const std::string& normalizer) {
  json vocab = json::object();
  // The 256 byte symbols of GPT-2's mapping, in byte order.
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    vocab[s] = b;
  }
  json j = {{"normalizer", json::parse(normalizer)},
            {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}},
            {"decoder", {{"type", "ByteLevel"}}},
            {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}}};
  return j.dump();
}

TEST(Normalizer, NfcAndLowercase) {
  STAVID_REQUIRE_PCRE2();
  const BpeTokenizer tok = BpeTokenizer::from_json(
      byte_vocab_json(R"({"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]})"));
  const auto norm = [&](const std::string& s) { return tok.decode(tok.encode(s)); };
  EXPECT_EQ(norm("Cafe\xCC\x81"), "caf\xC3\xA9");                           // e + U+0301 -> é
  EXPECT_EQ(norm("A\xCC\x8Angstro\xCC\x88m"), "\xC3\xA5ngstr\xC3\xB6m");    // Å, ö
  EXPECT_EQ(norm("a\xCC\xA3\xCC\x82"), "\xE1\xBA\xAD");                     // a + dot below + circumflex -> ậ
  EXPECT_EQ(norm("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");  // Hangul jamo -> 각
  // ΟΔΟΣ Σ: Final_Sigma at the end of a word only.
  EXPECT_EQ(norm("\xCE\x9F\xCE\x94\xCE\x9F\xCE\xA3 \xCE\xA3"), "\xCE\xBF\xCE\xB4\xCE\xBF\xCF\x82 \xCF\x83");
  EXPECT_EQ(norm("\xC4\xB0"), "i\xCC\x87");  // İ -> i + U+0307
  EXPECT_EQ(norm("\xD0\x9F\xD0\xA0\xD0\x98\xD0\x92\xD0\x95\xD0\xA2"),
            "\xD0\xBF\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82");              // ПРИВЕТ
  EXPECT_EQ(norm("\xE2\x85\xAB \xEF\xBC\xA1"), "\xE2\x85\xBB \xEF\xBD\x81");  // Ⅻ Ａ -> ⅻ ａ
  EXPECT_EQ(norm("Stra\xC3\x9F"
                 "E"),
            "stra\xC3\x9F"
            "e");
}

TEST(Normalizer, StripReplacePrepend) {
  STAVID_REQUIRE_PCRE2();
  const BpeTokenizer tok = BpeTokenizer::from_json(byte_vocab_json(R"({"type": "Sequence", "normalizers": [
      {"type": "Strip", "strip_left": true, "strip_right": true},
      {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
      {"type": "Replace", "pattern": {"String": "."}, "content": "!"},
      {"type": "Prepend", "prepend": "> "}]})"));
  EXPECT_EQ(tok.decode(tok.encode(" \t a \n\n b. \u3000")), "> a b!");
  EXPECT_TRUE(tok.encode("   ").empty());
}

// Vocabulary a, b, c, -, space and merges that make each split behaviour visible.
std::string split_json(const std::string& behavior, bool invert) {
  json vocab = {{"a", 0}, {"b", 1}, {"c", 2}, {"-", 3}, {" ", 4}, {"a-", 5}, {"-b", 6}, {"--", 7}, {"ab", 8}};
  json j = {{"pre_tokenizer",
             {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}}},
            {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({"a -", "- b", "- -", "a b"})}}}};
  return j.dump();
}

TEST(PreTokenizer, SplitBehaviors) {
  STAVID_REQUIRE_PCRE2();
  const auto enc = [](const std::string& behavior, const std::string& text, bool invert = false) {
    return BpeTokenizer::from_json(split_json(behavior, invert)).encode(text);
  };
  using V = std::vector<int32_t>;
  EXPECT_EQ(enc("Isolated", "a-b"), (V{0, 3, 1}));
  EXPECT_EQ(enc("Removed", "a-b"), (V{0, 1}));
  EXPECT_EQ(enc("MergedWithPrevious", "a-b"), (V{5, 1}));
  EXPECT_EQ(enc("MergedWithNext", "a-b"), (V{0, 6}));
  EXPECT_EQ(enc("Contiguous", "a--b"), (V{0, 7, 1}));
  EXPECT_EQ(enc("Isolated", "a--b"), (V{0, 3, 3, 1}));
  EXPECT_EQ(enc("Removed", "ab-c", /*invert=*/true), (V{3}));  // keeps only the matches
  EXPECT_EQ(enc("Isolated", "ab"), (V{8}));
}

TEST(Bpe, IgnoreMergesEmitsWholeVocabularyWords) {
  STAVID_REQUIRE_PCRE2();
  // "abc" is in the vocabulary, but the merges reach only a + bc.
  const auto make = [](bool ignore_merges) {
    json j = {{"model",
               {{"type", "BPE"},
                {"ignore_merges", ignore_merges},
                {"vocab", {{"a", 0}, {"b", 1}, {"c", 2}, {"bc", 3}, {"ab", 4}, {"abc", 5}}},
                {"merges", json::array({json::array({"b", "c"}), json::array({"a", "b"})})}}}};
    return BpeTokenizer::from_json(j.dump());
  };
  EXPECT_EQ(make(false).encode("abc"), (std::vector<int32_t>{0, 3}));
  EXPECT_EQ(make(true).encode("abc"), (std::vector<int32_t>{5}));
  EXPECT_EQ(make(true).encode("ab"), (std::vector<int32_t>{4}));
  // Equal ranks merge left first: "bcbc" -> bc, bc.
  EXPECT_EQ(make(false).encode("bcbc"), (std::vector<int32_t>{3, 3}));
}

TEST(Bpe, UnknownCharactersAndSuffix) {
  STAVID_REQUIRE_PCRE2();
  json j = {{"model",
             {{"type", "BPE"},
              {"unk_token", "<unk>"},
              {"end_of_word_suffix", "</w>"},
              {"vocab", {{"<unk>", 0}, {"a", 1}, {"b</w>", 2}, {"ab</w>", 3}, {"a</w>", 4}}},
              {"merges", json::array({"a b</w>"})}}}};
  const BpeTokenizer tok = BpeTokenizer::from_json(j.dump());
  EXPECT_EQ(tok.encode("ab"), (std::vector<int32_t>{3}));
  EXPECT_EQ(tok.encode("a"), (std::vector<int32_t>{4}));
  EXPECT_EQ(tok.encode("xxab"), (std::vector<int32_t>{0, 0, 3}));  // fuse_unk false: one <unk> a character
  j["model"]["fuse_unk"] = true;
  EXPECT_EQ(BpeTokenizer::from_json(j.dump()).encode("xxab"), (std::vector<int32_t>{0, 3}));
  EXPECT_EQ(tok.decode({1, 2}), "ab");  // no decoder: the suffix becomes a space, then trimmed
}

TEST(AddedTokens, StripFlagsAndLongestMatch) {
  STAVID_REQUIRE_PCRE2();
  json j = {{"added_tokens", json::array({{{"id", 10},
                                           {"content", "<m>"},
                                           {"special", true},
                                           {"lstrip", true},
                                           {"rstrip", true},
                                           {"normalized", false}},
                                          {{"id", 11}, {"content", "<m><m>"}, {"special", true}, {"normalized", false}},
                                          {{"id", 12}, {"content", "X"}, {"special", false}, {"normalized", true}}})},
            {"normalizer", {{"type", "Lowercase"}}},
            {"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {" ", 2}}}, {"merges", json::array()}}}};
  const BpeTokenizer tok = BpeTokenizer::from_json(j.dump());
  using V = std::vector<int32_t>;
  EXPECT_EQ(tok.encode("a <m> b"), (V{0, 10, 1}));   // the spaces around <m> go with it
  EXPECT_EQ(tok.encode("a<m><m>b"), (V{0, 11, 1}));  // longest match first
  EXPECT_EQ(tok.encode("bX"), (V{1, 12}));           // the text and the added token "X" both normalize to "x"
  EXPECT_EQ(tok.encode("bx"), (V{1, 12}));
  EXPECT_EQ(tok.token_to_id("<m>"), 10);
}

// ---------------------------------------------------------------------------------------------------------
// Load-time errors: each names the file

void expect_error(ErrorCode code, const std::string& must_mention, const std::function<void()>& f) {
  try {
    f();
    ADD_FAILURE() << "no error; expected " << error_code_name(code);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(e.message().find(must_mention), std::string::npos) << "'" << must_mention << "' not in: " << e.what();
  }
}

TEST(LoadErrors, MissingFile) {
  const std::string path = "/nonexistent/dir/tokenizer.json";
  expect_error(ErrorCode::NotFound, path, [&] { BpeTokenizer::from_file(path); });
}

TEST(LoadErrors, MalformedFiles) {
  STAVID_REQUIRE_PCRE2();
  TempDir dir;
  const auto load = [&](const std::string& name, const std::string& text) {
    const std::string path = dir.write(name, text).string();
    return [path] { BpeTokenizer::from_file(path); };
  };
  const std::string ok_model = R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";
  EXPECT_NO_THROW(load("ok.json", "{" + ok_model + "}")());

  expect_error(ErrorCode::DataLoss, "bad.json", load("bad.json", "{\"model\": {\"type\": \"BPE\", "));
  expect_error(ErrorCode::DataLoss, "empty.json", load("empty.json", ""));
  expect_error(ErrorCode::DataLoss, "array.json", load("array.json", "[1, 2]"));
  expect_error(ErrorCode::DataLoss, "no_model.json", load("no_model.json", "{\"version\": \"1.0\"}"));
  expect_error(ErrorCode::Unsupported, "wordpiece.json",
               load("wordpiece.json", R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})"));
  expect_error(ErrorCode::DataLoss, "no_vocab.json",
               load("no_vocab.json", R"({"model": {"type": "BPE", "merges": []}})"));
  expect_error(ErrorCode::DataLoss, "no_merges.json",
               load("no_merges.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}}})"));
  expect_error(ErrorCode::DataLoss, "'zz'",
               load("unknown_merge.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a zz"]}})"));
  expect_error(ErrorCode::DataLoss, "unknown_merge2.json",
               load("unknown_merge2.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a zz"]}})"));
  expect_error(ErrorCode::DataLoss, "'aa'",  // the merged token is missing
               load("no_result.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a", "a"]]}})"));
  expect_error(ErrorCode::DataLoss, "bad_merge.json",
               load("bad_merge.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a a a"]}})"));
  expect_error(ErrorCode::DataLoss, "bad_id.json",
               load("bad_id.json", R"({"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}})"));
  expect_error(ErrorCode::Unsupported, "nfkc.json",
               load("nfkc.json", "{\"normalizer\": {\"type\": \"NFKC\"}, " + ok_model + "}"));
  expect_error(ErrorCode::Unsupported, "metaspace.json",
               load("metaspace.json", "{\"pre_tokenizer\": {\"type\": \"Metaspace\"}, " + ok_model + "}"));
  expect_error(ErrorCode::DataLoss, "regex.json",
               load("regex.json",
                    "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(unclosed\"}, "
                    "\"behavior\": \"Isolated\"}, " +
                        ok_model + "}"));
  expect_error(ErrorCode::DataLoss, "template.json",
               load("template.json",
                    "{\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": "
                    "[{\"SpecialToken\": {\"id\": \"<s>\"}}], \"special_tokens\": {}}, " +
                        ok_model + "}"));
  expect_error(
      ErrorCode::DataLoss, "unk.json",
      load("unk.json", R"({"model": {"type": "BPE", "unk_token": "<unk>", "vocab": {"a": 0}, "merges": []}})"));
}

TEST(LoadErrors, BadTokenizerConfig) {
  STAVID_REQUIRE_PCRE2();
  TempDir dir;
  dir.write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})");
  const std::string config = dir.write("tokenizer_config.json", "{oops").string();
  expect_error(ErrorCode::DataLoss, config, [&] { BpeTokenizer::from_file(dir.path().string()); });
  dir.write("tokenizer_config.json", R"({"eos_token": "</s>"})");
  expect_error(ErrorCode::DataLoss, "</s>", [&] { BpeTokenizer::from_file(dir.path().string()); });
}

}  // namespace
}  // namespace stavid::text
