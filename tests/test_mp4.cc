// Tests for the MP4 muxer (server/media/mp4_writer.h). Every video is synthetic and small (64x48 or
// less), encoded in memory through the ByteSink and decoded back with decode_mp4 (FFmpeg's own H.264
// decoder); quality is PSNR on RGB against the input. Box layout is checked by walking the top-level
// MP4 boxes of the emitted bytes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <numbers>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels/core/error.h"
#include "server/media/mp4_writer.h"

namespace stavid::media {
namespace {

using Bytes = std::vector<uint8_t>;

// ---- helpers ----

// Runs `fn`, expecting a stavid::Error with `code`.
void expect_error(const std::function<void()>& fn, ErrorCode code) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(error_code_name(e.code())), std::string(error_code_name(code))) << e.what();
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-stavid exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "did not throw; expected " << error_code_name(code);
}

#define EXPECT_STAVID_ERROR(stmt, code) \
  do {                                  \
    SCOPED_TRACE(#stmt);                \
    expect_error([&] { stmt; }, code);  \
  } while (0)

// Collects everything the writer emits and counts the sink calls.
struct Capture {
  Bytes bytes;
  int calls = 0;
  ByteSink sink() {
    return [this](const uint8_t* data, size_t size) {
      bytes.insert(bytes.end(), data, data + size);
      ++calls;
    };
  }
};

// A smooth pattern that moves with t: a horizontal sine in R (period 64 pixels), a vertical cosine
// in G (period 48 rows), a diagonal ramp in B. The same pixel has the same value whatever the frame
// size, so small frames are crops of the 64x48 one. Packed RGB24, w * h * 3 bytes.
Bytes gradient_frame(int w, int h, int t) {
  Bytes rgb(static_cast<size_t>(3) * w * h);
  const double two_pi = 2.0 * std::numbers::pi;
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      const double r = 128.0 + 90.0 * std::sin(two_pi * (x / 64.0 + t / 16.0));
      const double g = 128.0 + 90.0 * std::cos(two_pi * y / 48.0 - 0.2 * t);
      const double b = 30.0 + 1.7 * (x + y) + 2.0 * t;
      uint8_t* p = &rgb[(static_cast<size_t>(y) * w + x) * 3];
      p[0] = static_cast<uint8_t>(std::clamp(std::lround(r), 0L, 255L));
      p[1] = static_cast<uint8_t>(std::clamp(std::lround(g), 0L, 255L));
      p[2] = static_cast<uint8_t>(std::clamp(std::lround(b), 0L, 255L));
    }
  }
  return rgb;
}

std::vector<Bytes> gradient_video(int w, int h, int frames) {
  std::vector<Bytes> out;
  for (int t = 0; t < frames; ++t) out.push_back(gradient_frame(w, h, t));
  return out;
}

// Planar float [3, H, W] with value k / 255 for byte k.
std::vector<float> to_planar_f32(const Bytes& rgb, int w, int h) {
  const size_t plane = static_cast<size_t>(w) * h;
  std::vector<float> chw(3 * plane);
  for (size_t i = 0; i < plane; ++i) {
    for (size_t c = 0; c < 3; ++c) chw[c * plane + i] = static_cast<float>(rgb[i * 3 + c]) / 255.0f;
  }
  return chw;
}

Bytes encode_rgb(const std::vector<Bytes>& frames, int w, int h, const Mp4Options& options) {
  Capture capture;
  Mp4Writer writer(w, h, options, capture.sink());
  for (const Bytes& f : frames) writer.add_frame_rgb24(f.data(), 3LL * w);
  writer.finish();
  EXPECT_EQ(writer.bytes_emitted(), static_cast<int64_t>(capture.bytes.size()));
  return capture.bytes;
}

// PSNR in dB over all frames and channels, on the top-left w x h region of the decoded frames.
double psnr(const std::vector<Bytes>& reference, int w, int h, const DecodedVideo& decoded) {
  double sum_sq = 0;
  size_t count = 0;
  const size_t frames = std::min(reference.size(), decoded.frames_rgb24.size());
  for (size_t f = 0; f < frames; ++f) {
    for (int y = 0; y < h; ++y) {
      for (int x = 0; x < w * 3; ++x) {
        const double d = static_cast<double>(reference[f][static_cast<size_t>(y) * w * 3 + x]) -
                         decoded.frames_rgb24[f][static_cast<size_t>(y) * decoded.width * 3 + x];
        sum_sq += d * d;
        ++count;
      }
    }
  }
  if (count == 0) return 0;
  const double mse = sum_sq / static_cast<double>(count);
  return mse == 0 ? std::numeric_limits<double>::infinity() : 10.0 * std::log10(255.0 * 255.0 / mse);
}

uint64_t read_be(const Bytes& b, size_t pos, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | b[pos + i];
  return v;
}

// The four-character types of the top-level boxes, in order; "<bad>" where a box overruns the data.
std::vector<std::string> top_level_boxes(const Bytes& b) {
  std::vector<std::string> types;
  size_t pos = 0;
  while (pos < b.size()) {
    if (pos + 8 > b.size()) {
      types.push_back("<bad>");
      break;
    }
    uint64_t size = read_be(b, pos, 4);
    size_t header = 8;
    if (size == 1) {
      if (pos + 16 > b.size()) {
        types.push_back("<bad>");
        break;
      }
      size = read_be(b, pos + 8, 8);
      header = 16;
    } else if (size == 0) {
      size = b.size() - pos;
    }
    if (size < header || pos + size > b.size()) {
      types.push_back("<bad>");
      break;
    }
    types.emplace_back(reinterpret_cast<const char*>(&b[pos + 4]), 4);
    pos += size;
  }
  return types;
}

ptrdiff_t index_of(const std::vector<std::string>& types, const std::string& type) {
  const auto it = std::find(types.begin(), types.end(), type);
  return it == types.end() ? -1 : it - types.begin();
}

std::string joined(const std::vector<std::string>& types) {
  std::string s;
  for (const auto& t : types) s += (s.empty() ? "" : " ") + t;
  return s;
}

// ---- round trip ----

TEST(Mp4Writer, GradientRoundTripDefaultQuality) {
  const int w = 64, h = 48, n = 17;
  const auto frames = gradient_video(w, h, n);
  const Bytes mp4 = encode_rgb(frames, w, h, Mp4Options{});
  const DecodedVideo video = decode_mp4(mp4);

  ASSERT_EQ(video.frames_rgb24.size(), static_cast<size_t>(n));
  EXPECT_EQ(video.width, w);
  EXPECT_EQ(video.height, h);
  EXPECT_NEAR(video.fps, 24.0, 1e-9);
  EXPECT_EQ(video.codec_name, "h264");
  EXPECT_EQ(video.pixel_format, "yuv420p");
  EXPECT_EQ(video.profile_name, "High");
  EXPECT_EQ(video.color_space, "bt709");
  EXPECT_EQ(video.color_range, "tv");
  const double all = psnr(frames, w, h, video);
  EXPECT_GE(all, 35.0);
  double worst = std::numeric_limits<double>::infinity();
  for (int t = 0; t < n; ++t) {
    DecodedVideo one = video;
    one.frames_rgb24 = {video.frames_rgb24[t]};
    worst = std::min(worst, psnr({frames[t]}, w, h, one));
  }
  EXPECT_GE(worst, 33.0);
  RecordProperty("psnr_db", std::to_string(all));
  RecordProperty("worst_frame_psnr_db", std::to_string(worst));
  RecordProperty("bytes", std::to_string(mp4.size()));
}

TEST(Mp4Writer, FragmentedBytesStreamWhileEncoding) {
  const int w = 64, h = 48, n = 48;
  Mp4Options options;
  options.fps = 8;  // keyframe_interval 0 -> one GOP (and one fragment) per 8 frames
  const auto frames = gradient_video(w, h, n);
  Capture capture;
  Mp4Writer writer(w, h, options, capture.sink());

  // The header is out before the first frame: ftyp, then the (empty) moov.
  ASSERT_GE(capture.calls, 1);
  EXPECT_EQ(joined(top_level_boxes(capture.bytes)), "ftyp moov");
  const size_t header_bytes = capture.bytes.size();
  const int header_calls = capture.calls;

  for (const Bytes& f : frames) writer.add_frame_rgb24(f.data(), 3LL * w);
  const int calls_before_finish = capture.calls;
  const size_t bytes_before_finish = capture.bytes.size();
  // Fragments arrived while frames were still being added, each a whole moof+mdat.
  EXPECT_GE(calls_before_finish, header_calls + 2);
  EXPECT_GT(bytes_before_finish, header_bytes);
  const auto early = top_level_boxes(capture.bytes);
  EXPECT_EQ(index_of(early, "<bad>"), -1) << joined(early);
  EXPECT_GE(std::count(early.begin(), early.end(), "moof"), 2) << joined(early);

  writer.finish();
  EXPECT_TRUE(writer.is_finished());
  EXPECT_GT(capture.bytes.size(), bytes_before_finish);
  EXPECT_EQ(writer.bytes_emitted(), static_cast<int64_t>(capture.bytes.size()));

  const auto boxes = top_level_boxes(capture.bytes);
  ASSERT_GE(boxes.size(), 4u) << joined(boxes);
  EXPECT_EQ(boxes[0], "ftyp");
  EXPECT_EQ(boxes[1], "moov");
  EXPECT_EQ(index_of(boxes, "<bad>"), -1) << joined(boxes);
  EXPECT_LT(index_of(boxes, "moof"), index_of(boxes, "mdat")) << joined(boxes);
  EXPECT_GE(std::count(boxes.begin(), boxes.end(), "moof"), n / options.fps) << joined(boxes);
  EXPECT_EQ(std::count(boxes.begin(), boxes.end(), "moof"), std::count(boxes.begin(), boxes.end(), "mdat"));

  const DecodedVideo video = decode_mp4(capture.bytes);
  ASSERT_EQ(video.frames_rgb24.size(), static_cast<size_t>(n));
  EXPECT_NEAR(video.fps, 8.0, 1e-9);
  EXPECT_GE(psnr(frames, w, h, video), 35.0);
  RecordProperty("sink_calls_before_finish", std::to_string(calls_before_finish));
  RecordProperty("sink_calls_total", std::to_string(capture.calls));
  RecordProperty("boxes", joined(boxes));
}

TEST(Mp4Writer, FaststartPutsMoovBeforeMdat) {
  const int w = 64, h = 48, n = 17;
  Mp4Options options;
  options.fragmented = false;
  const auto frames = gradient_video(w, h, n);
  Capture capture;
  Mp4Writer writer(w, h, options, capture.sink());
  for (const Bytes& f : frames) writer.add_frame_rgb24(f.data(), 3LL * w);
  EXPECT_EQ(capture.calls, 0);  // built in memory, emitted at finish()
  writer.finish();
  ASSERT_GT(capture.calls, 0);
  EXPECT_EQ(writer.bytes_emitted(), static_cast<int64_t>(capture.bytes.size()));

  const auto boxes = top_level_boxes(capture.bytes);
  EXPECT_EQ(index_of(boxes, "<bad>"), -1) << joined(boxes);
  ASSERT_FALSE(boxes.empty());
  EXPECT_EQ(boxes[0], "ftyp");
  ASSERT_GE(index_of(boxes, "moov"), 0) << joined(boxes);
  ASSERT_GE(index_of(boxes, "mdat"), 0) << joined(boxes);
  EXPECT_LT(index_of(boxes, "moov"), index_of(boxes, "mdat")) << joined(boxes);
  EXPECT_EQ(index_of(boxes, "moof"), -1) << joined(boxes);

  const DecodedVideo video = decode_mp4(capture.bytes);
  ASSERT_EQ(video.frames_rgb24.size(), static_cast<size_t>(n));
  EXPECT_NEAR(video.fps, 24.0, 1e-9);
  EXPECT_EQ(video.profile_name, "High");
  const double quality = psnr(frames, w, h, video);
  EXPECT_GE(quality, 35.0);
  RecordProperty("psnr_db", std::to_string(quality));
  RecordProperty("bytes", std::to_string(capture.bytes.size()));
  RecordProperty("boxes", joined(boxes));
}

// ---- sizes ----

TEST(Mp4Writer, OddSizeIsPaddedToEven) {
  const int w = 33, h = 17, n = 9;
  const auto frames = gradient_video(w, h, n);
  Capture capture;
  Mp4Writer writer(w, h, Mp4Options{}, capture.sink());
  EXPECT_EQ(writer.width(), w);
  EXPECT_EQ(writer.height(), h);
  EXPECT_EQ(writer.coded_width(), 34);
  EXPECT_EQ(writer.coded_height(), 18);
  for (const Bytes& f : frames) writer.add_frame_rgb24(f.data(), 3LL * w);
  writer.finish();

  const DecodedVideo video = decode_mp4(capture.bytes);
  ASSERT_EQ(video.frames_rgb24.size(), static_cast<size_t>(n));
  EXPECT_EQ(video.width, 34);
  EXPECT_EQ(video.height, 18);
  const double quality = psnr(frames, w, h, video);
  EXPECT_GE(quality, 35.0);
  RecordProperty("psnr_db_original_region", std::to_string(quality));

  // The padding repeats the last column and row: the decoded padding column (row) matches the input's
  // last column (row). Black or garbage padding would score far below 30 dB.
  std::vector<Bytes> last_column, padding_column, last_row, padding_row;
  for (int t = 0; t < n; ++t) {
    const Bytes& in = frames[t];
    const Bytes& out = video.frames_rgb24[t];
    Bytes in_col, out_col;
    for (int y = 0; y < h; ++y) {
      in_col.insert(in_col.end(), &in[(y * w + w - 1) * 3], &in[(y * w + w - 1) * 3] + 3);
      out_col.insert(out_col.end(), &out[(y * 34 + 33) * 3], &out[(y * 34 + 33) * 3] + 3);
    }
    last_column.push_back(in_col);
    padding_column.push_back(out_col);
    last_row.emplace_back(&in[(h - 1) * w * 3], &in[(h - 1) * w * 3] + 3 * w);
    padding_row.emplace_back(&out[17 * 34 * 3], &out[17 * 34 * 3] + 3 * w);
  }
  DecodedVideo column_video, row_video;
  column_video.width = 1;
  column_video.frames_rgb24 = padding_column;
  row_video.width = w;
  row_video.frames_rgb24 = padding_row;
  const double column_quality = psnr(last_column, 1, h, column_video);
  const double row_quality = psnr(last_row, w, 1, row_video);
  EXPECT_GE(column_quality, 30.0);
  EXPECT_GE(row_quality, 30.0);
  RecordProperty("psnr_db_padding_column", std::to_string(column_quality));
  RecordProperty("psnr_db_padding_row", std::to_string(row_quality));
}

TEST(Mp4Writer, OneFrameVideo) {
  const int w = 64, h = 48;
  const auto frames = gradient_video(w, h, 1);
  for (bool fragmented : {true, false}) {
    SCOPED_TRACE(fragmented ? "fragmented" : "faststart");
    Mp4Options options;
    options.fragmented = fragmented;
    const DecodedVideo video = decode_mp4(encode_rgb(frames, w, h, options));
    ASSERT_EQ(video.frames_rgb24.size(), 1u);
    EXPECT_GE(psnr(frames, w, h, video), 35.0);
  }
  // The smallest frame: 1x1, padded to 2x2.
  const auto dot = gradient_video(1, 1, 1);
  const DecodedVideo tiny = decode_mp4(encode_rgb(dot, 1, 1, Mp4Options{}));
  ASSERT_EQ(tiny.frames_rgb24.size(), 1u);
  EXPECT_EQ(tiny.width, 2);
  EXPECT_EQ(tiny.height, 2);
  for (int c = 0; c < 3; ++c) EXPECT_NEAR(tiny.frames_rgb24[0][c], dot[0][c], 6) << "channel " << c;
}

// ---- input paths ----
// libx264's bitstream is not reproducible bit for bit (see mp4_writer.h), so paths are compared on
// decoded pixels of lossless (CRF 0) files: lossless coding returns exactly the YUV that went in.

Mp4Options lossless_options() {
  Mp4Options options;
  options.crf = 0;
  return options;
}

TEST(PlanarF32ToRgb24, ClampsRoundsAndHonoursStrides) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  // Each float must become the byte next to it.
  // clang-format off
  const std::vector<std::pair<float, uint8_t>> cases = {
      {-0.25f, 0},  {1.75f, 255},         {nan, 0},          {inf, 255},
      {-inf, 0},    {0.0f, 0},            {1.0f, 255},       {100.49f / 255, 100},
      {0.5f, 128},  {100.51f / 255, 101}, {0.2f, 51},        {0.999f, 255},
      {0.001f, 0},  {0.003f, 1},          {77.0f / 255, 77}, {-0.0f, 0}};
  // clang-format on
  const int w = 4, h = 4;
  const int64_t plane_stride = w * h + 7;  // planes with a gap between them
  const int64_t rgb_stride = 3 * w + 5;    // rows with slack after them
  std::vector<float> planes(3 * plane_stride, 0.0f);
  Bytes expected(static_cast<size_t>(rgb_stride) * h, 0xAB);
  for (int i = 0; i < w * h; ++i) {
    for (int c = 0; c < 3; ++c) {
      const auto& [value, byte] = cases[(i + 5 * c) % cases.size()];  // mix the cases across channels
      planes[c * plane_stride + i] = value;
      expected[(i / w) * rgb_stride + (i % w) * 3 + c] = byte;
    }
  }
  Bytes rgb(expected.size(), 0xAB);
  planar_f32_to_rgb24(planes.data(), plane_stride, w, h, rgb.data(), rgb_stride);
  EXPECT_EQ(rgb, expected);  // the slack after each row is untouched

  // Every byte value survives k / 255.
  std::vector<float> ramp(3 * 256);
  for (int k = 0; k < 256; ++k) ramp[k] = ramp[256 + k] = ramp[512 + k] = static_cast<float>(k) / 255.0f;
  Bytes ramp_rgb(3 * 256);
  planar_f32_to_rgb24(ramp.data(), 256, 256, 1, ramp_rgb.data(), 3 * 256);
  for (int k = 0; k < 256; ++k) ASSERT_EQ(ramp_rgb[3 * k], k);

  EXPECT_STAVID_ERROR(planar_f32_to_rgb24(nullptr, 16, 4, 4, rgb.data(), 12), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(planar_f32_to_rgb24(planes.data(), 15, 4, 4, rgb.data(), 12), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(planar_f32_to_rgb24(planes.data(), 16, 4, 4, rgb.data(), 11), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(planar_f32_to_rgb24(planes.data(), 16, 0, 4, rgb.data(), 12), ErrorCode::InvalidArgument);
}

TEST(Mp4Writer, PlanarFloatMatchesRgb24) {
  const int w = 33, h = 18, n = 10;
  const auto frames = gradient_video(w, h, n);
  const DecodedVideo from_rgb = decode_mp4(encode_rgb(frames, w, h, lossless_options()));
  ASSERT_EQ(from_rgb.frames_rgb24.size(), static_cast<size_t>(n));

  // [3, H, W] per frame.
  Capture chw_capture;
  {
    Mp4Writer writer(w, h, lossless_options(), chw_capture.sink());
    for (const Bytes& f : frames) writer.add_frame_planar_f32(to_planar_f32(f, w, h).data());
    writer.finish();
  }
  // One [3, T, H, W] video: frame t at video + t * H * W, planes T * H * W apart.
  const size_t plane = static_cast<size_t>(w) * h;
  std::vector<float> video(3 * n * plane);
  for (int t = 0; t < n; ++t) {
    const auto chw = to_planar_f32(frames[t], w, h);
    for (size_t c = 0; c < 3; ++c) {
      std::copy_n(chw.begin() + c * plane, plane, video.begin() + (c * n + t) * plane);
    }
  }
  Capture cthw_capture;
  {
    Mp4Writer writer(w, h, lossless_options(), cthw_capture.sink());
    for (int t = 0; t < n; ++t) writer.add_frame_planar_f32(video.data() + t * plane, static_cast<int64_t>(n * plane));
    writer.finish();
  }
  EXPECT_TRUE(decode_mp4(chw_capture.bytes).frames_rgb24 == from_rgb.frames_rgb24);
  EXPECT_TRUE(decode_mp4(cthw_capture.bytes).frames_rgb24 == from_rgb.frames_rgb24);
}

TEST(Mp4Writer, PlanarFloatOutOfRangeMatchesClampedRgb24) {
  // Floats outside [0, 1] (and NaN) code exactly like the clamped bytes.
  const int w = 16, h = 8;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<std::pair<float, uint8_t>> cases = {{-3.0f, 0}, {2.5f, 255}, {nan, 0}, {0.5f, 128}, {0.1f, 26}};
  std::vector<float> chw(3 * w * h);
  Bytes rgb(3 * w * h);
  for (int i = 0; i < w * h; ++i) {
    for (int c = 0; c < 3; ++c) {
      const auto& [value, byte] = cases[(i / 3 + c) % cases.size()];
      chw[c * w * h + i] = value;
      rgb[i * 3 + c] = byte;
    }
  }
  Capture from_float;
  {
    Mp4Writer writer(w, h, lossless_options(), from_float.sink());
    writer.add_frame_planar_f32(chw.data());
    writer.finish();
  }
  const DecodedVideo expected = decode_mp4(encode_rgb({rgb}, w, h, lossless_options()));
  EXPECT_TRUE(decode_mp4(from_float.bytes).frames_rgb24 == expected.frames_rgb24);
}

TEST(Mp4Writer, RowStrideIsHonoured) {
  const int w = 30, h = 20, n = 5;
  const auto frames = gradient_video(w, h, n);
  const int64_t stride = 3 * w + 13;
  Capture capture;
  {
    Mp4Writer writer(w, h, lossless_options(), capture.sink());
    for (const Bytes& f : frames) {
      Bytes strided(static_cast<size_t>(stride) * h, 0xEE);
      for (int y = 0; y < h; ++y) std::copy_n(&f[static_cast<size_t>(y) * w * 3], 3 * w, &strided[y * stride]);
      writer.add_frame_rgb24(strided.data(), stride);
    }
    writer.finish();
  }
  const DecodedVideo packed = decode_mp4(encode_rgb(frames, w, h, lossless_options()));
  const DecodedVideo strided = decode_mp4(capture.bytes);
  ASSERT_EQ(strided.frames_rgb24.size(), static_cast<size_t>(n));
  EXPECT_TRUE(strided.frames_rgb24 == packed.frames_rgb24);
}

// ---- quality settings ----

TEST(Mp4Writer, CrfExtremesDecodeAndOrderSizes) {
  const int w = 64, h = 48, n = 17;
  const auto frames = gradient_video(w, h, n);
  std::vector<size_t> sizes;
  std::vector<double> qualities;
  for (int crf : {0, 18, 51}) {
    SCOPED_TRACE("crf " + std::to_string(crf));
    Mp4Options options;
    options.crf = crf;
    const Bytes mp4 = encode_rgb(frames, w, h, options);
    const DecodedVideo video = decode_mp4(mp4);
    ASSERT_EQ(video.frames_rgb24.size(), static_cast<size_t>(n));
    EXPECT_EQ(video.pixel_format, "yuv420p");
    EXPECT_EQ(video.profile_name, crf == 0 ? "High 4:4:4 Predictive" : "High");
    sizes.push_back(mp4.size());
    qualities.push_back(psnr(frames, w, h, video));
    RecordProperty("bytes_crf" + std::to_string(crf), std::to_string(mp4.size()));
    RecordProperty("psnr_db_crf" + std::to_string(crf), std::to_string(qualities.back()));
  }
  EXPECT_GT(sizes[0], sizes[1]);
  EXPECT_GT(sizes[1], sizes[2]);
  EXPECT_GE(qualities[0], qualities[1]);  // lossless YUV: only the RGB <-> YUV 4:2:0 round trip is left
  EXPECT_GT(qualities[1], qualities[2]);
  EXPECT_GE(qualities[0], 40.0);
  EXPECT_GE(qualities[2], 15.0);  // coarse, but still the same picture
}

TEST(Mp4Writer, FasterPresetStillDecodes) {
  const int w = 64, h = 48, n = 8;
  const auto frames = gradient_video(w, h, n);
  Mp4Options options;
  options.preset = "ultrafast";
  options.encoder_threads = 1;
  options.keyframe_interval = 4;
  const DecodedVideo video = decode_mp4(encode_rgb(frames, w, h, options));
  ASSERT_EQ(video.frames_rgb24.size(), static_cast<size_t>(n));
  EXPECT_GE(psnr(frames, w, h, video), 35.0);
}

// ---- errors and lifetime ----

TEST(Mp4Writer, InvalidArgumentsThrowInvalidArgument) {
  Capture capture;
  const auto make = [&](int w, int h, const Mp4Options& o) { Mp4Writer writer(w, h, o, capture.sink()); };
  const Mp4Options ok;
  EXPECT_STAVID_ERROR(make(0, 48, ok), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(make(64, -1, ok), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(make(8193, 48, ok), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(make(64, 8193, ok), ErrorCode::InvalidArgument);
  const auto with = [&](const std::function<void(Mp4Options&)>& edit) {
    Mp4Options o;
    edit(o);
    return o;
  };
  EXPECT_STAVID_ERROR(make(64, 48, with([](Mp4Options& o) { o.fps = 0; })), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(make(64, 48, with([](Mp4Options& o) { o.fps = 241; })), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(make(64, 48, with([](Mp4Options& o) { o.crf = -1; })), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(make(64, 48, with([](Mp4Options& o) { o.crf = 52; })), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(make(64, 48, with([](Mp4Options& o) { o.preset = "turbo"; })), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(make(64, 48, with([](Mp4Options& o) { o.preset = ""; })), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(make(64, 48, with([](Mp4Options& o) { o.keyframe_interval = -1; })), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(make(64, 48, with([](Mp4Options& o) { o.encoder_threads = -2; })), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(Mp4Writer(64, 48, ok, ByteSink{}), ErrorCode::InvalidArgument);
  EXPECT_EQ(capture.calls, 0);  // nothing was emitted by a rejected writer

  Mp4Writer writer(64, 48, ok, capture.sink());
  const Bytes frame(3 * 64 * 48, 0);
  const std::vector<float> planar(3 * 64 * 48, 0.f);
  EXPECT_STAVID_ERROR(writer.add_frame_rgb24(nullptr, 192), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(writer.add_frame_rgb24(frame.data(), 191), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(writer.add_frame_planar_f32(nullptr), ErrorCode::InvalidArgument);
  EXPECT_STAVID_ERROR(writer.add_frame_planar_f32(planar.data(), 64 * 48 - 1), ErrorCode::InvalidArgument);
  // Rejected frames leave the writer usable.
  EXPECT_EQ(writer.frame_count(), 0);
  writer.add_frame_rgb24(frame.data(), 192);
  writer.finish();
  EXPECT_EQ(decode_mp4(capture.bytes).frames_rgb24.size() >= 1, true);
}

TEST(Mp4Writer, MisuseAroundFinish) {
  const Bytes frame = gradient_frame(32, 32, 0);
  for (bool fragmented : {true, false}) {
    SCOPED_TRACE(fragmented ? "fragmented" : "faststart");
    Mp4Options options;
    options.fragmented = fragmented;
    Capture capture;
    Mp4Writer writer(32, 32, options, capture.sink());
    EXPECT_STAVID_ERROR(writer.finish(), ErrorCode::InvalidArgument);  // no frames yet; stays open
    EXPECT_FALSE(writer.is_finished());
    writer.add_frame_rgb24(frame.data(), 96);
    writer.finish();
    EXPECT_TRUE(writer.is_finished());
    const size_t size = capture.bytes.size();
    EXPECT_STAVID_ERROR(writer.add_frame_rgb24(frame.data(), 96), ErrorCode::InvalidArgument);
    const std::vector<float> planar(3 * 32 * 32, 0.5f);
    EXPECT_STAVID_ERROR(writer.add_frame_planar_f32(planar.data()), ErrorCode::InvalidArgument);
    EXPECT_STAVID_ERROR(writer.finish(), ErrorCode::InvalidArgument);
    EXPECT_EQ(capture.bytes.size(), size);
    EXPECT_EQ(writer.frame_count(), 1);
    EXPECT_EQ(decode_mp4(capture.bytes).frames_rgb24.size(), 1u);
  }
}

TEST(Mp4Writer, DestructionWithoutFinishDiscards) {
  const auto frames = gradient_video(64, 48, 20);
  for (bool fragmented : {true, false}) {
    SCOPED_TRACE(fragmented ? "fragmented" : "faststart");
    Mp4Options options;
    options.fragmented = fragmented;
    options.fps = 8;
    Capture capture;
    size_t before = 0;
    {
      Mp4Writer writer(64, 48, options, capture.sink());
      for (const Bytes& f : frames) writer.add_frame_rgb24(f.data(), 192);
      before = capture.bytes.size();
    }
    EXPECT_EQ(capture.bytes.size(), before);  // the destructor sends nothing
    if (!fragmented) {
      EXPECT_EQ(before, 0u);
    }
  }
  Capture idle;
  { Mp4Writer writer(64, 48, Mp4Options{}, idle.sink()); }
  EXPECT_EQ(joined(top_level_boxes(idle.bytes)), "ftyp moov");
}

struct SinkGone {};

TEST(Mp4Writer, SinkExceptionPropagatesAndStopsTheWriter) {
  const auto frames = gradient_video(64, 48, 40);
  Mp4Options options;
  options.fps = 4;
  int calls = 0;
  bool armed = false;  // the header gets through, the first fragment does not
  Mp4Writer writer(64, 48, options, [&](const uint8_t*, size_t) {
    ++calls;
    if (armed) throw SinkGone{};
  });
  armed = true;
  const int header_calls = calls;
  int thrown = 0;
  size_t added = 0;
  for (; added < frames.size() && thrown == 0; ++added) {
    try {
      writer.add_frame_rgb24(frames[added].data(), 192);
    } catch (const SinkGone&) {
      ++thrown;
    }
  }
  if (thrown == 0) {
    try {
      writer.finish();
    } catch (const SinkGone&) {
      ++thrown;
    }
  }
  EXPECT_EQ(thrown, 1);
  EXPECT_LT(added, frames.size());  // it surfaced from add_frame_rgb24, at the first fragment
  EXPECT_EQ(calls, header_calls + 1);
  EXPECT_STAVID_ERROR(writer.add_frame_rgb24(frames[0].data(), 192), ErrorCode::Internal);
  EXPECT_STAVID_ERROR(writer.finish(), ErrorCode::Internal);
  EXPECT_EQ(calls, header_calls + 1);  // a failed writer never calls the sink again

  // A sink that fails on the header fails the constructor with its own exception.
  EXPECT_THROW(Mp4Writer(64, 48, Mp4Options{}, [](const uint8_t*, size_t) { throw SinkGone{}; }), SinkGone);
}

TEST(Mp4Writer, MoveKeepsTheStream) {
  const auto frames = gradient_video(32, 32, 6);
  Capture capture;
  Mp4Writer first(32, 32, Mp4Options{}, capture.sink());
  first.add_frame_rgb24(frames[0].data(), 96);
  Mp4Writer second(std::move(first));
  for (size_t t = 1; t < frames.size(); ++t) second.add_frame_rgb24(frames[t].data(), 96);
  second.finish();
  EXPECT_EQ(decode_mp4(capture.bytes).frames_rgb24.size(), frames.size());
  // A moved-from writer refuses work instead of crashing.
  // NOLINTNEXTLINE(bugprone-use-after-move)
  EXPECT_STAVID_ERROR(first.add_frame_rgb24(frames[0].data(), 96), ErrorCode::InvalidArgument);
}

TEST(DecodeMp4, RejectsBytesThatAreNotAnMp4) {
  EXPECT_STAVID_ERROR(decode_mp4(Bytes{}), ErrorCode::DataLoss);
  Bytes noise(4096);
  for (size_t i = 0; i < noise.size(); ++i) noise[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);
  EXPECT_STAVID_ERROR(decode_mp4(noise), ErrorCode::DataLoss);
}

}  // namespace
}  // namespace stavid::media
