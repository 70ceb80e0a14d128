// The prompt path: template, crop, the Llama hidden state and CLIP pooled output per prompt, batching
// and the LRU cache. Small fixture tokenizers (tests/data/tokenizer) and random tiny models.
#include <gtest/gtest.h>

#include "kernels/core/error.h"
#include "model/text/prompt_encoder.h"
#include "test_util.h"

namespace stavid::text {
namespace {

using test::nmse;

struct Fixture {
  std::shared_ptr<const BpeTokenizer> llm_tok, clip_tok;
  std::shared_ptr<const LlamaModel> llm;
  std::shared_ptr<const ClipTextModel> clip;
};

Fixture make_fixture() {
  const std::string dir = std::string(STAVID_TEST_DATA_DIR) + "/tokenizer";
  Fixture f;
  f.llm_tok = std::make_shared<BpeTokenizer>(BpeTokenizer::from_file(dir + "/small_bpe/tokenizer.json"));
  f.clip_tok = std::make_shared<BpeTokenizer>(BpeTokenizer::from_file(dir + "/clip_tiny/tokenizer.json"));
  LlamaConfig lc;
  lc.hidden_size = 32;
  lc.intermediate_size = 48;
  lc.num_hidden_layers = 3;
  lc.num_attention_heads = 4;
  lc.num_key_value_heads = 2;
  lc.head_dim = 8;
  lc.vocab_size = f.llm_tok->vocab_size();
  lc.max_position_embeddings = 512;
  f.llm = std::make_shared<LlamaModel>(LlamaModel::random(lc, 3, Device::cpu(), DType::F32));
  ClipTextConfig cc;
  cc.vocab_size = f.clip_tok->vocab_size();
  cc.hidden_size = 16;
  cc.intermediate_size = 32;
  cc.num_hidden_layers = 2;
  cc.num_attention_heads = 2;
  cc.eos_token_id = f.clip_tok->eos_id();
  f.clip = std::make_shared<ClipTextModel>(ClipTextModel::random(cc, 4, Device::cpu(), DType::F32));
  return f;
}

PromptEncoderOptions small_options() {
  PromptEncoderOptions o;
  o.templ.text = "{}";
  o.templ.crop_start = 1;  // the BOS the post-processor adds
  o.max_length = 24;
  o.cache_capacity = 2;
  return o;
}

TEST(PromptEncoder, BatchEqualsSingleAndCropsTheTemplate) {
  if (!tokenizer_supported()) GTEST_SKIP() << "built without PCRE2";
  const Fixture f = make_fixture();
  PromptEncoder enc(f.llm_tok, f.llm, f.clip_tok, f.clip, small_options());
  const std::vector<std::string> prompts = {"a red circle moves left", "blue"};
  const PromptEmbeddings both = enc.encode(prompts);
  EXPECT_EQ(both.text_states.shape(), (Shape{2, 24, 32}));
  EXPECT_EQ(both.pooled.shape(), (Shape{2, 16}));
  for (size_t i = 0; i < prompts.size(); ++i) {
    // valid tokens = the prompt's tokens + EOS (BOS cropped)
    const int32_t want = static_cast<int32_t>(f.llm_tok->encode(prompts[i], /*add_special=*/false).size()) + 1;
    EXPECT_EQ(both.text_len[i], want) << prompts[i];
    PromptEncoder fresh(f.llm_tok, f.llm, f.clip_tok, f.clip, small_options());
    const PromptEmbeddings one = fresh.encode({prompts[i]});
    const auto a = both.text_states.slice(0, static_cast<int64_t>(i), static_cast<int64_t>(i) + 1)
                       .slice(1, 0, want).contiguous().to_host_f32();
    const auto b = one.text_states.slice(1, 0, want).contiguous().to_host_f32();
    EXPECT_LE(nmse(a, b), 1e-12);
    EXPECT_LE(nmse(both.pooled.slice(0, static_cast<int64_t>(i), static_cast<int64_t>(i) + 1).contiguous().to_host_f32(),
                   one.pooled.to_host_f32()),
              1e-12);
  }
}

TEST(PromptEncoder, CacheServesRepeatsAndEvictsTheOldest) {
  if (!tokenizer_supported()) GTEST_SKIP() << "built without PCRE2";
  const Fixture f = make_fixture();
  PromptEncoder enc(f.llm_tok, f.llm, f.clip_tok, f.clip, small_options());  // capacity 2
  const auto first = enc.encode({"green square"});
  EXPECT_EQ(enc.stats().misses, 1u);
  const auto again = enc.encode({"green square"});
  EXPECT_EQ(enc.stats().hits, 1u);
  EXPECT_EQ(again.text_states.to_host_f32(), first.text_states.to_host_f32());
  enc.encode({"one", "two"});  // evicts "green square" (capacity 2)
  enc.encode({"green square"});
  EXPECT_EQ(enc.stats().misses, 4u);
  // A batch larger than the capacity still returns every prompt.
  const auto many = enc.encode({"a", "b", "c", "a"});
  EXPECT_EQ(many.text_states.size(0), 4);
  EXPECT_EQ(many.text_states.slice(0, 0, 1).to_host_f32(), many.text_states.slice(0, 3, 4).to_host_f32());
}

TEST(PromptEncoder, LongPromptsAreTruncatedAndTheHunyuanTemplateCrops95) {
  if (!tokenizer_supported()) GTEST_SKIP() << "built without PCRE2";
  const Fixture f = make_fixture();
  PromptEncoder enc(f.llm_tok, f.llm, f.clip_tok, f.clip, small_options());
  std::string longp;
  for (int i = 0; i < 100; ++i) longp += "word ";
  const auto e = enc.encode({longp});
  EXPECT_EQ(e.text_len[0], 24);  // max_length: truncated (EOS kept by the post-processor)
  const PromptTemplate t = hunyuan_video_template();
  EXPECT_EQ(t.crop_start, 95);
  EXPECT_NE(t.text.find("{}<|eot_id|>"), std::string::npos);
  PromptEncoderOptions bad = small_options();
  bad.templ.text = "no placeholder";
  EXPECT_THROW(PromptEncoder(f.llm_tok, f.llm, f.clip_tok, f.clip, bad), Error);
}

}  // namespace
}  // namespace stavid::text
