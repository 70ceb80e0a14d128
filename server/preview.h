// Preview frames: a cheap latent -> RGB projection of one latent frame, for the low-resolution
// previews a job streams while it denoises (the VAE is far too expensive to run per step).
//
// The projection is one fixed linear map, the same for every model: colour k (R, G, B = 0, 1, 2) of a
// latent pixel x (C channels) is
//   rgb_k = 0.5 + 0.25 * sum_c M[k][c] * x_c,   M[k][c] = sqrt(2 / C) * cos(2 pi (c / C + k / 3)),
// clamped to [0, 1]. For C >= 3 the rows have unit norm, sit 120 degrees apart and sum to zero: the
// map takes each pixel's first Fourier component across the channels (a 2-D vector) and shows its
// direction as hue and its length as saturation around mid-gray, so latents of unit variance (the
// sampler's noise, HunyuanVideo's scaled latents) land mostly inside [0, 1]. It shows the layout,
// motion and convergence of the latents, not their true colours (that would need a map fitted to a
// trained VAE). The image has the latent's resolution (1/8 of the video's per axis).
#pragma once

#include <cstdint>
#include <vector>

#include "stavid/v1/video.pb.h"

namespace stavid::server {

// The 3 x C projection matrix above, row-major.
std::vector<float> latent_rgb_matrix(int channels);

// One latent frame -> packed RGB24 (height * width * 3 bytes). Channel c of pixel (y, x) is at
// frame[c * channel_stride + y * width + x].
std::vector<uint8_t> latent_frame_to_rgb24(const float* frame, int channels, int height, int width,
                                           int64_t channel_stride);

// The middle frame of host latents [1, C, T, H, W] (fp32, contiguous) as a PNG PreviewFrame for `step`.
stavid::v1::PreviewFrame make_latent_preview(const std::vector<float>& latents, int channels, int frames, int height,
                                             int width, uint32_t step);

}  // namespace stavid::server
