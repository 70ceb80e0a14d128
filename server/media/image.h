// Still images (PNG) on FFmpeg's libavcodec, for the low-resolution preview frames a job streams while
// it denoises. Like mp4_writer.h: raw 8-bit RGB in, bytes out; no FFmpeg type in this header.
//
// Policy:
// - PNG, 8-bit RGB (colour type 2), no alpha, lossless: decode_png gives back exactly the input pixels.
// - Errors are stavid::Error: bad arguments InvalidArgument, a missing PNG codec Unsupported, a failed
//   FFmpeg call Internal (OutOfMemory for ENOMEM); bytes that are not a decodable PNG DataLoss.
// - Thread-safe: every call uses its own codec context.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace stavid::media {

// Packed RGB24 rows (R, G, B per pixel), `stride_bytes` (>= 3 * width) apart -> PNG file bytes.
// width, height in 1..8192.
std::vector<uint8_t> encode_png(const uint8_t* rgb, int width, int height, int64_t stride_bytes);

// A decoded still image, for verification (tests and tools).
struct DecodedImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb24;  // width * height * 3 bytes, rows top to bottom
};
// Decodes PNG bytes whose pixels are RGB24 (what encode_png writes); other PNG pixel formats throw
// Unsupported.
DecodedImage decode_png(const uint8_t* data, size_t size);

}  // namespace stavid::media
