// The VAE decode split over the ranks of a group (docs/parallel.md): the spatial tiles of
// VaeDecoder::decode_tiled are dealt round-robin to the ranks, each rank decodes its tiles (with
// their overlaps: every tile decodes its own halo), the tile outputs are all-gathered, and every
// rank blends all of them in tile order. The result equals the single-rank decode_tiled with the
// same plan bit for bit (same tiles, same blend order). Time chunks are not split across ranks: the
// causal caches make them sequential.
#pragma once

#include "model/parallel/communicator.h"
#include "model/vae/vae.h"

namespace stavid::parallel {

// `plan` with at least `parts` tiles where the latent allows it: the plan's tiles when it already
// has enough, else columns (then rows) of equal tiles overlapping by a quarter of a tile, 2..8
// latent pixels. Tiling changes the output slightly compared with an untiled decode (the blend).
vae::VaeDecoder::DecodePlan plan_with_tiles(const vae::VaeDecoder& vae, const Shape& z_shape,
                                            vae::VaeDecoder::DecodePlan plan, int parts);

// decode_tiled(z, plan) computed by the group; every rank gets the whole video on its device. Every
// rank passes the same z and plan. A plan of one tile runs on rank 0 and is broadcast.
Tensor decode_tiled_parallel(vae::VaeDecoder& vae, Communicator& comm, const Tensor& z,
                             const vae::VaeDecoder::DecodePlan& plan, const vae::ChunkHook& before_chunk = {});

}  // namespace stavid::parallel
