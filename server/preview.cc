#include "server/preview.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "kernels/core/error.h"
#include "server/media/image.h"

namespace stavid::server {

std::vector<float> latent_rgb_matrix(int channels) {
  STAVID_CHECK(channels >= 1, "preview: channels must be >= 1");
  std::vector<float> m(static_cast<size_t>(3) * channels);
  const double scale = std::sqrt(2.0 / channels);
  for (int k = 0; k < 3; ++k)
    for (int c = 0; c < channels; ++c)
      m[static_cast<size_t>(k) * channels + c] = static_cast<float>(
          scale * std::cos(2.0 * std::numbers::pi * (static_cast<double>(c) / channels + k / 3.0)));
  return m;
}

std::vector<uint8_t> latent_frame_to_rgb24(const float* frame, int channels, int height, int width,
                                           int64_t channel_stride) {
  STAVID_CHECK(frame != nullptr && height >= 1 && width >= 1, "preview: empty frame");
  STAVID_CHECK(channel_stride >= static_cast<int64_t>(height) * width, "preview: channel stride too small");
  const std::vector<float> m = latent_rgb_matrix(channels);
  std::vector<uint8_t> rgb(static_cast<size_t>(3) * height * width);
  for (int64_t p = 0; p < static_cast<int64_t>(height) * width; ++p)
    for (int k = 0; k < 3; ++k) {
      double acc = 0;
      for (int c = 0; c < channels; ++c) acc += m[static_cast<size_t>(k) * channels + c] * frame[c * channel_stride + p];
      const double v = 0.5 + 0.25 * acc;
      const double clamped = std::isnan(v) ? 0.0 : std::clamp(v, 0.0, 1.0);
      rgb[static_cast<size_t>(p) * 3 + k] = static_cast<uint8_t>(std::floor(clamped * 255.0 + 0.5));
    }
  return rgb;
}

stavid::v1::PreviewFrame make_latent_preview(const std::vector<float>& latents, int channels, int frames, int height,
                                             int width, uint32_t step) {
  const int64_t plane = static_cast<int64_t>(height) * width;
  STAVID_CHECK(frames >= 1 && static_cast<int64_t>(latents.size()) == channels * frames * plane,
               "preview: latents hold ", latents.size(), " values, expected ", channels, " x ", frames, " x ", height,
               " x ", width);
  const int t = frames / 2;
  const std::vector<uint8_t> rgb =
      latent_frame_to_rgb24(latents.data() + t * plane, channels, height, width, /*channel_stride=*/frames * plane);
  const std::vector<uint8_t> png = media::encode_png(rgb.data(), width, height, 3 * static_cast<int64_t>(width));
  stavid::v1::PreviewFrame out;
  out.set_step(step);
  out.set_width(static_cast<uint32_t>(width));
  out.set_height(static_cast<uint32_t>(height));
  out.set_mime_type("image/png");
  out.set_data(png.data(), png.size());
  return out;
}

}  // namespace stavid::server
