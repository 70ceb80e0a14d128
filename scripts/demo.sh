#!/usr/bin/env bash
# `make demo`: the best end-to-end path that exists today, stated plainly.
#
# The trained demo model (issue 8) and the gRPC service (issue 7) do not exist yet. What runs is the
# whole generation pipeline offline (stavid_render): text embeddings -> DiT (HunyuanVideo
# architecture, STA attention, flow-matching sampler) -> causal 3-D VAE -> H.264 MP4, on the GPU
# when one is present, else the CPU. The weights are the small RANDOM test fixtures in tests/data:
# the pipeline is real, the video is structured noise, not a picture of anything.
set -euo pipefail
build="${1:-build}"
cd "$(dirname "$0")/.."
out="$PWD/$build/demo.mp4"
echo "stavid demo: running the full pipeline on small random-weight fixtures (untrained: expect noise)."
"$build/server/stavid_render" \
  --dit tests/data/dit/small --dit-weights tests/data/dit/small/transformer.safetensors \
  --vae tests/data/vae/small --vae-weights tests/data/vae/small/vae.safetensors \
  --embeddings tests/data/dit/small/io.safetensors \
  --latent 4 32 32 --steps 8 --tile 1 8 8 --sta 3,1,1 --dense-steps 2 --fps 12 \
  --out "$out"
echo "stavid demo: wrote $out (13 frames, 256x256, H.264)."
