// The HunyuanVideo transformer's parameters, held in a tree that mirrors the diffusers checkpoint
// (spec section 3). Loading walks that tree: every expected key is read by name, shapes are
// checked, q/k/v projections are fused into one GEMM weight at load time, and all missing,
// mis-shaped and unused keys are reported together in one error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/dit/config.h"
#include "model/runtime/tensor.h"

namespace stavid {
class Checkpoint;
}

namespace stavid::dit {

struct Linear {
  Tensor w;  // [out, in]
  Tensor b;  // [out] (undefined when the layer has no bias)
};

struct RefinerBlock {
  Tensor norm1_w, norm1_b, norm2_w, norm2_b;  // affine LayerNorms [D]
  Linear qkv;                                  // attn.to_q|to_k|to_v fused: [3D, D]
  Linear out;                                  // attn.to_out.0
  Linear ff1, ff2;                             // ff.net.0.proj [F, D], ff.net.2 [D, F]
  Linear mod;                                  // norm_out.linear [2D, D]: rows [gate_msa; gate_mlp]
};

struct DualBlock {
  Linear img_mod, txt_mod;  // norm1.linear, norm1_context.linear [6D, D]
  Linear img_qkv, txt_qkv;  // to_q|to_k|to_v and add_q|add_k|add_v_proj fused: [3D, D]
  Tensor img_q_norm, img_k_norm, txt_q_norm, txt_k_norm;  // [head_dim]
  Linear img_out, txt_out;  // attn.to_out.0, attn.to_add_out
  Linear img_ff1, img_ff2, txt_ff1, txt_ff2;
};

struct SingleBlock {
  Linear mod;     // norm.linear [3D, D]: shift, scale, gate
  Linear qkv;     // attn.to_q|to_k|to_v fused [3D, D]
  Linear mlp_in;  // proj_mlp [F, D] (its own GEMM so GELU runs in the GEMM epilogue)
  Tensor q_norm, k_norm;
  Linear out;  // proj_out [D, D + F] over concat(attn, gelu(mlp))
};

struct DitWeights {
  Linear x_embed;  // x_embedder.proj as a linear over (c, kt, kh, kw) patches: [D, C*pt*ph*pw]
  Linear time1, time2, guid1, guid2, text1, text2;  // time_text_embed.*
  Linear ref_time1, ref_time2, ref_text1, ref_text2, ref_proj_in;  // context_embedder.*
  std::vector<RefinerBlock> refiner;
  std::vector<DualBlock> dual;
  std::vector<SingleBlock> single;
  Linear norm_out;  // [2D, D], rows [scale; shift]
  Linear proj_out;  // [pt*ph*pw*C_out, D]

  // Loads from a checkpoint (one .safetensors, a sharded index, or a directory), converting to
  // `dtype` on `device`. Throws stavid::Error listing every missing, mis-shaped and unused key.
  static DitWeights load(const DitConfig& c, const Checkpoint& ckpt, Device device, DType dtype);
  // Seeded random weights of the same shapes, generated on the device (for benchmarks of any
  // config, the 13B included): weights ~ N(0, std^2) with std 1/sqrt(fan_in), biases small, norm
  // weights 1.
  static DitWeights random(const DitConfig& c, uint64_t seed, Device device, DType dtype);

  // Every (name, shape) the diffusers checkpoint holds for this config, in load order.
  static std::vector<std::pair<std::string, Shape>> expected_keys(const DitConfig& c);
};

}  // namespace stavid::dit
