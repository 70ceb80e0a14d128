#include "model/parallel/parallel_vae.h"

#include <algorithm>

#include "kernels/core/error.h"

namespace stavid::parallel {

vae::VaeDecoder::DecodePlan plan_with_tiles(const vae::VaeDecoder& vae, const Shape& z_shape,
                                            vae::VaeDecoder::DecodePlan plan, int parts) {
  STAVID_CHECK(parts >= 1, "parallel VAE: parts must be >= 1, got ", parts);
  if (static_cast<int>(vae.tile_set(z_shape, plan).count()) >= parts) return plan;
  const int64_t h = z_shape[3], w = z_shape[4];
  // Shrink the tile width (then the height) until there are enough tiles.
  vae::VaeDecoder::DecodePlan p = plan;
  for (int axis = 0; axis < 2; ++axis) {
    const int64_t size = axis == 0 ? w : h;
    for (int64_t tile = size - 1; tile >= 4; --tile) {
      (axis == 0 ? p.tile_w : p.tile_h) = static_cast<int32_t>(tile);
      if (axis == 0 && p.tile_h == 0) p.tile_h = static_cast<int32_t>(h);
      p.overlap = static_cast<int32_t>(std::clamp<int64_t>(tile / 4, 2, 8));
      if (static_cast<int>(vae.tile_set(z_shape, p).count()) >= parts) return p;
    }
  }
  return p;  // as many tiles as the latent allows
}

Tensor decode_tiled_parallel(vae::VaeDecoder& vae, Communicator& comm, const Tensor& z,
                             const vae::VaeDecoder::DecodePlan& plan, const vae::ChunkHook& before_chunk) {
  const int k = comm.size(), me = comm.rank();
  const vae::VaeDecoder::TileSet tiles = vae.tile_set(z.shape(), plan);
  if (k == 1) return vae.decode_tiled(z, plan, before_chunk);
  const vae::VaeConfig& c = vae.config();
  if (tiles.count() == 1) {
    Tensor out = me == 0 ? vae.decode_chunked(z, tiles.chunk_latent_frames, before_chunk)
                         : Tensor::empty({z.size(0), c.out_channels, c.video_frames(z.size(2)),
                                          z.size(3) * c.spatial_compression_ratio, z.size(4) * c.spatial_compression_ratio},
                                         DType::F32, z.device());
    comm.broadcast(out, 0);
    return out;
  }
  // Tile i belongs to rank i % k; each rank's tiles travel as one host buffer in tile order.
  const int64_t per_tile = vae.tile_numel(z.shape(), tiles);
  const size_t tile_bytes = static_cast<size_t>(per_tile) * sizeof(float);
  std::vector<size_t> owned(static_cast<size_t>(k), 0);
  for (size_t i = 0; i < tiles.count(); ++i) ++owned[i % static_cast<size_t>(k)];
  std::vector<float> mine;
  mine.reserve(owned[me] * static_cast<size_t>(per_tile));
  for (size_t i = static_cast<size_t>(me); i < tiles.count(); i += static_cast<size_t>(k)) {
    const std::vector<float> t = vae.decode_tile(z, tiles, i, before_chunk);
    mine.insert(mine.end(), t.begin(), t.end());
  }
  std::vector<size_t> send_counts(k, owned[me] * tile_bytes), send_displs(k, 0), recv_counts(k), recv_displs(k);
  size_t total = 0;
  for (int r = 0; r < k; ++r) {
    recv_displs[r] = total;
    recv_counts[r] = owned[r] * tile_bytes;
    total += recv_counts[r];
  }
  std::vector<float> all(total / sizeof(float));
  comm.all_to_all_v(mine.data(), send_counts, send_displs, all.data(), recv_counts, recv_displs, Device::cpu());
  mine = {};
  std::vector<const float*> outputs(tiles.count());
  for (size_t i = 0; i < tiles.count(); ++i) {
    const size_t r = i % static_cast<size_t>(k), j = i / static_cast<size_t>(k);  // j-th tile of rank r
    outputs[i] = all.data() + recv_displs[r] / sizeof(float) + j * static_cast<size_t>(per_tile);
  }
  return vae.blend_tiles(z.shape(), tiles, outputs);
}

}  // namespace stavid::parallel
