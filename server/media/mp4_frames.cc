// stavid_mp4_frames: decodes an MP4 with FFmpeg's own decoders (media::decode_mp4) and writes its
// frames as one NumPy array, uint8 [frames, height, width, 3] (RGB), for checks that read pixels
// in Python without FFmpeg bindings (tools/demo/check_video.py). Prints one JSON line: the stream's
// codec, size, frame count and fps.
//
//   stavid_mp4_frames IN.mp4 OUT.npy
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "kernels/core/error.h"
#include "server/media/mp4_writer.h"

namespace {

// NumPy format 1.0: magic, version, header length (little endian), a dict padded so that the
// data starts at a multiple of 64 bytes.
void write_npy_u8(const std::string& path, const stavid::media::DecodedVideo& v) {
  std::string header = "{'descr': '|u1', 'fortran_order': False, 'shape': (" + std::to_string(v.frames_rgb24.size()) +
                       ", " + std::to_string(v.height) + ", " + std::to_string(v.width) + ", 3), }";
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  STAVID_CHECK(out.good(), "cannot write ", path);
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  const char len_le[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(len_le, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (const auto& f : v.frames_rgb24) out.write(reinterpret_cast<const char*>(f.data()), static_cast<std::streamsize>(f.size()));
  STAVID_CHECK(out.good(), "short write to ", path);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: stavid_mp4_frames IN.mp4 OUT.npy\n");
    return 2;
  }
  try {
    std::ifstream in(argv[1], std::ios::binary);
    STAVID_CHECK(in.good(), "cannot read ", argv[1]);
    const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const stavid::media::DecodedVideo v = stavid::media::decode_mp4(bytes);
    write_npy_u8(argv[2], v);
    std::printf("{\"codec\":\"%s\",\"width\":%d,\"height\":%d,\"frames\":%zu,\"fps\":%.3f}\n", v.codec_name.c_str(), v.width,
                v.height, v.frames_rgb24.size(), v.fps);
  } catch (const stavid::Error& e) {
    std::fprintf(stderr, "stavid_mp4_frames: %s\n", e.what());
    return 1;
  }
  return 0;
}
