// The HunyuanVideo transformer (shared/spec/hunyuan-video.md section 2) with Sliding Tile Attention.
// Port of the architecture of diffusers' transformer_hunyuan_video.py, written from the spec.
//
// Token order: image tokens live in "compact tiled" order for the whole forward: the STA tiled
// order with the padded slots of a non-divisible canvas removed. Patchify writes that order,
// unpatchify reads it, and the attention kernel maps slots to these rows (o_row_map), so tiling
// happens once per forward, not per block. Text tokens follow the image tokens where both streams
// are joined (attention output, single blocks).
//
// Sequence parallel (set_communicator, docs/parallel.md): with a group of k ranks, each rank's model
// holds a contiguous 1/k of the image rows (compact order) from the patch embedding to the final
// projection, and the text rows whole. Every attention swaps rows for heads with an all-to-all
// (Ulysses), runs STA over the whole grid for its H/k heads with their own windows, and swaps back;
// final_layer gathers the rows, so the velocity is whole (and identical) on every rank.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "kernels/sta.h"
#include "model/dit/config.h"
#include "model/dit/weights.h"
#include "model/parallel/ulysses.h"
#include "model/runtime/buffer.h"
#include "model/runtime/tensor.h"

namespace stavid::dit {

struct DitInputs {
  Tensor latent;                  // [B, C, T, H, W] (any dtype; the sampler keeps fp32)
  std::vector<float> timestep;    // per batch item, in 0..1000 (sigma * 1000)
  Tensor text_states;             // [B, L, text_embed_dim]
  std::vector<int32_t> text_len;  // valid text tokens per item (right padding), 0..L
  Tensor pooled;                  // [B, pooled_projection_dim]
  std::vector<float> guidance;    // per batch item, embedded guidance (e.g. 6016 for 6.0)
};

// Attention for one forward: the tile, and per layer (dual blocks first, then single blocks) the
// window of every head. Empty `windows` means dense attention (a full window everywhere).
struct AttentionPlan {
  std::array<int32_t, 3> tile = {6, 8, 8};  // in latent tokens (after patching)
  std::vector<std::vector<StaWindow>> windows;  // [total_layers][heads], or empty
  bool dense() const { return windows.empty(); }
};

// Shapes, maps and RoPE tables that depend only on (token grid, tile, text slots): built once and
// cached per shape.
struct TokenLayout {
  std::array<int32_t, 3> grid = {0, 0, 0};  // latent tokens (T', H', W')
  StaGeometry geom;                          // text_valid = text_slots; set per launch
  int64_t n_img = 0;
  Buffer row_of_token;  // int32 [n_img]: raster token -> compact row
  Buffer o_row_map;     // int32 [seq_len]: slot -> compact row (text: n_img + t), -1 for padding
  Tensor rope_cos, rope_sin;  // f32 [n_img, head_dim/2] by compact row
};

// Calibration hook (STA window search): while set, every dual/single block also runs attention
// with each candidate window (all heads at once) and accumulates, per (layer, candidate, head), the
// squared error of the image-query outputs against the block's own output (which is what
// propagates). Run the forward with a dense plan so the reference is full attention.
struct AttentionProbe {
  std::vector<StaWindow> candidates;
  Buffer sums;                   // double [total_layers][candidates][heads], on the model's device
  int64_t elements_per_head = 0; // image-output elements per head per layer call (set by the model)
  Buffer windows;                // StaWindow [candidates][heads] on the device (set by the model)
  std::vector<StaWindow> host_windows;
};

class HunyuanDit {
 public:
  HunyuanDit(DitConfig config, DitWeights weights, Device device, DType dtype);
  // Loads config.json and the safetensors weights from a diffusers `transformer/` folder (or a
  // folder holding both).
  static HunyuanDit load(const std::string& dir, Device device, DType dtype);

  const DitConfig& config() const { return config_; }
  Device device() const { return device_; }
  DType dtype() const { return dtype_; }

  // One forward's activations; the stages below advance it.
  struct State {
    std::shared_ptr<const TokenLayout> layout;
    int32_t batch = 0;
    std::vector<int32_t> text_len;
    Tensor vec;       // [B, D]: time + guidance + pooled embeddings
    Tensor silu_vec;  // [B, D]
    Tensor img;       // [B, N_img, D] compact order
    Tensor txt;       // [B, L, D]
    Tensor joined;    // [B, N_img + L, D] during the single blocks
    Tensor block0_modulated;  // cached TeaCache indicator (dual block 0's modulated image input)
    Buffer windows;           // StaWindow [total_layers][heads of this rank] on the device
    std::vector<StaWindow> host_windows;
    parallel::SequenceSplit split;  // this rank's image rows and heads (all of both without a group)
  };

  // Embeddings, patchify, token refiner.
  State embed(const DitInputs& in, const AttentionPlan& plan);
  // LN(img) * (1 + scale1) + shift1 of dual block 0 (TeaCache's indicator); cached in the state.
  const Tensor& block0_modulated_input(State& s);
  void dual_block(State& s, int index);
  void single_block(State& s, int index);
  // Every block: dual blocks on (img, txt), then single blocks on the joined sequence; afterwards
  // s.img holds the image tokens of the last block.
  void blocks(State& s);
  // Final adaLN + projection + unpatchify of image tokens (compact order) -> velocity
  // [B, C_out, T, H, W] in fp32.
  Tensor final_layer(const State& s, const Tensor& img) const;
  // All of the above.
  Tensor forward(const DitInputs& in, const AttentionPlan& plan);

  // The refiner output for tests: text tokens [B, L, D] after the token refiner.
  Tensor refine_text(const Tensor& text_states, const std::vector<int32_t>& text_len, const Tensor& timestep_emb);

  // Installs (or, with nullptr, removes) a calibration probe; the caller owns it.
  void set_probe(AttentionProbe* probe);
  // Makes this model one rank of a sequence-parallel group (nullptr or a group of 1: not parallel).
  // The caller owns the communicator; every rank of the group must run the same forwards with the
  // same inputs. Throws InvalidArgument when the group size does not divide the head count.
  void set_communicator(parallel::Communicator* comm);
  parallel::Communicator* communicator() const { return comm_; }

  std::shared_ptr<const TokenLayout> layout_for(const std::array<int32_t, 3>& grid, const std::array<int32_t, 3>& tile,
                                                int32_t text_slots);

 private:
  Tensor linear(const Tensor& x, const Linear& l, bool gelu = false) const;
  // Attention over prepared q/k/v [B, H, S, Dh] into out rows (compact image rows, then text rows).
  // `layer` < 0: not a transformer block (the refiner): never probed.
  void attention(const State& s, int layer, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                 const StaGeometry& geom, const Buffer& windows, size_t window_offset,
                 const std::vector<StaWindow>& host_windows, int32_t heads) const;
  void probe_candidates(const State& s, int layer, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const StaGeometry& geom) const;

  DitConfig config_;
  DitWeights w_;
  Device device_;
  DType dtype_;
  std::map<std::array<int32_t, 7>, std::shared_ptr<TokenLayout>> layouts_;
  AttentionProbe* probe_ = nullptr;
  parallel::Communicator* comm_ = nullptr;
};

// The 256-channel sinusoid of spec 2.0 (cos half, then sin half), fp32.
std::vector<float> timestep_sinusoid(float t);
// RoPE angles for a token at (t, h, w): cos/sin per pair, head_dim/2 each (spec 2.5).
void rope_angles(const DitConfig& c, int32_t t, int32_t h, int32_t w, float* cos_out, float* sin_out);

}  // namespace stavid::dit
