// The HunyuanVideo causal 3-D VAE decoder (shared/spec/hunyuan-video.md section 4), config-driven,
// CPU and CUDA. Port of the architecture of diffusers' autoencoder_kl_hunyuan_video.py, written
// from the spec. Tensors are NCTHW; convolutions are im2col + GEMM per batch item and per chunk
// of output frames (the im2col buffer is bounded by `max_col_bytes`).
#pragma once

#include <cstdint>
#include <functional>
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
  int64_t video_frames(int64_t latent_frames) const { return (latent_frames - 1) * temporal_compression_ratio + 1; }
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

// Called before each chunk (and tile) of a chunked or tiled decode; it may throw to abandon the
// decode (a cancelled job), which leaves the decoder usable.
using ChunkHook = std::function<void()>;

// Caches carried between the temporal chunks of one decode.
struct DecodeRun {
  bool chunked = false;
  bool first_chunk = true;
  std::vector<std::pair<const void*, Tensor>> conv_cache;  // conv -> [B, Cin, 2, H, W]
  Tensor k_cache, v_cache;                                 // [B, frames_seen * HW, C]
  int64_t frames_seen = 0;
  Tensor* cache_for(const void* conv);
};

class VaeDecoder {
 public:
  VaeDecoder(VaeConfig config, const Checkpoint& ckpt, Device device, DType dtype);
  static VaeDecoder load(const std::string& dir, Device device, DType dtype);
  // Seeded random weights of the config's shapes (benchmarks).
  static VaeDecoder random(VaeConfig config, uint64_t seed, Device device, DType dtype);

  const VaeConfig& config() const { return config_; }
  // z [B, latent_channels, T, h, w] (scaled latents, as the sampler produces them) -> raw decoder
  // output [B, out_channels, 1 + 4(T-1), 8h, 8w] in fp32 (about [-1, 1]).
  Tensor decode(const Tensor& z);
  // Bounded-memory decode: latent chunks of `chunk_latent_frames` frames run through the whole
  // network one after another with causal caches: every 3x3x3 conv keeps the last 2 frames of its
  // (time-padded) input as the next chunk's front padding, only the first chunk's frame 0 gets the
  // spatial-only upsampling, the mid attention keeps K/V of all earlier frames. GroupNorm uses each
  // chunk's own statistics (a single pass cannot know the whole tensor's), so the result differs
  // from decode() the way tiled decoders do (tools/reference/README.md quantifies it); a chunk as
  // long as the latent equals decode(). Peak memory scales with the chunk, not the clip.
  // `before_chunk` (optional, see ChunkHook) runs before every chunk.
  Tensor decode_chunked(const Tensor& z, int32_t chunk_latent_frames, const ChunkHook& before_chunk = {});
  // Spatial tiling on top of temporal chunks: the latent is cut into overlapping tiles of
  // (tile_h, tile_w) latent pixels, `overlap` latent pixels shared between neighbours; each tile is
  // decoded with decode_chunked and the overlaps are blended linearly (the weight of a tile ramps
  // from 0 to 1 across the overlap), as tiled video decoders do.
  struct DecodePlan {
    int32_t chunk_latent_frames = 0;  // 0: the whole clip at once
    int32_t tile_h = 0, tile_w = 0;   // latent pixels; 0: no spatial tiling
    int32_t overlap = 0;              // latent pixels shared by neighbouring tiles
  };
  Tensor decode_tiled(const Tensor& z, const DecodePlan& plan, const ChunkHook& before_chunk = {});
  // decode_tiled in pieces, so the tiles can be spread over ranks (model/parallel/parallel_vae.h):
  // the tile grid of a plan, one tile's decode, and the blend of every tile's output.
  struct TileSet {
    int32_t chunk_latent_frames = 0;
    int64_t tile_h = 0, tile_w = 0, overlap_h = 0, overlap_w = 0;  // latent pixels
    std::vector<int64_t> origin_y, origin_x;                       // tile origins, latent pixels
    size_t count() const { return origin_y.size() * origin_x.size(); }  // tiles, row-major
  };
  TileSet tile_set(const Shape& z_shape, const DecodePlan& plan) const;
  // Output elements of one tile: B * out_channels * frames * (8 tile_h) * (8 tile_w).
  int64_t tile_numel(const Shape& z_shape, const TileSet& tiles) const;
  // Tile `index` (row-major) through decode_chunked, as host fp32 [B, C, F, 8 tile_h, 8 tile_w].
  std::vector<float> decode_tile(const Tensor& z, const TileSet& tiles, size_t index, const ChunkHook& before_chunk = {});
  // decode_tiled's result from every tile's output (tile order; each tile_numel floats), blended
  // linearly across the overlaps on the host. The result is on this decoder's device.
  Tensor blend_tiles(const Shape& z_shape, const TileSet& tiles, const std::vector<const float*>& outputs) const;
  // Peak device bytes of decoding `z_shape` with `plan` (the output video included): a walk over the
  // decoder's allocations in program order, each rounded to the allocator's size class.
  size_t estimate_peak_bytes(const Shape& z_shape, const DecodePlan& plan) const;
  // The largest chunk and tile whose estimate fits `budget_bytes`: whole frames first, then square
  // tiles shrinking by 3/4 down to 4 latent pixels, overlap a quarter of the tile within 2..8;
  // throws OutOfMemory when nothing fits.
  DecodePlan plan_for_budget(const Shape& z_shape, size_t budget_bytes) const;
  // decode_tiled with plan_for_budget's plan; while it runs, the device allocator's cache is held
  // to what was allocated at the start plus the budget (rt::ScopedReserveLimit), so freed blocks of
  // other sizes do not pile up past it.
  Tensor decode_with_budget(const Tensor& z, size_t budget_bytes, const ChunkHook& before_chunk = {});
  // (x / 2 + 0.5).clamp(0, 1), fp32.
  static Tensor postprocess(const Tensor& raw);

  // Pieces, exposed for tests (each a fresh, unchunked run).
  Tensor post_quant(const Tensor& z);
  Tensor conv_in(const Tensor& x) { DecodeRun r; return conv_in(x, r); }
  Tensor mid_block(const Tensor& x) { DecodeRun r; return mid_block(x, r); }
  Tensor mid_attention(const Tensor& x) { DecodeRun r; return mid_attention(x, r); }
  Tensor up_block(int index, const Tensor& x) { DecodeRun r; return up_block(index, x, r); }
  Tensor head(const Tensor& x) { DecodeRun r; return head(x, r); }  // conv_norm_out + SiLU + conv_out

  // im2col scratch budget per conv call (also bounds the attention's score chunk). Small on the CPU,
  // where a cache-sized chunk is faster; large on the GPU, where bigger GEMMs are.
  size_t max_col_bytes = size_t(1) << 30;

 private:
  VaeDecoder(VaeConfig config, const Checkpoint* ckpt, Device device, DType dtype, uint64_t seed);
  Tensor forward(const Tensor& z, DecodeRun& run);
  Tensor conv_in(const Tensor& x, DecodeRun& run);
  Tensor mid_block(const Tensor& x, DecodeRun& run);
  Tensor mid_attention(const Tensor& x, DecodeRun& run);
  Tensor up_block(int index, const Tensor& x, DecodeRun& run);
  Tensor head(const Tensor& x, DecodeRun& run);
  Tensor conv(const Tensor& x, const Conv& c, DecodeRun* run = nullptr) const;
  Tensor norm(const Tensor& x, const Norm& n, bool silu) const;
  Tensor resblock(const Tensor& x, const ResBlock& r, DecodeRun& run) const;

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
