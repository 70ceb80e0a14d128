#include "model/text/prompt_encoder.h"

#include <algorithm>

#include "kernels/core/error.h"

namespace stavid::text {

PromptTemplate hunyuan_video_template() {
  PromptTemplate t;
  t.text =
      "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
      "1. The main content and theme of the video."
      "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
      "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
      "4. background environment, light, style and atmosphere."
      "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>";
  t.crop_start = 95;
  return t;
}

PromptEncoder::PromptEncoder(std::shared_ptr<const BpeTokenizer> llm_tokenizer, std::shared_ptr<const LlamaModel> llm,
                             std::shared_ptr<const BpeTokenizer> clip_tokenizer,
                             std::shared_ptr<const ClipTextModel> clip, PromptEncoderOptions options)
    : llm_tok_(std::move(llm_tokenizer)), clip_tok_(std::move(clip_tokenizer)), llm_(std::move(llm)),
      clip_(std::move(clip)), opt_(std::move(options)) {
  STAVID_CHECK(llm_tok_ && llm_ && clip_tok_ && clip_, "prompt encoder: missing tokenizer or model");
  STAVID_CHECK(opt_.templ.text.find("{}") != std::string::npos, "prompt encoder: the template has no {}");
  STAVID_CHECK(opt_.max_length >= 1 && opt_.templ.crop_start >= 0 && opt_.clip_length >= 2 && opt_.cache_capacity >= 1,
               "prompt encoder: bad lengths or cache capacity");
}

PromptEncoder::Stats PromptEncoder::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

namespace {
int32_t pad_id_of(const BpeTokenizer& t) {
  if (t.pad_id() != kNoToken) return t.pad_id();
  if (t.eos_id() != kNoToken) return t.eos_id();
  return 0;
}
}  // namespace

void PromptEncoder::run_encoders(const std::vector<std::string>& prompts, std::vector<Entry>* out) const {
  const int32_t total = opt_.max_length + opt_.templ.crop_start;
  const auto& lc = llm_->config();
  STAVID_CHECK(lc.num_hidden_layers > opt_.skip_layers, "prompt encoder: the LLM has ", lc.num_hidden_layers,
               " layers, fewer than skip_layers + 1");
  TokenBatch llm_batch, clip_batch;
  for (const std::string& prompt : prompts) {
    std::string text = opt_.templ.text;
    text.replace(text.find("{}"), 2, prompt);
    PaddedIds p = llm_tok_->encode_padded(text, static_cast<size_t>(total), pad_id_of(*llm_tok_));
    llm_batch.ids.push_back(std::move(p.ids));
    llm_batch.valid.push_back(static_cast<int32_t>(p.length));
    PaddedIds c = clip_tok_->encode_padded(prompt, static_cast<size_t>(opt_.clip_length), pad_id_of(*clip_tok_));
    clip_batch.ids.push_back(std::move(c.ids));
  }
  const Tensor states = llm_->hidden_states(llm_batch, lc.num_hidden_layers - opt_.skip_layers);  // [B, total, D]
  const ClipTextOutput clip = clip_->forward(clip_batch);  // diffusers' call: causal only
  for (size_t b = 0; b < prompts.size(); ++b) {
    Entry e;
    e.states = states.slice(0, static_cast<int64_t>(b), static_cast<int64_t>(b) + 1)
                   .slice(1, opt_.templ.crop_start, total)
                   .contiguous();  // [1, max_length, D]
    e.len = std::max(0, llm_batch.valid[b] - opt_.templ.crop_start);
    STAVID_CHECK(e.len >= 1, "prompt encoder: the template and prompt leave no text tokens after the crop (",
                 llm_batch.valid[b], " tokens, crop_start ", opt_.templ.crop_start, ")");
    e.pooled = clip.pooled.slice(0, static_cast<int64_t>(b), static_cast<int64_t>(b) + 1).contiguous();
    out->push_back(std::move(e));
  }
}

PromptEmbeddings PromptEncoder::encode(const std::vector<std::string>& prompts) {
  STAVID_CHECK(!prompts.empty(), "prompt encoder: no prompts");
  std::vector<const Entry*> found(prompts.size(), nullptr);
  std::vector<std::string> missing;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < prompts.size(); ++i) {
      auto it = index_.find(prompts[i]);
      if (it != index_.end()) {
        lru_.splice(lru_.begin(), lru_, it->second);
        ++stats_.hits;
      } else {
        missing.push_back(prompts[i]);
        ++stats_.misses;
      }
    }
  }
  std::vector<Entry> fresh;
  if (!missing.empty()) run_encoders(missing, &fresh);
  // Assemble the batch (holding entries by value so a concurrent eviction cannot invalidate them).
  std::vector<Entry> entries(prompts.size());
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t j = 0; j < missing.size(); ++j) {
      if (index_.count(missing[j])) continue;
      lru_.emplace_front(missing[j], fresh[j]);
      index_[missing[j]] = lru_.begin();
      while (lru_.size() > opt_.cache_capacity) {
        index_.erase(lru_.back().first);
        lru_.pop_back();
      }
    }
    size_t next_fresh = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      auto it = index_.find(prompts[i]);
      if (it != index_.end()) {
        entries[i] = it->second->second;
      } else {  // evicted within this call (capacity smaller than the batch): use the fresh result
        for (; next_fresh < missing.size(); ++next_fresh)
          if (missing[next_fresh] == prompts[i]) break;
        entries[i] = fresh.at(next_fresh);
      }
    }
  }
  const int64_t b = static_cast<int64_t>(prompts.size());
  PromptEmbeddings out;
  const Tensor& s0 = entries[0].states;
  out.text_states = Tensor::empty({b, s0.size(1), s0.size(2)}, s0.dtype(), s0.device());
  out.pooled = Tensor::empty({b, entries[0].pooled.size(1)}, entries[0].pooled.dtype(), entries[0].pooled.device());
  for (int64_t i = 0; i < b; ++i) {
    out.text_states.slice(0, i, i + 1).copy_from(entries[i].states);
    out.pooled.slice(0, i, i + 1).copy_from(entries[i].pooled);
    out.text_len.push_back(entries[i].len);
  }
  return out;
}

}  // namespace stavid::text
