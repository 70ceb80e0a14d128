// The HunyuanVideo causal 3-D VAE decoder (shared/spec/hunyuan-video.md section 4), config-driven,
// CPU and CUDA. Port of the architecture of diffusers' autoencoder_kl_hunyuan_video.py, written
// from the spec. Tensors are NCTHW; convolutions are im2col + GEMM per batch item and per chunk
// of output frames (the im2col buffer is bounded by `max_col_bytes`).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/runtime/tensor.h"

namespace stavid {
class Checkpoint;
}

namespace stavid::vae {

struct VaeConfig {
  int32_t in_channels = 3, out_channels = 3, latent_channels = 16;
  std::vector<int32_t> block_out_channels = {128, 256, 512, 512};
  int32_t layers_per_block = 2;
  int32_t norm_num_groups = 32;
  float scaling_factor = 0.476986f;
  int32_t spatial_compression_ratio = 8, temporal_compression_ratio = 4;
  bool mid_block_add_attention = true;

  void validate() const;
  static VaeConfig from_file(const std::string& path);
  // Decoder + post_quant_conv parameters (146,136,339 for the released config).
  int64_t decoder_parameter_count() const;
  int32_t video_frames(int32_t latent_frames) const { return (latent_frames - 1) * temporal_compression_ratio + 1; }
};

struct Conv {
  Tensor w;  // [Cout, Cin * kt * kh * kw] (GEMM layout)
  Tensor b;  // [Cout]
  int32_t k = 3;
};
struct Norm {
  Tensor w, b;  // [C]
};
struct ResBlock {
  Norm norm1, norm2;
  Conv conv1, conv2;
  Conv shortcut;  // undefined weight when channels do not change
};
struct Attention {
  Norm norm;
  Tensor q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b;  // [C, C], [C]
};
struct UpBlock {
  std::vector<ResBlock> resnets;
  Conv upsample_conv;                  // undefined when the block does not upsample
  int32_t ft = 1, fh = 1, fw = 1;      // upsample factors
};

class VaeDecoder {
 public:
  VaeDecoder(VaeConfig config, const Checkpoint& ckpt, Device device, DType dtype);
  static VaeDecoder load(const std::string& dir, Device device, DType dtype);

  const VaeConfig& config() const { return config_; }
  // z [B, latent_channels, T, h, w] (scaled latents, as the sampler produces them) -> raw decoder
  // output [B, out_channels, 1 + 4(T-1), 8h, 8w] in fp32 (about [-1, 1]).
  Tensor decode(const Tensor& z);
  // (x / 2 + 0.5).clamp(0, 1), fp32.
  static Tensor postprocess(const Tensor& raw);

  // Pieces, exposed for tests.
  Tensor post_quant(const Tensor& z);
  Tensor conv_in(const Tensor& x);
  Tensor mid_block(const Tensor& x);
  Tensor mid_attention(const Tensor& x);
  Tensor up_block(int index, const Tensor& x);
  Tensor head(const Tensor& x);  // conv_norm_out + SiLU + conv_out

  size_t max_col_bytes = size_t(1) << 30;  // im2col scratch budget per conv call

 private:
  Tensor conv(const Tensor& x, const Conv& c) const;
  Tensor norm(const Tensor& x, const Norm& n, bool silu) const;
  Tensor resblock(const Tensor& x, const ResBlock& r) const;

  VaeConfig config_;
  Device device_;
  DType dtype_;
  Conv post_quant_, conv_in_, conv_out_;
  ResBlock mid_res0_, mid_res1_;
  Attention mid_attn_;
  std::vector<UpBlock> up_;
  Norm norm_out_;
};

}  // namespace stavid::vae
