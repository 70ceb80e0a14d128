// Byte-level BPE tokenizers read from a HuggingFace tokenizer.json: the Llama-3 tokenizer of HunyuanVideo's
// LLaVA-Llama-3 text encoder and CLIP-L's tokenizer (shared/spec/hunyuan-video.md section 5).
// Follows huggingface/tokenizers (tokenizers/src/models/bpe, pre_tokenizers, normalizers, processors,
// tokenizer/added_vocabulary.rs); everything is driven by the file's fields, no model is named in code.
//
// encode(text): added tokens are cut out first (leftmost-longest; those with "normalized": false on the raw
// text, the others on the normalized text), the rest goes through the normalizer (NFC, Lowercase, Replace,
// Strip, Prepend, Sequence), the pre-tokenizer (Split with a PCRE2 regex, ByteLevel, Whitespace,
// WhitespaceSplit, Sequence) and the BPE model (merge ranks, ignore_merges, end_of_word_suffix,
// continuing_subword_prefix, unk_token, byte_fallback); the post-processor (TemplateProcessing,
// RobertaProcessing, BertProcessing, ByteLevel, Sequence) adds BOS/EOS when asked.
//
// Unicode: regexes run on PCRE2 with PCRE2_UTF | PCRE2_UCP (JIT when available), so \p{L}, \p{N}, \s and
// (?!\S) mean what they mean in Oniguruma. Lowercase is Unicode's full lower-case mapping (Unicode 17 tables,
// Final_Sigma included). NFC is canonical composition of adjacent pairs (every Unicode 17 primary composite,
// and Hangul) WITHOUT canonical reordering and without the singleton / excluded decompositions: exact for
// text whose combining marks are in canonical order and compose left to right, which covers Latin, Greek,
// Cyrillic and Vietnamese text typed or pasted in NFC or NFD.
//
// Thread safety: a tokenizer is immutable after loading except for its word cache, which is locked; copies
// share one implementation and one cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace stavid::text {

// "No such token": returned by token_to_id and held by unset special ids.
inline constexpr int32_t kNoToken = -1;

// Special token ids, kNoToken where the tokenizer has none. BOS / EOS come from the post-processor (the
// special tokens before / after $A), PAD from the file's "padding" section, UNK from model.unk_token; a
// tokenizer_config.json beside the file (from_file only) overrides any of them by its bos_token,
// eos_token, pad_token and unk_token.
struct SpecialTokenIds {
  int32_t bos = kNoToken;
  int32_t eos = kNoToken;
  int32_t pad = kNoToken;
  int32_t unk = kNoToken;
};

// A fixed-length encoding: ids and attention mask of max_len entries each, right-padded.
struct PaddedIds {
  std::vector<int32_t> ids;   // [max_len]
  std::vector<int32_t> mask;  // [max_len], 1 for real tokens (specials included), 0 for padding
  size_t length = 0;          // number of real tokens
};

// True when this build has the PCRE2 regex engine; without it loading any tokenizer throws Unsupported.
bool tokenizer_supported();

class BpeTokenizer {
 public:
  // Reads `path` (a tokenizer.json, or a directory holding one) and, when present beside it,
  // tokenizer_config.json. Errors name the file: NotFound (missing), DataLoss (not JSON, missing or
  // mistyped fields, merges naming unknown tokens), Unsupported (a model, normalizer, pre-tokenizer,
  // post-processor or decoder type this code does not implement, or no PCRE2 in this build).
  static BpeTokenizer from_file(const std::string& path);
  // Parses tokenizer.json text; `source` names it in error messages.
  static BpeTokenizer from_json(std::string_view json_text, std::string_view source = "tokenizer.json");

  // Token ids of `text` (valid UTF-8, else InvalidArgument); add_special adds the post-processor's tokens.
  // Special-token strings inside `text` always map to their ids (HF's default, split_special_tokens off).
  std::vector<int32_t> encode(std::string_view text, bool add_special = true) const;

  // HF's padding="max_length", truncation=True: the text's tokens are cut to max_len minus the number of
  // special tokens, the specials are added, and the result is right-padded with pad_id (kNoToken: this
  // tokenizer's pad id; InvalidArgument if it has none, or if max_len cannot hold the specials).
  PaddedIds encode_padded(std::string_view text, size_t max_len, int32_t pad_id = kNoToken) const;

  // Text of `ids` through the file's decoder (ByteLevel maps the byte symbols back to UTF-8; invalid UTF-8
  // becomes U+FFFD). With an end_of_word_suffix ("</w>") the suffix becomes a space and the result is
  // trimmed, as transformers' CLIPTokenizerFast does. Unknown ids throw InvalidArgument.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;

  // Id of a token string (added tokens first, then the model's vocabulary), kNoToken if absent.
  int32_t token_to_id(std::string_view token) const;
  // The token string of `id` (its byte-level form for model tokens); InvalidArgument if out of range.
  std::string id_to_token(int32_t id) const;
  // Number of distinct ids, added tokens included (Llama-3: 128256).
  size_t vocab_size() const;
  bool is_special(int32_t id) const;

  const SpecialTokenIds& special_ids() const;
  int32_t bos_id() const { return special_ids().bos; }
  int32_t eos_id() const { return special_ids().eos; }
  int32_t pad_id() const { return special_ids().pad; }
  // Ids the post-processor puts before and after a single sequence.
  const std::vector<int32_t>& prefix_ids() const;
  const std::vector<int32_t>& suffix_ids() const;

  // Where the tokenizer came from (the path or the `source` given to from_json).
  const std::string& source() const;

  // Capacity (in words) of the per-word BPE cache; 0 turns it off. Default 16384.
  void set_cache_capacity(size_t words);

  struct Impl;  // opaque, defined in tokenizer.cc

 private:
  explicit BpeTokenizer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace stavid::text
