// PNG encode/decode on libavcodec (policy: see image.h). Every FFmpeg object is owned by a unique_ptr
// with a deleter; every return value is checked.
#include "server/media/image.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavutil/error.h>
#include <libavutil/frame.h>
#include <libavutil/pixfmt.h>
}

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

#include "kernels/core/error.h"

namespace stavid::media {
namespace {

constexpr int kMaxDimension = 8192;

struct CodecContextDeleter {
  void operator()(AVCodecContext* p) const { avcodec_free_context(&p); }
};
struct FrameDeleter {
  void operator()(AVFrame* p) const { av_frame_free(&p); }
};
struct PacketDeleter {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
using CodecContextPtr = std::unique_ptr<AVCodecContext, CodecContextDeleter>;
using FramePtr = std::unique_ptr<AVFrame, FrameDeleter>;
using PacketPtr = std::unique_ptr<AVPacket, PacketDeleter>;

void check_av(int ret, ErrorCode code, const char* what) {
  if (ret >= 0) return;
  char text[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(ret, text, sizeof(text));
  STAVID_THROW(ret == AVERROR(ENOMEM) ? ErrorCode::OutOfMemory : code, what, " failed: ", text, " (", ret, ")");
}

template <typename T>
T* check_alloc(T* p, const char* what) {
  STAVID_CHECK_CODE(p != nullptr, ErrorCode::OutOfMemory, "allocating ", what, " failed");
  return p;
}

CodecContextPtr open_codec(bool encoder, int width, int height) {
  const AVCodec* codec = encoder ? avcodec_find_encoder(AV_CODEC_ID_PNG) : avcodec_find_decoder(AV_CODEC_ID_PNG);
  STAVID_CHECK_CODE(codec != nullptr, ErrorCode::Unsupported, "this FFmpeg build has no PNG ",
                    encoder ? "encoder" : "decoder");
  CodecContextPtr ctx(check_alloc(avcodec_alloc_context3(codec), "a PNG codec context"));
  if (encoder) {
    ctx->width = width;
    ctx->height = height;
    ctx->pix_fmt = AV_PIX_FMT_RGB24;
    ctx->time_base = AVRational{1, 1};
  }
  check_av(avcodec_open2(ctx.get(), codec, nullptr), ErrorCode::Internal, "opening the PNG codec");
  return ctx;
}

}  // namespace

std::vector<uint8_t> encode_png(const uint8_t* rgb, int width, int height, int64_t stride_bytes) {
  STAVID_CHECK(rgb != nullptr, "encode_png: null pixels");
  STAVID_CHECK(width >= 1 && width <= kMaxDimension && height >= 1 && height <= kMaxDimension, "encode_png: size ",
               width, "x", height, " outside 1..", kMaxDimension);
  STAVID_CHECK(stride_bytes >= 3 * static_cast<int64_t>(width), "encode_png: stride ", stride_bytes, " < 3 * width");
  CodecContextPtr ctx = open_codec(/*encoder=*/true, width, height);
  FramePtr frame(check_alloc(av_frame_alloc(), "a frame"));
  frame->format = AV_PIX_FMT_RGB24;
  frame->width = width;
  frame->height = height;
  check_av(av_frame_get_buffer(frame.get(), 0), ErrorCode::Internal, "allocating the PNG frame");
  for (int y = 0; y < height; ++y)
    std::memcpy(frame->data[0] + static_cast<int64_t>(frame->linesize[0]) * y, rgb + stride_bytes * y,
                static_cast<size_t>(3) * width);
  frame->pts = 0;
  check_av(avcodec_send_frame(ctx.get(), frame.get()), ErrorCode::Internal, "encode_png: sending the frame");
  check_av(avcodec_send_frame(ctx.get(), nullptr), ErrorCode::Internal, "encode_png: flushing the encoder");
  PacketPtr packet(check_alloc(av_packet_alloc(), "a packet"));
  std::vector<uint8_t> out;
  for (;;) {
    const int ret = avcodec_receive_packet(ctx.get(), packet.get());
    if (ret == AVERROR_EOF || ret == AVERROR(EAGAIN)) break;
    check_av(ret, ErrorCode::Internal, "encode_png: receiving the packet");
    out.insert(out.end(), packet->data, packet->data + packet->size);
    av_packet_unref(packet.get());
  }
  STAVID_CHECK_CODE(!out.empty(), ErrorCode::Internal, "encode_png: the encoder produced no bytes");
  return out;
}

DecodedImage decode_png(const uint8_t* data, size_t size) {
  STAVID_CHECK_CODE(data != nullptr && size > 0, ErrorCode::DataLoss, "decode_png: no bytes");
  STAVID_CHECK_CODE(size < (size_t{1} << 30), ErrorCode::DataLoss, "decode_png: ", size, " bytes is too large");
  CodecContextPtr ctx = open_codec(/*encoder=*/false, 0, 0);
  PacketPtr packet(check_alloc(av_packet_alloc(), "a packet"));
  check_av(av_new_packet(packet.get(), static_cast<int>(size)), ErrorCode::Internal, "decode_png: packet");
  std::memcpy(packet->data, data, size);
  check_av(avcodec_send_packet(ctx.get(), packet.get()), ErrorCode::DataLoss, "decode_png: decoding");
  check_av(avcodec_send_packet(ctx.get(), nullptr), ErrorCode::DataLoss, "decode_png: flushing the decoder");
  FramePtr frame(check_alloc(av_frame_alloc(), "a frame"));
  check_av(avcodec_receive_frame(ctx.get(), frame.get()), ErrorCode::DataLoss, "decode_png: receiving the frame");
  STAVID_CHECK_CODE(frame->format == AV_PIX_FMT_RGB24, ErrorCode::Unsupported,
                    "decode_png: only RGB24 PNGs are supported (pixel format ", frame->format, ")");
  DecodedImage out;
  out.width = frame->width;
  out.height = frame->height;
  out.rgb24.resize(static_cast<size_t>(3) * out.width * out.height);
  for (int y = 0; y < out.height; ++y)
    std::memcpy(out.rgb24.data() + static_cast<size_t>(3) * out.width * y,
                frame->data[0] + static_cast<int64_t>(frame->linesize[0]) * y, static_cast<size_t>(3) * out.width);
  return out;
}

}  // namespace stavid::media
