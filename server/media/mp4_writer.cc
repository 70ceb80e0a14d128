// The MP4 muxer and the verification decoder on FFmpeg (policy: see mp4_writer.h).
// Invariants kept here:
// - Every FFmpeg object is owned by a unique_ptr with a deleter; members are declared so that the
//   format context dies before the AVIOContext it writes to, and both before the memory they point at.
// - Every FFmpeg return value is checked; a failure throws stavid::Error naming what was being done,
//   with av_strerror's text. A sink exception is caught in the AVIO write callback (it must not unwind
//   through C frames), parked, and rethrown as itself once the FFmpeg call returns.
// - Frames go through one staging RGB24 buffer of the coded (even) size, with 64-byte aligned rows and
//   slack after the end, so swscale never reads the caller's memory out of bounds and padding is done
//   in one place.
// - Frame i has pts i in time base 1/fps; packets are rescaled to the stream's time base (the MP4
//   muxer picks its own timescale) and given a duration of one frame.
#include "server/media/mp4_writer.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavformat/avio.h>
#include <libavutil/avutil.h>
#include <libavutil/dict.h>
#include <libavutil/error.h>
#include <libavutil/frame.h>
#include <libavutil/log.h>
#include <libavutil/mem.h>
#include <libavutil/opt.h>
#include <libavutil/pixdesc.h>
#include <libswscale/swscale.h>
}

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <string_view>
#include <utility>

#include "kernels/core/error.h"
#include "kernels/core/log.h"

namespace stavid::media {
namespace {

constexpr int kIoBufferBytes = 64 * 1024;  // AVIO buffer, and so the largest sink call
constexpr int kRowAlignBytes = 64;         // staging row alignment (SIMD-friendly for swscale)
constexpr int kSlackBytes = 64;            // after each staging buffer: swscale's SIMD may over-read
constexpr int kMaxFps = 240;
constexpr int kMaxCrf = 51;
constexpr int kMaxKeyframeInterval = 3600;
constexpr int kMaxEncoderThreads = 64;
constexpr std::array<std::string_view, 10> kX264Presets = {"ultrafast", "superfast", "veryfast", "faster",   "fast",
                                                           "medium",    "slow",      "slower",   "veryslow", "placebo"};
// swscale: bicubic for the chroma resampling, accurate rounding, chroma computed at full horizontal
// resolution before it is filtered down (input) or interpolated back up (output).
constexpr int kSwsFlagsToYuv = SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INP;
constexpr int kSwsFlagsToRgb = SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT;

// The AVIO write callback's buffer became const in libavformat 61 (FFmpeg 7).
#if LIBAVFORMAT_VERSION_MAJOR >= 61
using AvioWriteBuffer = const uint8_t*;
#else
using AvioWriteBuffer = uint8_t*;
#endif

// ---- ownership ----
struct CodecContextDeleter {
  void operator()(AVCodecContext* p) const { avcodec_free_context(&p); }
};
struct OutputFormatDeleter {
  void operator()(AVFormatContext* p) const { avformat_free_context(p); }
};
struct InputFormatDeleter {
  void operator()(AVFormatContext* p) const { avformat_close_input(&p); }
};
// Frees the context and its current buffer (AVIO may have replaced the one it was given).
struct IoContextDeleter {
  void operator()(AVIOContext* p) const {
    av_freep(&p->buffer);
    avio_context_free(&p);
  }
};
struct FrameDeleter {
  void operator()(AVFrame* p) const { av_frame_free(&p); }
};
struct PacketDeleter {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct SwsDeleter {
  void operator()(SwsContext* p) const { sws_freeContext(p); }
};
struct AvFreeDeleter {
  void operator()(uint8_t* p) const { av_free(p); }
};
using CodecContextPtr = std::unique_ptr<AVCodecContext, CodecContextDeleter>;
using OutputFormatPtr = std::unique_ptr<AVFormatContext, OutputFormatDeleter>;
using InputFormatPtr = std::unique_ptr<AVFormatContext, InputFormatDeleter>;
using IoContextPtr = std::unique_ptr<AVIOContext, IoContextDeleter>;
using FramePtr = std::unique_ptr<AVFrame, FrameDeleter>;
using PacketPtr = std::unique_ptr<AVPacket, PacketDeleter>;
using SwsPtr = std::unique_ptr<SwsContext, SwsDeleter>;
using AvBufferPtr = std::unique_ptr<uint8_t, AvFreeDeleter>;

// An AVDictionary owned for one call that takes AVDictionary**.
class Dictionary {
 public:
  Dictionary() = default;
  Dictionary(const Dictionary&) = delete;
  Dictionary& operator=(const Dictionary&) = delete;
  ~Dictionary() { av_dict_free(&dict_); }
  AVDictionary** address() { return &dict_; }
  int count() const { return av_dict_count(dict_); }
  std::string keys() const {
    std::string out;
    const AVDictionaryEntry* e = nullptr;
    while ((e = av_dict_get(dict_, "", e, AV_DICT_IGNORE_SUFFIX)) != nullptr) {
      if (!out.empty()) out += ", ";
      out += e->key;
    }
    return out;
  }

 private:
  AVDictionary* dict_ = nullptr;
};

// ---- errors ----
std::string av_error_text(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(err, buf, sizeof(buf));  // fills a generic text for unknown codes
  return buf;
}

[[noreturn]] void throw_av_error(ErrorCode code, int err, const char* what, const char* file, int line) {
  if (err == AVERROR(ENOMEM)) code = ErrorCode::OutOfMemory;
  detail::throw_error(code, detail::str_cat(what, " failed: ", av_error_text(err), " (", err, ")"), file, line);
}

// Throws `code` (OutOfMemory for ENOMEM) when an FFmpeg call returned a negative error.
#define STAVID_AV_CHECK_CODE(expr, code, what)                                                  \
  do {                                                                                          \
    const int stavid_av_ret_ = (expr);                                                          \
    if (stavid_av_ret_ < 0) throw_av_error((code), stavid_av_ret_, (what), __FILE__, __LINE__); \
  } while (0)
#define STAVID_AV_CHECK(expr, what) STAVID_AV_CHECK_CODE(expr, ::stavid::ErrorCode::Internal, what)

template <typename T>
T* check_alloc(T* p, const char* what) {
  if (p == nullptr) STAVID_THROW(ErrorCode::OutOfMemory, "allocating ", what, " failed");
  return p;
}

// ---- FFmpeg's log into STAVID_LOG ----
void ffmpeg_log_callback(void* avcl, int level, const char* fmt, va_list args) {
  if (level > av_log_get_level()) return;
  const LogLevel mapped = level <= AV_LOG_ERROR     ? LogLevel::Error
                          : level <= AV_LOG_WARNING ? LogLevel::Warn
                                                    : LogLevel::Debug;
  if (mapped < log_level()) return;
  char line[1024];
  int print_prefix = 1;
  if (av_log_format_line2(avcl, level, fmt, args, line, sizeof(line), &print_prefix) < 0) return;
  size_t n = std::strlen(line);
  while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) --n;
  if (n == 0) return;
  const std::string_view text(line, n);
  switch (mapped) {
    case LogLevel::Error:
      STAVID_LOG(Error) << "ffmpeg: " << text;
      break;
    case LogLevel::Warn:
      STAVID_LOG(Warn) << "ffmpeg: " << text;
      break;
    case LogLevel::Info:
    case LogLevel::Debug:
      STAVID_LOG(Debug) << "ffmpeg: " << text;
      break;
  }
}

void install_ffmpeg_log_bridge() {
  static std::once_flag once;
  std::call_once(once, [] { av_log_set_callback(ffmpeg_log_callback); });
}

// ---- in-memory AVIO ----
// Resolves an AVIO seek request against a stream of `size` bytes at `pos`.
int64_t resolve_seek(int64_t pos, int64_t size, int64_t offset, int whence) {
  int64_t target = 0;
  switch (whence & ~AVSEEK_FORCE) {
    case AVSEEK_SIZE:
      return size;
    case SEEK_SET:
      target = offset;
      break;
    case SEEK_CUR:
      target = pos + offset;
      break;
    case SEEK_END:
      target = size + offset;
      break;
    default:
      return AVERROR(EINVAL);
  }
  return target < 0 ? AVERROR(EINVAL) : target;
}

int read_span(const uint8_t* data, int64_t size, int64_t* pos, uint8_t* buf, int buf_size) {
  if (*pos >= size) return AVERROR_EOF;
  const int64_t n = std::min<int64_t>(buf_size, size - *pos);
  std::memcpy(buf, data + *pos, static_cast<size_t>(n));
  *pos += n;
  return static_cast<int>(n);
}

// A growable, seekable byte vector: the non-fragmented file while it is built. Several cursors (the
// muxer's writer and the faststart pass's reader) may share one vector.
struct VectorCursor {
  std::vector<uint8_t>* bytes;
  int64_t pos = 0;
};

int vector_write(void* opaque, AvioWriteBuffer buf, int buf_size) {
  auto* c = static_cast<VectorCursor*>(opaque);
  try {
    const size_t end = static_cast<size_t>(c->pos) + static_cast<size_t>(buf_size);
    if (end > c->bytes->size()) c->bytes->resize(end);
    std::memcpy(c->bytes->data() + c->pos, buf, static_cast<size_t>(buf_size));
    c->pos = static_cast<int64_t>(end);
    return buf_size;
  } catch (const std::bad_alloc&) {
    return AVERROR(ENOMEM);
  }
}

int vector_read(void* opaque, uint8_t* buf, int buf_size) {
  auto* c = static_cast<VectorCursor*>(opaque);
  return read_span(c->bytes->data(), static_cast<int64_t>(c->bytes->size()), &c->pos, buf, buf_size);
}

int64_t vector_seek(void* opaque, int64_t offset, int whence) {
  auto* c = static_cast<VectorCursor*>(opaque);
  const int64_t target = resolve_seek(c->pos, static_cast<int64_t>(c->bytes->size()), offset, whence);
  if (target >= 0 && (whence & ~AVSEEK_FORCE) != AVSEEK_SIZE) c->pos = target;
  return target;
}

// A read-only view of caller memory: the decoder's input.
struct SpanCursor {
  const uint8_t* data;
  int64_t size;
  int64_t pos = 0;
};

int span_read(void* opaque, uint8_t* buf, int buf_size) {
  auto* c = static_cast<SpanCursor*>(opaque);
  return read_span(c->data, c->size, &c->pos, buf, buf_size);
}

int64_t span_seek(void* opaque, int64_t offset, int whence) {
  auto* c = static_cast<SpanCursor*>(opaque);
  const int64_t target = resolve_seek(c->pos, c->size, offset, whence);
  if (target >= 0 && (whence & ~AVSEEK_FORCE) != AVSEEK_SIZE) c->pos = target;
  return target;
}

using ReadFn = int (*)(void*, uint8_t*, int);
using WriteFn = int (*)(void*, AvioWriteBuffer, int);
using SeekFn = int64_t (*)(void*, int64_t, int);

// An AVIOContext over `opaque` with a fresh kIoBufferBytes buffer. Writable iff `write` is set.
IoContextPtr make_io(void* opaque, ReadFn read, WriteFn write, SeekFn seek) {
  auto* buffer = static_cast<uint8_t*>(av_malloc(kIoBufferBytes));
  check_alloc(buffer, "an AVIO buffer");
  AVIOContext* io = avio_alloc_context(buffer, kIoBufferBytes, write != nullptr ? 1 : 0, opaque, read, write, seek);
  if (io == nullptr) {
    av_free(buffer);
    STAVID_THROW(ErrorCode::OutOfMemory, "allocating an AVIOContext failed");
  }
  return IoContextPtr(io);
}

// ---- pixels ----
// floor(x * 255 + 0.5) clamped to [0, 255]; NaN -> 0. A float k / 255 gives exactly k.
inline uint8_t unit_float_to_u8(float x) {
  const float v = x * 255.0f + 0.5f;
  if (!(v >= 0.0f)) return 0;
  if (v >= 255.0f) return 255;
  return static_cast<uint8_t>(v);
}

int sws_colorspace_for(AVColorSpace space) {
  switch (space) {
    case AVCOL_SPC_BT709:
      return SWS_CS_ITU709;
    case AVCOL_SPC_FCC:
      return SWS_CS_FCC;
    case AVCOL_SPC_SMPTE240M:
      return SWS_CS_SMPTE240M;
    case AVCOL_SPC_BT2020_NCL:
    case AVCOL_SPC_BT2020_CL:
      return SWS_CS_BT2020;
    case AVCOL_SPC_BT470BG:
    case AVCOL_SPC_SMPTE170M:
      return SWS_CS_ITU601;
    default:
      return SWS_CS_DEFAULT;  // untagged: BT.601, FFmpeg's own assumption
  }
}

int64_t aligned_row_bytes(int width) {
  const int64_t row = 3LL * width;
  return (row + kRowAlignBytes - 1) / kRowAlignBytes * kRowAlignBytes;
}

const char* or_unknown(const char* s) {
  return s != nullptr ? s : "unknown";
}

}  // namespace

// ============================== Mp4Writer::Impl ==============================

class Mp4Writer::Impl {
 public:
  Impl(int width, int height, const Mp4Options& options, ByteSink sink);
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  void add_frame_rgb24(const uint8_t* rgb, int64_t stride_bytes);
  void add_frame_planar_f32(const float* planes, int64_t plane_stride);
  void finish();

  int width() const { return width_; }
  int height() const { return height_; }
  int coded_width() const { return coded_width_; }
  int coded_height() const { return coded_height_; }
  int64_t frame_count() const { return frame_count_; }
  int64_t bytes_emitted() const { return bytes_emitted_; }
  bool is_finished() const { return state_ == State::Finished; }

 private:
  enum class State { Open, Finished, Failed };

  static void validate(int width, int height, const Mp4Options& options, const ByteSink& sink);
  void open_muxer_and_encoder();
  void ensure_open(const char* call) const;
  uint8_t* staging_row(int y) { return staging_.get() + static_cast<int64_t>(y) * staging_stride_; }
  void encode_staging();
  void pad_staging();
  void drain_encoder();
  void flush_io();
  void rethrow_sink_error();
  // Runs `fn`; any exception leaves the writer Failed.
  template <typename Fn>
  void guarded(Fn&& fn);

  // AVIO / muxer callbacks (static: FFmpeg calls them with `this` as opaque).
  static int sink_write(void* opaque, AvioWriteBuffer buf, int buf_size);
  static int open_readback(AVFormatContext* s, AVIOContext** pb, const char* url, int flags, AVDictionary** options);
  static int close_readback(AVFormatContext* s, AVIOContext* pb);

  const int width_;
  const int height_;
  const int coded_width_;
  const int coded_height_;
  const Mp4Options options_;
  const int keyframe_interval_;
  ByteSink sink_;
  std::exception_ptr sink_error_;
  State state_ = State::Open;
  int64_t frame_count_ = 0;
  int64_t bytes_emitted_ = 0;

  // Non-fragmented mode: the file being built, the muxer's cursor, and faststart's read-back cursors.
  std::vector<uint8_t> memory_file_;
  VectorCursor memory_cursor_{&memory_file_};
  std::vector<std::pair<std::unique_ptr<VectorCursor>, IoContextPtr>> readbacks_;

  int64_t staging_stride_;  // bytes per staging row, a multiple of kRowAlignBytes
  AvBufferPtr staging_;     // RGB24, coded size, plus kSlackBytes

  // Declaration order is destruction order reversed: format_ goes before io_.
  IoContextPtr io_;
  OutputFormatPtr format_;
  CodecContextPtr codec_;
  AVStream* stream_ = nullptr;  // owned by format_
  SwsPtr sws_;
  FramePtr yuv_frame_;
  PacketPtr packet_;
};

void Mp4Writer::Impl::validate(int width, int height, const Mp4Options& options, const ByteSink& sink) {
  STAVID_CHECK(width >= 1 && width <= kMaxDimension && height >= 1 && height <= kMaxDimension, "Mp4Writer: frame size ",
               width, "x", height, " outside 1..", kMaxDimension);
  STAVID_CHECK(options.fps >= 1 && options.fps <= kMaxFps, "Mp4Writer: fps ", options.fps, " outside 1..", kMaxFps);
  STAVID_CHECK(options.crf >= 0 && options.crf <= kMaxCrf, "Mp4Writer: crf ", options.crf, " outside 0..", kMaxCrf);
  STAVID_CHECK(std::find(kX264Presets.begin(), kX264Presets.end(), options.preset) != kX264Presets.end(),
               "Mp4Writer: unknown x264 preset '", options.preset,
               "' (ultrafast, superfast, veryfast, faster, fast, medium, slow, slower, veryslow, placebo)");
  STAVID_CHECK(options.keyframe_interval >= 0 && options.keyframe_interval <= kMaxKeyframeInterval,
               "Mp4Writer: keyframe_interval ", options.keyframe_interval, " outside 0..", kMaxKeyframeInterval);
  STAVID_CHECK(options.encoder_threads >= 0 && options.encoder_threads <= kMaxEncoderThreads,
               "Mp4Writer: encoder_threads ", options.encoder_threads, " outside 0..", kMaxEncoderThreads);
  STAVID_CHECK(static_cast<bool>(sink), "Mp4Writer: the byte sink is empty");
}

template <typename Fn>
void Mp4Writer::Impl::guarded(Fn&& fn) {
  try {
    fn();
  } catch (...) {
    state_ = State::Failed;
    throw;
  }
}

Mp4Writer::Impl::Impl(int width, int height, const Mp4Options& options, ByteSink sink)
    : width_(width),
      height_(height),
      coded_width_(width + (width & 1)),
      coded_height_(height + (height & 1)),
      options_(options),
      keyframe_interval_(options.keyframe_interval > 0 ? options.keyframe_interval : options.fps),
      sink_(std::move(sink)),
      staging_stride_(aligned_row_bytes(coded_width_)) {
  validate(width, height, options, sink_);
  install_ffmpeg_log_bridge();
  staging_.reset(static_cast<uint8_t*>(av_mallocz(staging_stride_ * coded_height_ + kSlackBytes)));
  check_alloc(staging_.get(), "the RGB staging frame");
  guarded([&] { open_muxer_and_encoder(); });
}

void Mp4Writer::Impl::open_muxer_and_encoder() {
  const AVCodec* encoder = avcodec_find_encoder_by_name("libx264");
  if (encoder == nullptr) {
    STAVID_THROW(ErrorCode::Unsupported,
                 "Mp4Writer: this FFmpeg build has no libx264 encoder (install libavcodec with libx264)");
  }

  // Muxer and its byte output.
  AVFormatContext* raw_format = nullptr;
  STAVID_AV_CHECK(avformat_alloc_output_context2(&raw_format, nullptr, "mp4", nullptr), "allocating the MP4 muxer");
  format_.reset(raw_format);
  if (options_.fragmented) {
    io_ = make_io(this, nullptr, &Impl::sink_write, nullptr);  // no seek: the muxer streams
  } else {
    io_ = make_io(&memory_cursor_, nullptr, vector_write, vector_seek);
    // The faststart pass re-opens the output for reading through io_open; serve it from memory.
    format_->opaque = this;
    format_->io_open = &Impl::open_readback;
    format_->io_close2 = &Impl::close_readback;
  }
  format_->pb = io_.get();
  format_->flags |= AVFMT_FLAG_CUSTOM_IO;

  // Encoder: H.264 (libx264), yuv420p, BT.709 limited range.
  codec_.reset(check_alloc(avcodec_alloc_context3(encoder), "the H.264 encoder context"));
  AVCodecContext* c = codec_.get();
  c->width = coded_width_;
  c->height = coded_height_;
  c->pix_fmt = AV_PIX_FMT_YUV420P;
  c->sample_aspect_ratio = AVRational{1, 1};
  c->time_base = AVRational{1, options_.fps};
  c->framerate = AVRational{options_.fps, 1};
  c->gop_size = keyframe_interval_;
  c->thread_count = options_.encoder_threads;  // 0: libx264 picks 1.5 per core
  c->color_range = AVCOL_RANGE_MPEG;
  c->color_primaries = AVCOL_PRI_BT709;
  c->color_trc = AVCOL_TRC_BT709;
  c->colorspace = AVCOL_SPC_BT709;
  c->chroma_sample_location = AVCHROMA_LOC_LEFT;
  if ((format_->oformat->flags & AVFMT_GLOBALHEADER) != 0) c->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  STAVID_AV_CHECK(av_opt_set(c->priv_data, "preset", options_.preset.c_str(), 0), "setting the x264 preset");
  STAVID_AV_CHECK(av_opt_set_double(c->priv_data, "crf", options_.crf, 0), "setting the x264 crf");
  // High cannot code losslessly (CRF 0); High 4:4:4 Predictive can, still in 4:2:0.
  STAVID_AV_CHECK(av_opt_set(c->priv_data, "profile", options_.crf == 0 ? "high444" : "high", 0),
                  "setting the x264 profile");
  STAVID_AV_CHECK(avcodec_open2(c, encoder, nullptr), "opening the libx264 encoder");

  stream_ = check_alloc(avformat_new_stream(format_.get(), nullptr), "the MP4 video stream");
  stream_->time_base = c->time_base;
  stream_->avg_frame_rate = c->framerate;
  stream_->r_frame_rate = c->framerate;
  STAVID_AV_CHECK(avcodec_parameters_from_context(stream_->codecpar, c), "copying the encoder parameters");

  // RGB24 (full range) -> yuv420p (BT.709, limited range), same size.
  sws_.reset(sws_getContext(coded_width_, coded_height_, AV_PIX_FMT_RGB24, coded_width_, coded_height_,
                            AV_PIX_FMT_YUV420P, kSwsFlagsToYuv, nullptr, nullptr, nullptr));
  if (!sws_) STAVID_THROW(ErrorCode::Internal, "creating the RGB24 -> yuv420p converter failed");
  const int* bt709 = sws_getCoefficients(SWS_CS_ITU709);
  if (sws_setColorspaceDetails(sws_.get(), bt709, /*srcRange=*/1, bt709, /*dstRange=*/0, /*brightness=*/0,
                               /*contrast=*/1 << 16, /*saturation=*/1 << 16) < 0) {
    STAVID_THROW(ErrorCode::Internal, "setting BT.709 limited range on the RGB24 -> yuv420p converter failed");
  }

  yuv_frame_.reset(check_alloc(av_frame_alloc(), "the encoder's input frame"));
  yuv_frame_->format = AV_PIX_FMT_YUV420P;
  yuv_frame_->width = coded_width_;
  yuv_frame_->height = coded_height_;
  yuv_frame_->color_range = c->color_range;
  yuv_frame_->color_primaries = c->color_primaries;
  yuv_frame_->color_trc = c->color_trc;
  yuv_frame_->colorspace = c->colorspace;
  yuv_frame_->chroma_location = c->chroma_sample_location;
  STAVID_AV_CHECK(av_frame_get_buffer(yuv_frame_.get(), 0), "allocating the encoder's input frame");
  packet_.reset(check_alloc(av_packet_alloc(), "a packet"));

  Dictionary muxer_options;
  STAVID_AV_CHECK(av_dict_set(muxer_options.address(), "movflags",
                              options_.fragmented ? "frag_keyframe+empty_moov+default_base_moof" : "faststart", 0),
                  "setting movflags");
  const int ret = avformat_write_header(format_.get(), muxer_options.address());
  rethrow_sink_error();
  STAVID_AV_CHECK(ret, "writing the MP4 header");
  STAVID_CHECK_CODE(muxer_options.count() == 0, ErrorCode::Internal,
                    "the MP4 muxer ignored options: ", muxer_options.keys());
  flush_io();
}

void Mp4Writer::Impl::ensure_open(const char* call) const {
  STAVID_CHECK(state_ != State::Finished, "Mp4Writer::", call, " after finish()");
  STAVID_CHECK_CODE(state_ != State::Failed, ErrorCode::Internal, "Mp4Writer::", call,
                    ": the writer failed earlier and cannot continue");
}

void Mp4Writer::Impl::add_frame_rgb24(const uint8_t* rgb, int64_t stride_bytes) {
  ensure_open("add_frame_rgb24");
  STAVID_CHECK(rgb != nullptr, "Mp4Writer::add_frame_rgb24: null frame");
  STAVID_CHECK(stride_bytes >= 3LL * width_, "Mp4Writer::add_frame_rgb24: stride ", stride_bytes,
               " bytes < 3 * width (", 3LL * width_, ")");
  for (int y = 0; y < height_; ++y) {
    std::memcpy(staging_row(y), rgb + y * stride_bytes, static_cast<size_t>(3) * width_);
  }
  encode_staging();
}

void Mp4Writer::Impl::add_frame_planar_f32(const float* planes, int64_t plane_stride) {
  ensure_open("add_frame_planar_f32");
  STAVID_CHECK(planes != nullptr, "Mp4Writer::add_frame_planar_f32: null frame");
  const int64_t plane_elems = static_cast<int64_t>(width_) * height_;
  STAVID_CHECK(plane_stride >= plane_elems, "Mp4Writer::add_frame_planar_f32: plane stride ", plane_stride,
               " < width * height (", plane_elems, ")");
  planar_f32_to_rgb24(planes, plane_stride, width_, height_, staging_.get(), staging_stride_);
  encode_staging();
}

// Fills the padding column/row (odd sizes) by repeating the last input column/row.
void Mp4Writer::Impl::pad_staging() {
  if (coded_width_ != width_) {
    for (int y = 0; y < height_; ++y) {
      uint8_t* row = staging_row(y);
      std::memcpy(row + 3 * width_, row + 3 * (width_ - 1), 3);
    }
  }
  if (coded_height_ != height_) {
    std::memcpy(staging_row(height_), staging_row(height_ - 1), static_cast<size_t>(3) * coded_width_);
  }
}

void Mp4Writer::Impl::encode_staging() {
  pad_staging();
  guarded([&] {
    STAVID_AV_CHECK(av_frame_make_writable(yuv_frame_.get()), "making the encoder's input frame writable");
    const uint8_t* src[4] = {staging_.get(), nullptr, nullptr, nullptr};
    const int src_stride[4] = {static_cast<int>(staging_stride_), 0, 0, 0};
    const int rows = sws_scale(sws_.get(), src, src_stride, 0, coded_height_, yuv_frame_->data, yuv_frame_->linesize);
    STAVID_AV_CHECK(rows, "converting RGB24 to yuv420p");
    STAVID_CHECK_CODE(rows == coded_height_, ErrorCode::Internal, "converting RGB24 to yuv420p produced ", rows, " of ",
                      coded_height_, " rows");
    yuv_frame_->pts = frame_count_;
    STAVID_AV_CHECK(avcodec_send_frame(codec_.get(), yuv_frame_.get()), "sending a frame to libx264");
    ++frame_count_;
    drain_encoder();
  });
}

void Mp4Writer::Impl::drain_encoder() {
  for (;;) {
    const int ret = avcodec_receive_packet(codec_.get(), packet_.get());
    if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return;
    STAVID_AV_CHECK(ret, "receiving a packet from libx264");
    if (packet_->duration <= 0) packet_->duration = 1;  // one frame, in the codec's time base
    av_packet_rescale_ts(packet_.get(), codec_->time_base, stream_->time_base);
    packet_->stream_index = stream_->index;
    const int written = av_interleaved_write_frame(format_.get(), packet_.get());  // takes the packet's data
    rethrow_sink_error();
    STAVID_AV_CHECK(written, "muxing an H.264 packet");
    flush_io();
  }
}

// Pushes the AVIO buffer out (to the sink when fragmented) and surfaces write errors.
void Mp4Writer::Impl::flush_io() {
  avio_flush(io_.get());
  rethrow_sink_error();
  STAVID_AV_CHECK(io_->error, "writing MP4 bytes");
}

void Mp4Writer::Impl::rethrow_sink_error() {
  if (sink_error_) std::rethrow_exception(sink_error_);
}

void Mp4Writer::Impl::finish() {
  ensure_open("finish");
  STAVID_CHECK(frame_count_ > 0, "Mp4Writer::finish: no frames were added (an MP4 needs at least one)");
  guarded([&] {
    STAVID_AV_CHECK(avcodec_send_frame(codec_.get(), nullptr), "flushing libx264");
    drain_encoder();
    const int ret = av_write_trailer(format_.get());
    rethrow_sink_error();
    STAVID_AV_CHECK(ret, "writing the MP4 trailer");
    flush_io();
    if (!options_.fragmented) {
      // The faststart file is complete in memory: hand it over in AVIO-sized pieces.
      const size_t size = memory_file_.size();
      for (size_t offset = 0; offset < size; offset += kIoBufferBytes) {
        const size_t n = std::min<size_t>(kIoBufferBytes, size - offset);
        sink_(memory_file_.data() + offset, n);
        bytes_emitted_ += static_cast<int64_t>(n);
      }
      std::vector<uint8_t>().swap(memory_file_);
    }
    state_ = State::Finished;
  });
}

int Mp4Writer::Impl::sink_write(void* opaque, AvioWriteBuffer buf, int buf_size) {
  auto* self = static_cast<Impl*>(opaque);
  if (self->sink_error_) return AVERROR_EXTERNAL;
  try {
    self->sink_(buf, static_cast<size_t>(buf_size));
    self->bytes_emitted_ += buf_size;
    return buf_size;
  } catch (...) {
    self->sink_error_ = std::current_exception();
    return AVERROR_EXTERNAL;
  }
}

int Mp4Writer::Impl::open_readback(AVFormatContext* s, AVIOContext** pb, const char* url, int flags,
                                   AVDictionary** options) {
  auto* self = static_cast<Impl*>(s->opaque);
  if (self == nullptr || (flags & AVIO_FLAG_WRITE) != 0) return AVERROR(EPERM);
  try {
    auto cursor = std::make_unique<VectorCursor>(VectorCursor{&self->memory_file_});
    IoContextPtr io = make_io(cursor.get(), vector_read, nullptr, vector_seek);
    *pb = io.get();
    self->readbacks_.emplace_back(std::move(cursor), std::move(io));
    return 0;
  } catch (...) {
    return AVERROR(ENOMEM);
  }
}

int Mp4Writer::Impl::close_readback(AVFormatContext* s, AVIOContext* pb) {
  auto* self = static_cast<Impl*>(s->opaque);
  if (self == nullptr) return AVERROR(EINVAL);
  auto& list = self->readbacks_;
  const auto it = std::find_if(list.begin(), list.end(), [pb](const auto& entry) { return entry.second.get() == pb; });
  if (it == list.end()) return AVERROR(EINVAL);
  list.erase(it);
  return 0;
}

// ============================== free functions ==============================

void planar_f32_to_rgb24(const float* planes, int64_t plane_stride, int width, int height, uint8_t* rgb,
                         int64_t rgb_stride) {
  STAVID_CHECK(planes != nullptr && rgb != nullptr, "planar_f32_to_rgb24: null buffer");
  STAVID_CHECK(width >= 1 && height >= 1, "planar_f32_to_rgb24: size ", width, "x", height);
  const int64_t plane_elems = static_cast<int64_t>(width) * height;
  STAVID_CHECK(plane_stride >= plane_elems, "planar_f32_to_rgb24: plane stride ", plane_stride, " < width * height (",
               plane_elems, ")");
  STAVID_CHECK(rgb_stride >= 3LL * width, "planar_f32_to_rgb24: row stride ", rgb_stride, " bytes < 3 * width (",
               3LL * width, ")");
  const float* r = planes;
  const float* g = planes + plane_stride;
  const float* b = planes + 2 * plane_stride;
  for (int y = 0; y < height; ++y) {
    uint8_t* row = rgb + y * rgb_stride;
    const int64_t base = static_cast<int64_t>(y) * width;
    for (int x = 0; x < width; ++x) {
      row[3 * x + 0] = unit_float_to_u8(r[base + x]);
      row[3 * x + 1] = unit_float_to_u8(g[base + x]);
      row[3 * x + 2] = unit_float_to_u8(b[base + x]);
    }
  }
}

// ============================== Mp4Writer ==============================

Mp4Writer::Mp4Writer(int width, int height, const Mp4Options& options, ByteSink sink)
    : impl_(std::make_unique<Impl>(width, height, options, std::move(sink))) {}
Mp4Writer::~Mp4Writer() = default;
Mp4Writer::Mp4Writer(Mp4Writer&&) noexcept = default;
Mp4Writer& Mp4Writer::operator=(Mp4Writer&&) noexcept = default;

#define STAVID_MP4_WRITER_LIVE() STAVID_CHECK(impl_ != nullptr, "use of a moved-from Mp4Writer")

void Mp4Writer::add_frame_rgb24(const uint8_t* rgb, int64_t stride_bytes) {
  STAVID_MP4_WRITER_LIVE();
  impl_->add_frame_rgb24(rgb, stride_bytes);
}
void Mp4Writer::add_frame_planar_f32(const float* planes, int64_t plane_stride) {
  STAVID_MP4_WRITER_LIVE();
  impl_->add_frame_planar_f32(planes, plane_stride);
}
void Mp4Writer::add_frame_planar_f32(const float* chw) {
  STAVID_MP4_WRITER_LIVE();
  impl_->add_frame_planar_f32(chw, static_cast<int64_t>(impl_->width()) * impl_->height());
}
void Mp4Writer::finish() {
  STAVID_MP4_WRITER_LIVE();
  impl_->finish();
}
int Mp4Writer::width() const {
  return impl_ ? impl_->width() : 0;
}
int Mp4Writer::height() const {
  return impl_ ? impl_->height() : 0;
}
int Mp4Writer::coded_width() const {
  return impl_ ? impl_->coded_width() : 0;
}
int Mp4Writer::coded_height() const {
  return impl_ ? impl_->coded_height() : 0;
}
int64_t Mp4Writer::frame_count() const {
  return impl_ ? impl_->frame_count() : 0;
}
int64_t Mp4Writer::bytes_emitted() const {
  return impl_ ? impl_->bytes_emitted() : 0;
}
bool Mp4Writer::is_finished() const {
  return impl_ && impl_->is_finished();
}

// ============================== decode_mp4 ==============================

namespace {

// Converts decoded frames to packed RGB24 with the frame's tagged matrix and range.
class RgbConverter {
 public:
  std::vector<uint8_t> convert(const AVFrame* frame) {
    const int w = frame->width;
    const int h = frame->height;
    sws_.reset(sws_getCachedContext(sws_.release(), w, h, static_cast<AVPixelFormat>(frame->format), w, h,
                                    AV_PIX_FMT_RGB24, kSwsFlagsToRgb, nullptr, nullptr, nullptr));
    if (!sws_) {
      STAVID_THROW(ErrorCode::Unsupported, "decode_mp4: cannot convert ",
                   or_unknown(av_get_pix_fmt_name(static_cast<AVPixelFormat>(frame->format))), " to RGB24");
    }
    const int* matrix = sws_getCoefficients(sws_colorspace_for(frame->colorspace));
    const int full_range = frame->color_range == AVCOL_RANGE_JPEG ? 1 : 0;
    if (sws_setColorspaceDetails(sws_.get(), matrix, full_range, sws_getCoefficients(SWS_CS_DEFAULT),
                                 /*dstRange=*/1, /*brightness=*/0, /*contrast=*/1 << 16, /*saturation=*/1 << 16) < 0) {
      STAVID_THROW(ErrorCode::Internal, "decode_mp4: setting the colour matrix of the RGB24 converter failed");
    }
    const int64_t stride = aligned_row_bytes(w);
    scratch_.resize(static_cast<size_t>(stride * h + kSlackBytes));
    uint8_t* dst[4] = {scratch_.data(), nullptr, nullptr, nullptr};
    const int dst_stride[4] = {static_cast<int>(stride), 0, 0, 0};
    const int rows = sws_scale(sws_.get(), frame->data, frame->linesize, 0, h, dst, dst_stride);
    STAVID_AV_CHECK(rows, "decode_mp4: converting a frame to RGB24");
    std::vector<uint8_t> rgb(static_cast<size_t>(3) * w * h);
    for (int y = 0; y < h; ++y) {
      std::memcpy(rgb.data() + static_cast<size_t>(3) * w * y, scratch_.data() + stride * y,
                  static_cast<size_t>(3) * w);
    }
    return rgb;
  }

 private:
  SwsPtr sws_;
  std::vector<uint8_t> scratch_;
};

void receive_frames(AVCodecContext* codec, AVFrame* frame, RgbConverter* converter, DecodedVideo* out) {
  for (;;) {
    const int ret = avcodec_receive_frame(codec, frame);
    if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return;
    STAVID_AV_CHECK_CODE(ret, ErrorCode::DataLoss, "decode_mp4: decoding a frame");
    STAVID_CHECK_CODE(frame->width == out->width && frame->height == out->height, ErrorCode::Unsupported,
                      "decode_mp4: frame size ", frame->width, "x", frame->height, " differs from the stream's ",
                      out->width, "x", out->height);
    out->frames_rgb24.push_back(converter->convert(frame));
    av_frame_unref(frame);
  }
}

}  // namespace

DecodedVideo decode_mp4(const uint8_t* data, size_t size) {
  STAVID_CHECK(data != nullptr || size == 0, "decode_mp4: null data");
  install_ffmpeg_log_bridge();
  SpanCursor cursor{data, static_cast<int64_t>(size)};
  IoContextPtr io = make_io(&cursor, span_read, nullptr, span_seek);

  AVFormatContext* raw_format = check_alloc(avformat_alloc_context(), "the MP4 demuxer");
  raw_format->pb = io.get();
  raw_format->flags |= AVFMT_FLAG_CUSTOM_IO;
  // On failure avformat_open_input frees the context itself.
  STAVID_AV_CHECK_CODE(avformat_open_input(&raw_format, nullptr, av_find_input_format("mp4"), nullptr),
                       ErrorCode::DataLoss, "decode_mp4: opening the MP4");
  InputFormatPtr format(raw_format);
  STAVID_AV_CHECK_CODE(avformat_find_stream_info(format.get(), nullptr), ErrorCode::DataLoss,
                       "decode_mp4: reading the stream info");

  const AVCodec* decoder = nullptr;
  const int index = av_find_best_stream(format.get(), AVMEDIA_TYPE_VIDEO, -1, -1, &decoder, 0);
  if (index == AVERROR_DECODER_NOT_FOUND) STAVID_THROW(ErrorCode::Unsupported, "decode_mp4: no decoder for the video");
  STAVID_AV_CHECK_CODE(index, ErrorCode::DataLoss, "decode_mp4: finding a video stream");
  AVStream* stream = format->streams[index];

  CodecContextPtr codec(check_alloc(avcodec_alloc_context3(decoder), "the decoder context"));
  STAVID_AV_CHECK(avcodec_parameters_to_context(codec.get(), stream->codecpar), "decode_mp4: decoder parameters");
  codec->pkt_timebase = stream->time_base;
  STAVID_AV_CHECK(avcodec_open2(codec.get(), decoder, nullptr), "decode_mp4: opening the decoder");

  DecodedVideo out;
  const AVCodecParameters* par = stream->codecpar;
  out.width = par->width;
  out.height = par->height;
  out.fps = av_q2d(av_guess_frame_rate(format.get(), stream, nullptr));
  out.codec_name = decoder->name;
  out.pixel_format = or_unknown(av_get_pix_fmt_name(static_cast<AVPixelFormat>(par->format)));
  out.profile_name = or_unknown(avcodec_profile_name(par->codec_id, par->profile));
  out.color_space = or_unknown(av_color_space_name(par->color_space));
  out.color_range = or_unknown(av_color_range_name(par->color_range));

  PacketPtr packet(check_alloc(av_packet_alloc(), "a packet"));
  FramePtr frame(check_alloc(av_frame_alloc(), "a frame"));
  RgbConverter converter;
  int ret = 0;
  while ((ret = av_read_frame(format.get(), packet.get())) >= 0) {
    if (packet->stream_index == index) {
      const int sent = avcodec_send_packet(codec.get(), packet.get());
      av_packet_unref(packet.get());
      STAVID_AV_CHECK_CODE(sent, ErrorCode::DataLoss, "decode_mp4: sending a packet to the decoder");
      receive_frames(codec.get(), frame.get(), &converter, &out);
    } else {
      av_packet_unref(packet.get());
    }
  }
  if (ret != AVERROR_EOF) throw_av_error(ErrorCode::DataLoss, ret, "decode_mp4: reading a packet", __FILE__, __LINE__);
  STAVID_AV_CHECK(avcodec_send_packet(codec.get(), nullptr), "decode_mp4: flushing the decoder");
  receive_frames(codec.get(), frame.get(), &converter, &out);
  return out;
}

DecodedVideo decode_mp4(const std::vector<uint8_t>& bytes) {
  return decode_mp4(bytes.data(), bytes.size());
}

}  // namespace stavid::media
