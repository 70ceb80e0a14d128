// Frames -> H.264 MP4 bytes, on FFmpeg's libraries (libavcodec with libx264, libavformat, libswscale).
// The generation pipeline produces frames; this muxer turns them into bytes; the service streams the
// bytes. No FFmpeg type appears in this header, and nothing here knows about tensors or gRPC.
//
// Policy:
// - Output is what browsers play: H.264 High profile, yuv420p, in an MP4. Colour is BT.709 primaries,
//   transfer and matrix, limited ("TV", 16-235) range, and the encoder writes those tags into the SPS
//   VUI and the MP4's colr box so players do not guess. (CRF 0 is the exception: see Mp4Options::crf.)
// - Input is 8-bit RGB (full range 0-255), interleaved or as planar float in [0, 1] (the VAE's layout).
//   Floats are clamped to [0, 1], NaN maps to 0, and x is stored as floor(x * 255 + 0.5), so a float
//   k / 255 gives exactly the byte k and both input paths hand the encoder the same pixels.
// - yuv420p needs an even width and height. An odd size is padded by one column and/or row that repeats
//   the last column/row; the MP4 then has the padded (even) size. Padding, not cropping, so no input
//   pixel is lost; replication keeps the chroma of the edge pixels clean.
// - Every byte of the file goes to the ByteSink, in order; no temporary files.
//   Fragmented (default): ftyp and an empty moov come first (during construction), then one moof+mdat
//   fragment per GOP (Mp4Options::keyframe_interval frames) as soon as the encoder has produced it, so
//   bytes stream while encoding runs. A fragment goes out once the encoder has emitted the next
//   GOP's first packet; libx264's lookahead and frame threads hold back about one more GOP, so the
//   bytes trail the input by about two GOPs (measured: the first 24-frame fragment at 24 fps leaves
//   after frame 50). A shorter keyframe_interval lowers the lag and costs some compression.
//   Non-fragmented ("faststart"): the file is built in a seekable in-memory buffer, FFmpeg's faststart
//   pass moves the moov in front of the mdat, and the whole file goes to the sink at finish(). Memory
//   use is the size of the file.
// - The bytes are not reproducible bit for bit: with Debian 12's FFmpeg 5.1 and libx264 164, two
//   encodes of the same frames sometimes give different (equally good) bitstreams at the presets that
//   use lookahead (seen with medium and veryfast at CRF 18, any thread count; not with ultrafast or
//   CRF 0). Compare decoded pixels, not bytes.
// - Each sink call carries at most 64 KiB. A sink that throws aborts the call in progress: the same
//   exception comes out of the constructor, add_frame_* or finish(), and the writer is unusable after.
// - Errors are stavid::Error: bad arguments and misuse (frames after finish()) InvalidArgument, a
//   missing libx264 Unsupported, a failed FFmpeg call Internal (OutOfMemory for ENOMEM), with FFmpeg's
//   error text and what was being done.
// - Not thread-safe: one thread drives a writer at a time. Distinct writers are independent.
// - FFmpeg's log output is routed to STAVID_LOG once the first writer or decoder is made (errors and
//   warnings at those levels, everything else at Debug); this sets FFmpeg's process-wide log callback,
//   which is fine because this module is the process's only FFmpeg user.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace stavid::media {

struct Mp4Options {
  // Frames per second, 1..240. The stream's time base is 1/fps; frame i has pts i.
  int fps = 24;
  // libx264 constant rate factor, 0..51: lower is better and bigger; 18 is visually lossless for most
  // content. 0 is mathematically lossless, which H.264 High profile cannot express: CRF 0 switches to
  // the High 4:4:4 Predictive profile (still yuv420p), which FFmpeg decodes but browsers generally do
  // not play. Use 1..51 for files meant for browsers.
  int crf = 18;
  // libx264 preset: ultrafast, superfast, veryfast, faster, fast, medium, slow, slower, veryslow,
  // placebo. Faster presets give bigger files at the same CRF.
  std::string preset = "medium";
  // true: fragmented MP4 (ftyp, empty moov, then moof+mdat per GOP) that streams while encoding.
  // false: a classic MP4 with moov before mdat (faststart), emitted in one go at finish().
  bool fragmented = true;
  // Frames per GOP, which is also the fragment length when fragmented. 0 means fps (one second).
  // libx264 may start an extra GOP at a scene cut. Range 0..3600.
  int keyframe_interval = 0;
  // libx264 threads, 0..64; 0 lets libx264 choose (1.5 per core).
  int encoder_threads = 0;
};

// Receives the MP4's bytes in order. Called only from within the writer's own calls.
using ByteSink = std::function<void(const uint8_t* data, size_t size)>;

class Mp4Writer {
 public:
  static constexpr int kMaxDimension = 8192;

  // Validates everything, opens the encoder and the muxer, and (when fragmented) sends the header
  // (ftyp + moov) to the sink before returning. width, height in 1..kMaxDimension: the input size.
  Mp4Writer(int width, int height, const Mp4Options& options, ByteSink sink);
  // Without finish() the video is discarded: nothing more goes to the sink (a fragmented stream ends
  // after its last complete fragment), and every FFmpeg object is freed.
  ~Mp4Writer();
  Mp4Writer(const Mp4Writer&) = delete;
  Mp4Writer& operator=(const Mp4Writer&) = delete;
  Mp4Writer(Mp4Writer&&) noexcept;
  Mp4Writer& operator=(Mp4Writer&&) noexcept;

  // One frame of 8-bit RGB, interleaved (R, G, B per pixel), rows top to bottom, `stride_bytes`
  // (>= 3 * width) between the starts of consecutive rows.
  void add_frame_rgb24(const uint8_t* rgb, int64_t stride_bytes);
  // One frame of planar float RGB in [0, 1]: the R plane at `planes`, G at planes + plane_stride,
  // B at planes + 2 * plane_stride, each plane height rows of width contiguous floats.
  // plane_stride >= width * height (in elements): width * height for a [3, H, W] frame, or T * H * W
  // for frame t of a [3, T, H, W] video (pass planes = video + t * H * W).
  void add_frame_planar_f32(const float* planes, int64_t plane_stride);
  // A contiguous [3, H, W] frame: plane_stride = width * height.
  void add_frame_planar_f32(const float* chw);

  // Flushes the encoder, writes the trailer and sends the remaining bytes to the sink. Needs at least
  // one frame (InvalidArgument otherwise, and the writer stays open). After finish() every add_frame_*
  // and finish() throws InvalidArgument.
  void finish();

  int width() const;              // the input width
  int height() const;             // the input height
  int coded_width() const;        // the MP4's width: width rounded up to even
  int coded_height() const;       // the MP4's height: height rounded up to even
  int64_t frame_count() const;    // frames accepted so far
  int64_t bytes_emitted() const;  // bytes handed to the sink so far
  bool is_finished() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// The conversion behind Mp4Writer::add_frame_planar_f32, for previews and tests: planar float RGB in
// [0, 1] (R at planes, G at planes + plane_stride, B at planes + 2 * plane_stride, each plane height
// rows of width floats) to packed RGB24 rows `rgb_stride` (>= 3 * width) bytes apart. Clamps to [0, 1],
// maps NaN to 0, and rounds half up: x -> floor(x * 255 + 0.5).
void planar_f32_to_rgb24(const float* planes, int64_t plane_stride, int width, int height, uint8_t* rgb,
                         int64_t rgb_stride);

// A decoded video, for verification (tests and tools); not used on the serving path.
struct DecodedVideo {
  int width = 0;  // the coded (display) size of the stream
  int height = 0;
  double fps = 0;            // the stream's frame rate as FFmpeg guesses it
  std::string codec_name;    // "h264"
  std::string pixel_format;  // "yuv420p"
  std::string profile_name;  // "High", "High 4:4:4 Predictive", ...
  std::string color_space;   // matrix tag as FFmpeg names it: "bt709", "unknown", ...
  std::string color_range;   // "tv" (limited), "pc" (full) or "unknown"
  // One packed RGB24 buffer (width * height * 3 bytes) per frame, in presentation order. Converted
  // with the stream's tagged matrix and range (BT.601 limited when untagged).
  std::vector<std::vector<uint8_t>> frames_rgb24;
};

// Demuxes and decodes an in-memory MP4 (first video stream) with FFmpeg's own decoders. Bytes that
// are not a decodable MP4 throw DataLoss; a codec this FFmpeg cannot decode throws Unsupported.
DecodedVideo decode_mp4(const uint8_t* data, size_t size);
DecodedVideo decode_mp4(const std::vector<uint8_t>& bytes);

}  // namespace stavid::media
