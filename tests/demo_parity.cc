// demo_parity: loads an exported demo model (tools/demo/export.py: transformer/, vae/, text_encoder/,
// text_encoder_2/, tokenizer/, tokenizer_2/) with the C++ loaders the server uses and runs each stage once
// on given inputs, so tools/demo/parity.py can compare every stage with the PyTorch forward:
//
//   demo_parity --model DIR --inputs io.safetensors --out out.safetensors
//               [--template "{}<|eot_id|>"] [--crop-start 1] [--max-length 32] [--skip-layers 2] [--clip-length 77]
//
// io.safetensors holds "x" [1, C, T, H, W] (DiT input latent), "z" [1, C, T', H', W'] (VAE input), and in its
// metadata "prompts" (a JSON list), "timestep", "guidance", "tile" and "window" (JSON). The output holds
// per prompt i: "llm_ids_i", "clip_ids_i" (F32 ids), "text_states_i" [1, max_length, D], "text_len_i" [1],
// "pooled_i" [1, Dc]; for prompt 0: "dit_dense" and "dit_sta" (the velocity, fixed STA window in every
// layer and head) and "vae_raw" (the decoder output before postprocessing). CPU, fp32.
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/core/error.h"
#include "model/dit/dit.h"
#include "model/text/clip.h"
#include "model/text/llama.h"
#include "model/text/prompt_encoder.h"
#include "model/text/tokenizer.h"
#include "model/vae/vae.h"
#include "model/weights/safetensors.h"
#include "model/weights/tensor_io.h"

using namespace stavid;

namespace {
struct Out {
  std::vector<std::vector<float>> keep;
  std::vector<TensorToWrite> list;
  void add(const std::string& name, std::vector<float> v, std::vector<int64_t> shape) {
    keep.push_back(std::move(v));
    TensorToWrite t;
    t.name = name;
    t.dtype = StDType::F32;
    t.shape = std::move(shape);
    t.data = keep.back().data();
    t.nbytes = keep.back().size() * sizeof(float);
    list.push_back(t);
  }
  void add(const std::string& name, const Tensor& x) {
    const Tensor h = x.to(Device::cpu()).to(DType::F32).contiguous();
    std::vector<float> v(h.data_as<float>(), h.data_as<float>() + h.numel());
    add(name, std::move(v), std::vector<int64_t>(h.shape().begin(), h.shape().end()));
  }
};
std::vector<float> ids_as_float(const std::vector<int32_t>& ids) { return std::vector<float>(ids.begin(), ids.end()); }
}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> a = {{"--template", "{}<|eot_id|>"}, {"--crop-start", "1"}, {"--max-length", "32"},
                                          {"--skip-layers", "2"}, {"--clip-length", "77"}};
  for (int i = 1; i + 1 < argc; i += 2) a[argv[i]] = argv[i + 1];
  if (!a.count("--model") || !a.count("--inputs") || !a.count("--out")) {
    std::fprintf(stderr, "usage: demo_parity --model DIR --inputs io.safetensors --out out.safetensors [...]\n");
    return 2;
  }
  try {
    const std::string dir = a["--model"];
    const Device cpu = Device::cpu();
    const Checkpoint io = Checkpoint::open(a["--inputs"]);
    const nlohmann::json meta = nlohmann::json::parse(SafetensorsFile::open(a["--inputs"]).metadata().at("meta"));
    Out out;

    // Text: the server's prompt path.
    text::PromptEncoderOptions opt;
    opt.templ.text = a["--template"];
    opt.templ.crop_start = std::stoi(a["--crop-start"]);
    opt.max_length = std::stoi(a["--max-length"]);
    opt.skip_layers = std::stoi(a["--skip-layers"]);
    opt.clip_length = std::stoi(a["--clip-length"]);
    auto llm_tok = std::make_shared<const text::BpeTokenizer>(text::BpeTokenizer::from_file(dir + "/tokenizer/tokenizer.json"));
    auto clip_tok =
        std::make_shared<const text::BpeTokenizer>(text::BpeTokenizer::from_file(dir + "/tokenizer_2/tokenizer.json"));
    const text::LlamaConfig lc = text::LlamaConfig::from_file(dir + "/text_encoder/config.json");
    text::LlamaLoadOptions lo;
    lo.num_layers = lc.num_hidden_layers - opt.skip_layers;
    lo.final_norm = false;
    auto llm = std::make_shared<const text::LlamaModel>(text::LlamaModel::load(dir + "/text_encoder", cpu, DType::F32, lo));
    auto clip = std::make_shared<const text::ClipTextModel>(text::ClipTextModel::load(dir + "/text_encoder_2", cpu, DType::F32));
    text::PromptEncoder enc(llm_tok, llm, clip_tok, clip, opt);
    const std::vector<std::string> prompts = meta.at("prompts").get<std::vector<std::string>>();
    const int32_t total = opt.max_length + opt.templ.crop_start;
    for (size_t i = 0; i < prompts.size(); ++i) {
      std::string t = opt.templ.text;
      t.replace(t.find("{}"), 2, prompts[i]);
      const int32_t llm_pad = llm_tok->pad_id() != text::kNoToken ? llm_tok->pad_id() : llm_tok->eos_id();
      const int32_t clip_pad = clip_tok->pad_id() != text::kNoToken ? clip_tok->pad_id() : clip_tok->eos_id();
      const text::PaddedIds li = llm_tok->encode_padded(t, static_cast<size_t>(total), llm_pad);
      const text::PaddedIds ci = clip_tok->encode_padded(prompts[i], static_cast<size_t>(opt.clip_length), clip_pad);
      out.add("llm_ids_" + std::to_string(i), ids_as_float(li.ids), {1, static_cast<int64_t>(li.ids.size())});
      out.add("clip_ids_" + std::to_string(i), ids_as_float(ci.ids), {1, static_cast<int64_t>(ci.ids.size())});
      const text::PromptEmbeddings e = enc.encode({prompts[i]});
      out.add("text_states_" + std::to_string(i), e.text_states);
      out.add("text_len_" + std::to_string(i), {static_cast<float>(e.text_len[0])}, {1});
      out.add("pooled_" + std::to_string(i), e.pooled);
    }

    // DiT: one forward, dense and fixed-window STA, on prompt 0's embeddings.
    dit::HunyuanDit model = dit::HunyuanDit::load(dir + "/transformer", cpu, DType::F32);
    const text::PromptEmbeddings e0 = enc.encode({prompts.at(0)});
    dit::DitInputs in;
    in.latent = load_tensor(io, io.at("x"), cpu, DType::F32);
    in.timestep = {meta.at("timestep").get<float>()};
    in.guidance = {meta.at("guidance").get<float>()};
    in.text_states = e0.text_states;
    in.text_len = e0.text_len;
    in.pooled = e0.pooled;
    dit::AttentionPlan dense;
    const auto tile = meta.at("tile").get<std::vector<int32_t>>();
    const auto win = meta.at("window").get<std::vector<int32_t>>();
    dense.tile = {tile[0], tile[1], tile[2]};
    out.add("dit_dense", model.forward(in, dense));
    dit::AttentionPlan sta = dense;
    const auto& dc = model.config();
    sta.windows.assign(static_cast<size_t>(dc.num_layers + dc.num_single_layers),
                       std::vector<StaWindow>(static_cast<size_t>(dc.num_attention_heads), StaWindow{win[0], win[1], win[2]}));
    out.add("dit_sta", model.forward(in, sta));

    // VAE decode.
    vae::VaeDecoder vae = vae::VaeDecoder::load(dir + "/vae", cpu, DType::F32);
    out.add("vae_raw", vae.decode(load_tensor(io, io.at("z"), cpu, DType::F32)));

    write_safetensors(a["--out"], out.list);
    std::printf("{\"prompts\": %zu, \"out\": \"%s\"}\n", prompts.size(), a["--out"].c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "demo_parity: %s\n", e.what());
    return 1;
  }
  return 0;
}
