// The HunyuanVideo prompt path (shared/spec/hunyuan-video.md section 5): the video template, the
// Llama encoder's hidden_states[-3] over max_len + crop_start tokens with the template's first
// crop_start positions cut off, and CLIP's pooled output over 77 tokens; batched, with a bounded LRU
// cache of per-prompt results so repeated prompts skip both encoders.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/runtime/tensor.h"
#include "model/text/clip.h"
#include "model/text/llama.h"
#include "model/text/tokenizer.h"

namespace stavid::text {

struct PromptTemplate {
  std::string text;     // with one "{}" where the prompt goes
  int32_t crop_start = 0;  // template tokens (BOS included) before the prompt, cut from the states
};
// HunyuanVideo's video template (identical in the original and diffusers), crop_start 95.
PromptTemplate hunyuan_video_template();

struct PromptEncoderOptions {
  PromptTemplate templ = hunyuan_video_template();
  int32_t max_length = 256;   // text slots reaching the DiT
  int32_t skip_layers = 2;    // hidden_states[-(skip_layers + 1)]
  int32_t clip_length = 77;
  size_t cache_capacity = 64;  // prompts
};

struct PromptEmbeddings {
  Tensor text_states;             // [B, max_length, hidden] (model dtype, model device)
  std::vector<int32_t> text_len;  // valid tokens per prompt (prompt + <|eot_id|>, after the crop)
  Tensor pooled;                  // [B, clip hidden]
};

class PromptEncoder {
 public:
  PromptEncoder(std::shared_ptr<const BpeTokenizer> llm_tokenizer, std::shared_ptr<const LlamaModel> llm,
                std::shared_ptr<const BpeTokenizer> clip_tokenizer, std::shared_ptr<const ClipTextModel> clip,
                PromptEncoderOptions options = {});

  // Encodes prompts (cached ones are taken from the cache; the rest run as one batch per encoder).
  PromptEmbeddings encode(const std::vector<std::string>& prompts);

  struct Stats {
    uint64_t hits = 0, misses = 0;
  };
  Stats stats() const;

 private:
  struct Entry {
    Tensor states;  // [1, max_length, hidden]
    int32_t len = 0;
    Tensor pooled;  // [1, clip hidden]
  };
  void run_encoders(const std::vector<std::string>& prompts, std::vector<Entry>* out) const;

  std::shared_ptr<const BpeTokenizer> llm_tok_, clip_tok_;
  std::shared_ptr<const LlamaModel> llm_;
  std::shared_ptr<const ClipTextModel> clip_;
  PromptEncoderOptions opt_;
  mutable std::mutex mu_;
  std::list<std::pair<std::string, Entry>> lru_;  // most recent first
  std::unordered_map<std::string, std::list<std::pair<std::string, Entry>>::iterator> index_;
  Stats stats_;
};

}  // namespace stavid::text
