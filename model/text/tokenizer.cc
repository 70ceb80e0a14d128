// Byte-level BPE tokenizers from a HuggingFace tokenizer.json (see tokenizer.h for the scope).
// Follows huggingface/tokenizers tokenizers/src/models/bpe/{model,word}.rs for the merge loop.
#include "model/text/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <list>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "kernels/core/error.h"

#ifndef STAVID_HAVE_PCRE2
#define STAVID_HAVE_PCRE2 0
#endif
#if STAVID_HAVE_PCRE2
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#endif

namespace stavid::text {
namespace {

using nlohmann::json;

// ---------------------------------------------------------------------------------------------------------
// UTF-8

size_t utf8_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  return 4;
}

// Decodes the code point at s[i] (s is valid UTF-8) and advances i.
uint32_t next_code_point(std::string_view s, size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  const size_t n = utf8_len(b0);
  uint32_t cp = n == 1 ? b0 : n == 2 ? (b0 & 0x1Fu) : n == 3 ? (b0 & 0x0Fu) : (b0 & 0x07u);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3Fu);
  i += n;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Length of the valid UTF-8 sequence at s[i], or 0 when it is not one (overlong forms, surrogates and code
// points past U+10FFFF are invalid). `*consumed` gets the length of its maximal valid prefix (at least 1).
size_t valid_sequence_at(std::string_view s, size_t i, size_t* consumed) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  *consumed = 1;
  if (b0 < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (size_t k = 1; k < n; ++k) {
    if (i + k >= s.size()) return 0;
    const auto b = static_cast<unsigned char>(s[i + k]);
    if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return 0;
    *consumed = k + 1;
  }
  return n;
}

// Offset of the first invalid UTF-8 sequence in s, or npos.
size_t find_invalid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    size_t consumed;
    const size_t n = valid_sequence_at(s, i, &consumed);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

// Bytes to UTF-8, each maximal invalid subpart replaced by U+FFFD (what Rust's from_utf8_lossy and the
// WHATWG decoder do).
std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t consumed;
    const size_t n = valid_sequence_at(s, i, &consumed);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      i += consumed;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

bool is_unicode_space(uint32_t cp) {  // the White_Space property
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Byte length of the run of Unicode white space at the start (forward) or end (!forward) of s.
size_t space_run(std::string_view s, bool forward) {
  if (forward) {
    size_t i = 0;
    while (i < s.size()) {
      size_t j = i;
      if (!is_unicode_space(next_code_point(s, j))) break;
      i = j;
    }
    return i;
  }
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t j = start;
    if (!is_unicode_space(next_code_point(s, j))) break;
    end = start;
  }
  return s.size() - end;
}

// ---------------------------------------------------------------------------------------------------------
// Unicode tables, generated from Node's ICU (Unicode 17) by tools/tokenizer/gen_unicode_tables.mjs.

// Simple lower-case mappings: code points first + k * stride (k < count) map to themselves + delta.
struct LowerRange {
  uint32_t first;
  uint16_t count;
  uint16_t stride;
  int32_t delta;
};
// Canonical compositions first + second -> composite (the primary composites), sorted by (first, second).
struct Composition {
  uint32_t first;
  uint32_t second;
  uint32_t composite;
};

// BEGIN GENERATED by tools/tokenizer/gen_unicode_tables.mjs
// Unicode 17.0 (ICU 78.2): 1487 lower-case mappings, 961 compositions.
// clang-format off
constexpr LowerRange kLowerRanges[] = {
    {0x41, 26, 1, 32}, {0xC0, 23, 1, 32}, {0xD8, 7, 1, 32}, {0x100, 24, 2, 1}, {0x132, 3, 2, 1}, {0x139, 8, 2, 1},
    {0x14A, 23, 2, 1}, {0x178, 1, 1, -121}, {0x179, 3, 2, 1}, {0x181, 1, 1, 210}, {0x182, 2, 2, 1}, {0x186, 1, 1, 206},
    {0x187, 1, 1, 1}, {0x189, 2, 1, 205}, {0x18B, 1, 1, 1}, {0x18E, 1, 1, 79}, {0x18F, 1, 1, 202}, {0x190, 1, 1, 203},
    {0x191, 1, 1, 1}, {0x193, 1, 1, 205}, {0x194, 1, 1, 207}, {0x196, 1, 1, 211}, {0x197, 1, 1, 209}, {0x198, 1, 1, 1},
    {0x19C, 1, 1, 211}, {0x19D, 1, 1, 213}, {0x19F, 1, 1, 214}, {0x1A0, 3, 2, 1}, {0x1A6, 1, 1, 218}, {0x1A7, 1, 1, 1},
    {0x1A9, 1, 1, 218}, {0x1AC, 1, 1, 1}, {0x1AE, 1, 1, 218}, {0x1AF, 1, 1, 1}, {0x1B1, 2, 1, 217}, {0x1B3, 2, 2, 1},
    {0x1B7, 1, 1, 219}, {0x1B8, 1, 1, 1}, {0x1BC, 1, 1, 1}, {0x1C4, 1, 1, 2}, {0x1C5, 1, 1, 1}, {0x1C7, 1, 1, 2},
    {0x1C8, 1, 1, 1}, {0x1CA, 1, 1, 2}, {0x1CB, 9, 2, 1}, {0x1DE, 9, 2, 1}, {0x1F1, 1, 1, 2}, {0x1F2, 2, 2, 1},
    {0x1F6, 1, 1, -97}, {0x1F7, 1, 1, -56}, {0x1F8, 20, 2, 1}, {0x220, 1, 1, -130}, {0x222, 9, 2, 1},
    {0x23A, 1, 1, 10795}, {0x23B, 1, 1, 1}, {0x23D, 1, 1, -163}, {0x23E, 1, 1, 10792}, {0x241, 1, 1, 1},
    {0x243, 1, 1, -195}, {0x244, 1, 1, 69}, {0x245, 1, 1, 71}, {0x246, 5, 2, 1}, {0x370, 2, 2, 1}, {0x376, 1, 1, 1},
    {0x37F, 1, 1, 116}, {0x386, 1, 1, 38}, {0x388, 3, 1, 37}, {0x38C, 1, 1, 64}, {0x38E, 2, 1, 63}, {0x391, 17, 1, 32},
    {0x3A3, 9, 1, 32}, {0x3CF, 1, 1, 8}, {0x3D8, 12, 2, 1}, {0x3F4, 1, 1, -60}, {0x3F7, 1, 1, 1}, {0x3F9, 1, 1, -7},
    {0x3FA, 1, 1, 1}, {0x3FD, 3, 1, -130}, {0x400, 16, 1, 80}, {0x410, 32, 1, 32}, {0x460, 17, 2, 1}, {0x48A, 27, 2, 1},
    {0x4C0, 1, 1, 15}, {0x4C1, 7, 2, 1}, {0x4D0, 48, 2, 1}, {0x531, 38, 1, 48}, {0x10A0, 38, 1, 7264},
    {0x10C7, 1, 1, 7264}, {0x10CD, 1, 1, 7264}, {0x13A0, 80, 1, 38864}, {0x13F0, 6, 1, 8}, {0x1C89, 1, 1, 1},
    {0x1C90, 43, 1, -3008}, {0x1CBD, 3, 1, -3008}, {0x1E00, 75, 2, 1}, {0x1E9E, 1, 1, -7615}, {0x1EA0, 48, 2, 1},
    {0x1F08, 8, 1, -8}, {0x1F18, 6, 1, -8}, {0x1F28, 8, 1, -8}, {0x1F38, 8, 1, -8}, {0x1F48, 6, 1, -8},
    {0x1F59, 4, 2, -8}, {0x1F68, 8, 1, -8}, {0x1F88, 8, 1, -8}, {0x1F98, 8, 1, -8}, {0x1FA8, 8, 1, -8},
    {0x1FB8, 2, 1, -8}, {0x1FBA, 2, 1, -74}, {0x1FBC, 1, 1, -9}, {0x1FC8, 4, 1, -86}, {0x1FCC, 1, 1, -9},
    {0x1FD8, 2, 1, -8}, {0x1FDA, 2, 1, -100}, {0x1FE8, 2, 1, -8}, {0x1FEA, 2, 1, -112}, {0x1FEC, 1, 1, -7},
    {0x1FF8, 2, 1, -128}, {0x1FFA, 2, 1, -126}, {0x1FFC, 1, 1, -9}, {0x2126, 1, 1, -7517}, {0x212A, 1, 1, -8383},
    {0x212B, 1, 1, -8262}, {0x2132, 1, 1, 28}, {0x2160, 16, 1, 16}, {0x2183, 1, 1, 1}, {0x24B6, 26, 1, 26},
    {0x2C00, 48, 1, 48}, {0x2C60, 1, 1, 1}, {0x2C62, 1, 1, -10743}, {0x2C63, 1, 1, -3814}, {0x2C64, 1, 1, -10727},
    {0x2C67, 3, 2, 1}, {0x2C6D, 1, 1, -10780}, {0x2C6E, 1, 1, -10749}, {0x2C6F, 1, 1, -10783}, {0x2C70, 1, 1, -10782},
    {0x2C72, 1, 1, 1}, {0x2C75, 1, 1, 1}, {0x2C7E, 2, 1, -10815}, {0x2C80, 50, 2, 1}, {0x2CEB, 2, 2, 1},
    {0x2CF2, 1, 1, 1}, {0xA640, 23, 2, 1}, {0xA680, 14, 2, 1}, {0xA722, 7, 2, 1}, {0xA732, 31, 2, 1}, {0xA779, 2, 2, 1},
    {0xA77D, 1, 1, -35332}, {0xA77E, 5, 2, 1}, {0xA78B, 1, 1, 1}, {0xA78D, 1, 1, -42280}, {0xA790, 2, 2, 1},
    {0xA796, 10, 2, 1}, {0xA7AA, 1, 1, -42308}, {0xA7AB, 1, 1, -42319}, {0xA7AC, 1, 1, -42315}, {0xA7AD, 1, 1, -42305},
    {0xA7AE, 1, 1, -42308}, {0xA7B0, 1, 1, -42258}, {0xA7B1, 1, 1, -42282}, {0xA7B2, 1, 1, -42261}, {0xA7B3, 1, 1, 928},
    {0xA7B4, 8, 2, 1}, {0xA7C4, 1, 1, -48}, {0xA7C5, 1, 1, -42307}, {0xA7C6, 1, 1, -35384}, {0xA7C7, 2, 2, 1},
    {0xA7CB, 1, 1, -42343}, {0xA7CC, 8, 2, 1}, {0xA7DC, 1, 1, -42561}, {0xA7F5, 1, 1, 1}, {0xFF21, 26, 1, 32},
    {0x10400, 40, 1, 40}, {0x104B0, 36, 1, 40}, {0x10570, 11, 1, 39}, {0x1057C, 15, 1, 39}, {0x1058C, 7, 1, 39},
    {0x10594, 2, 1, 39}, {0x10C80, 51, 1, 64}, {0x10D50, 22, 1, 32}, {0x118A0, 32, 1, 32}, {0x16E40, 32, 1, 32},
    {0x16EA0, 25, 1, 27}, {0x1E900, 34, 1, 34},
};
constexpr Composition kCompositions[] = {
    {0x3C, 0x338, 0x226E}, {0x3D, 0x338, 0x2260}, {0x3E, 0x338, 0x226F}, {0x41, 0x300, 0xC0}, {0x41, 0x301, 0xC1},
    {0x41, 0x302, 0xC2}, {0x41, 0x303, 0xC3}, {0x41, 0x304, 0x100}, {0x41, 0x306, 0x102}, {0x41, 0x307, 0x226},
    {0x41, 0x308, 0xC4}, {0x41, 0x309, 0x1EA2}, {0x41, 0x30A, 0xC5}, {0x41, 0x30C, 0x1CD}, {0x41, 0x30F, 0x200},
    {0x41, 0x311, 0x202}, {0x41, 0x323, 0x1EA0}, {0x41, 0x325, 0x1E00}, {0x41, 0x328, 0x104}, {0x42, 0x307, 0x1E02},
    {0x42, 0x323, 0x1E04}, {0x42, 0x331, 0x1E06}, {0x43, 0x301, 0x106}, {0x43, 0x302, 0x108}, {0x43, 0x307, 0x10A},
    {0x43, 0x30C, 0x10C}, {0x43, 0x327, 0xC7}, {0x44, 0x307, 0x1E0A}, {0x44, 0x30C, 0x10E}, {0x44, 0x323, 0x1E0C},
    {0x44, 0x327, 0x1E10}, {0x44, 0x32D, 0x1E12}, {0x44, 0x331, 0x1E0E}, {0x45, 0x300, 0xC8}, {0x45, 0x301, 0xC9},
    {0x45, 0x302, 0xCA}, {0x45, 0x303, 0x1EBC}, {0x45, 0x304, 0x112}, {0x45, 0x306, 0x114}, {0x45, 0x307, 0x116},
    {0x45, 0x308, 0xCB}, {0x45, 0x309, 0x1EBA}, {0x45, 0x30C, 0x11A}, {0x45, 0x30F, 0x204}, {0x45, 0x311, 0x206},
    {0x45, 0x323, 0x1EB8}, {0x45, 0x327, 0x228}, {0x45, 0x328, 0x118}, {0x45, 0x32D, 0x1E18}, {0x45, 0x330, 0x1E1A},
    {0x46, 0x307, 0x1E1E}, {0x47, 0x301, 0x1F4}, {0x47, 0x302, 0x11C}, {0x47, 0x304, 0x1E20}, {0x47, 0x306, 0x11E},
    {0x47, 0x307, 0x120}, {0x47, 0x30C, 0x1E6}, {0x47, 0x327, 0x122}, {0x48, 0x302, 0x124}, {0x48, 0x307, 0x1E22},
    {0x48, 0x308, 0x1E26}, {0x48, 0x30C, 0x21E}, {0x48, 0x323, 0x1E24}, {0x48, 0x327, 0x1E28}, {0x48, 0x32E, 0x1E2A},
    {0x49, 0x300, 0xCC}, {0x49, 0x301, 0xCD}, {0x49, 0x302, 0xCE}, {0x49, 0x303, 0x128}, {0x49, 0x304, 0x12A},
    {0x49, 0x306, 0x12C}, {0x49, 0x307, 0x130}, {0x49, 0x308, 0xCF}, {0x49, 0x309, 0x1EC8}, {0x49, 0x30C, 0x1CF},
    {0x49, 0x30F, 0x208}, {0x49, 0x311, 0x20A}, {0x49, 0x323, 0x1ECA}, {0x49, 0x328, 0x12E}, {0x49, 0x330, 0x1E2C},
    {0x4A, 0x302, 0x134}, {0x4B, 0x301, 0x1E30}, {0x4B, 0x30C, 0x1E8}, {0x4B, 0x323, 0x1E32}, {0x4B, 0x327, 0x136},
    {0x4B, 0x331, 0x1E34}, {0x4C, 0x301, 0x139}, {0x4C, 0x30C, 0x13D}, {0x4C, 0x323, 0x1E36}, {0x4C, 0x327, 0x13B},
    {0x4C, 0x32D, 0x1E3C}, {0x4C, 0x331, 0x1E3A}, {0x4D, 0x301, 0x1E3E}, {0x4D, 0x307, 0x1E40}, {0x4D, 0x323, 0x1E42},
    {0x4E, 0x300, 0x1F8}, {0x4E, 0x301, 0x143}, {0x4E, 0x303, 0xD1}, {0x4E, 0x307, 0x1E44}, {0x4E, 0x30C, 0x147},
    {0x4E, 0x323, 0x1E46}, {0x4E, 0x327, 0x145}, {0x4E, 0x32D, 0x1E4A}, {0x4E, 0x331, 0x1E48}, {0x4F, 0x300, 0xD2},
    {0x4F, 0x301, 0xD3}, {0x4F, 0x302, 0xD4}, {0x4F, 0x303, 0xD5}, {0x4F, 0x304, 0x14C}, {0x4F, 0x306, 0x14E},
    {0x4F, 0x307, 0x22E}, {0x4F, 0x308, 0xD6}, {0x4F, 0x309, 0x1ECE}, {0x4F, 0x30B, 0x150}, {0x4F, 0x30C, 0x1D1},
    {0x4F, 0x30F, 0x20C}, {0x4F, 0x311, 0x20E}, {0x4F, 0x31B, 0x1A0}, {0x4F, 0x323, 0x1ECC}, {0x4F, 0x328, 0x1EA},
    {0x50, 0x301, 0x1E54}, {0x50, 0x307, 0x1E56}, {0x52, 0x301, 0x154}, {0x52, 0x307, 0x1E58}, {0x52, 0x30C, 0x158},
    {0x52, 0x30F, 0x210}, {0x52, 0x311, 0x212}, {0x52, 0x323, 0x1E5A}, {0x52, 0x327, 0x156}, {0x52, 0x331, 0x1E5E},
    {0x53, 0x301, 0x15A}, {0x53, 0x302, 0x15C}, {0x53, 0x307, 0x1E60}, {0x53, 0x30C, 0x160}, {0x53, 0x323, 0x1E62},
    {0x53, 0x326, 0x218}, {0x53, 0x327, 0x15E}, {0x54, 0x307, 0x1E6A}, {0x54, 0x30C, 0x164}, {0x54, 0x323, 0x1E6C},
    {0x54, 0x326, 0x21A}, {0x54, 0x327, 0x162}, {0x54, 0x32D, 0x1E70}, {0x54, 0x331, 0x1E6E}, {0x55, 0x300, 0xD9},
    {0x55, 0x301, 0xDA}, {0x55, 0x302, 0xDB}, {0x55, 0x303, 0x168}, {0x55, 0x304, 0x16A}, {0x55, 0x306, 0x16C},
    {0x55, 0x308, 0xDC}, {0x55, 0x309, 0x1EE6}, {0x55, 0x30A, 0x16E}, {0x55, 0x30B, 0x170}, {0x55, 0x30C, 0x1D3},
    {0x55, 0x30F, 0x214}, {0x55, 0x311, 0x216}, {0x55, 0x31B, 0x1AF}, {0x55, 0x323, 0x1EE4}, {0x55, 0x324, 0x1E72},
    {0x55, 0x328, 0x172}, {0x55, 0x32D, 0x1E76}, {0x55, 0x330, 0x1E74}, {0x56, 0x303, 0x1E7C}, {0x56, 0x323, 0x1E7E},
    {0x57, 0x300, 0x1E80}, {0x57, 0x301, 0x1E82}, {0x57, 0x302, 0x174}, {0x57, 0x307, 0x1E86}, {0x57, 0x308, 0x1E84},
    {0x57, 0x323, 0x1E88}, {0x58, 0x307, 0x1E8A}, {0x58, 0x308, 0x1E8C}, {0x59, 0x300, 0x1EF2}, {0x59, 0x301, 0xDD},
    {0x59, 0x302, 0x176}, {0x59, 0x303, 0x1EF8}, {0x59, 0x304, 0x232}, {0x59, 0x307, 0x1E8E}, {0x59, 0x308, 0x178},
    {0x59, 0x309, 0x1EF6}, {0x59, 0x323, 0x1EF4}, {0x5A, 0x301, 0x179}, {0x5A, 0x302, 0x1E90}, {0x5A, 0x307, 0x17B},
    {0x5A, 0x30C, 0x17D}, {0x5A, 0x323, 0x1E92}, {0x5A, 0x331, 0x1E94}, {0x61, 0x300, 0xE0}, {0x61, 0x301, 0xE1},
    {0x61, 0x302, 0xE2}, {0x61, 0x303, 0xE3}, {0x61, 0x304, 0x101}, {0x61, 0x306, 0x103}, {0x61, 0x307, 0x227},
    {0x61, 0x308, 0xE4}, {0x61, 0x309, 0x1EA3}, {0x61, 0x30A, 0xE5}, {0x61, 0x30C, 0x1CE}, {0x61, 0x30F, 0x201},
    {0x61, 0x311, 0x203}, {0x61, 0x323, 0x1EA1}, {0x61, 0x325, 0x1E01}, {0x61, 0x328, 0x105}, {0x62, 0x307, 0x1E03},
    {0x62, 0x323, 0x1E05}, {0x62, 0x331, 0x1E07}, {0x63, 0x301, 0x107}, {0x63, 0x302, 0x109}, {0x63, 0x307, 0x10B},
    {0x63, 0x30C, 0x10D}, {0x63, 0x327, 0xE7}, {0x64, 0x307, 0x1E0B}, {0x64, 0x30C, 0x10F}, {0x64, 0x323, 0x1E0D},
    {0x64, 0x327, 0x1E11}, {0x64, 0x32D, 0x1E13}, {0x64, 0x331, 0x1E0F}, {0x65, 0x300, 0xE8}, {0x65, 0x301, 0xE9},
    {0x65, 0x302, 0xEA}, {0x65, 0x303, 0x1EBD}, {0x65, 0x304, 0x113}, {0x65, 0x306, 0x115}, {0x65, 0x307, 0x117},
    {0x65, 0x308, 0xEB}, {0x65, 0x309, 0x1EBB}, {0x65, 0x30C, 0x11B}, {0x65, 0x30F, 0x205}, {0x65, 0x311, 0x207},
    {0x65, 0x323, 0x1EB9}, {0x65, 0x327, 0x229}, {0x65, 0x328, 0x119}, {0x65, 0x32D, 0x1E19}, {0x65, 0x330, 0x1E1B},
    {0x66, 0x307, 0x1E1F}, {0x67, 0x301, 0x1F5}, {0x67, 0x302, 0x11D}, {0x67, 0x304, 0x1E21}, {0x67, 0x306, 0x11F},
    {0x67, 0x307, 0x121}, {0x67, 0x30C, 0x1E7}, {0x67, 0x327, 0x123}, {0x68, 0x302, 0x125}, {0x68, 0x307, 0x1E23},
    {0x68, 0x308, 0x1E27}, {0x68, 0x30C, 0x21F}, {0x68, 0x323, 0x1E25}, {0x68, 0x327, 0x1E29}, {0x68, 0x32E, 0x1E2B},
    {0x68, 0x331, 0x1E96}, {0x69, 0x300, 0xEC}, {0x69, 0x301, 0xED}, {0x69, 0x302, 0xEE}, {0x69, 0x303, 0x129},
    {0x69, 0x304, 0x12B}, {0x69, 0x306, 0x12D}, {0x69, 0x308, 0xEF}, {0x69, 0x309, 0x1EC9}, {0x69, 0x30C, 0x1D0},
    {0x69, 0x30F, 0x209}, {0x69, 0x311, 0x20B}, {0x69, 0x323, 0x1ECB}, {0x69, 0x328, 0x12F}, {0x69, 0x330, 0x1E2D},
    {0x6A, 0x302, 0x135}, {0x6A, 0x30C, 0x1F0}, {0x6B, 0x301, 0x1E31}, {0x6B, 0x30C, 0x1E9}, {0x6B, 0x323, 0x1E33},
    {0x6B, 0x327, 0x137}, {0x6B, 0x331, 0x1E35}, {0x6C, 0x301, 0x13A}, {0x6C, 0x30C, 0x13E}, {0x6C, 0x323, 0x1E37},
    {0x6C, 0x327, 0x13C}, {0x6C, 0x32D, 0x1E3D}, {0x6C, 0x331, 0x1E3B}, {0x6D, 0x301, 0x1E3F}, {0x6D, 0x307, 0x1E41},
    {0x6D, 0x323, 0x1E43}, {0x6E, 0x300, 0x1F9}, {0x6E, 0x301, 0x144}, {0x6E, 0x303, 0xF1}, {0x6E, 0x307, 0x1E45},
    {0x6E, 0x30C, 0x148}, {0x6E, 0x323, 0x1E47}, {0x6E, 0x327, 0x146}, {0x6E, 0x32D, 0x1E4B}, {0x6E, 0x331, 0x1E49},
    {0x6F, 0x300, 0xF2}, {0x6F, 0x301, 0xF3}, {0x6F, 0x302, 0xF4}, {0x6F, 0x303, 0xF5}, {0x6F, 0x304, 0x14D},
    {0x6F, 0x306, 0x14F}, {0x6F, 0x307, 0x22F}, {0x6F, 0x308, 0xF6}, {0x6F, 0x309, 0x1ECF}, {0x6F, 0x30B, 0x151},
    {0x6F, 0x30C, 0x1D2}, {0x6F, 0x30F, 0x20D}, {0x6F, 0x311, 0x20F}, {0x6F, 0x31B, 0x1A1}, {0x6F, 0x323, 0x1ECD},
    {0x6F, 0x328, 0x1EB}, {0x70, 0x301, 0x1E55}, {0x70, 0x307, 0x1E57}, {0x72, 0x301, 0x155}, {0x72, 0x307, 0x1E59},
    {0x72, 0x30C, 0x159}, {0x72, 0x30F, 0x211}, {0x72, 0x311, 0x213}, {0x72, 0x323, 0x1E5B}, {0x72, 0x327, 0x157},
    {0x72, 0x331, 0x1E5F}, {0x73, 0x301, 0x15B}, {0x73, 0x302, 0x15D}, {0x73, 0x307, 0x1E61}, {0x73, 0x30C, 0x161},
    {0x73, 0x323, 0x1E63}, {0x73, 0x326, 0x219}, {0x73, 0x327, 0x15F}, {0x74, 0x307, 0x1E6B}, {0x74, 0x308, 0x1E97},
    {0x74, 0x30C, 0x165}, {0x74, 0x323, 0x1E6D}, {0x74, 0x326, 0x21B}, {0x74, 0x327, 0x163}, {0x74, 0x32D, 0x1E71},
    {0x74, 0x331, 0x1E6F}, {0x75, 0x300, 0xF9}, {0x75, 0x301, 0xFA}, {0x75, 0x302, 0xFB}, {0x75, 0x303, 0x169},
    {0x75, 0x304, 0x16B}, {0x75, 0x306, 0x16D}, {0x75, 0x308, 0xFC}, {0x75, 0x309, 0x1EE7}, {0x75, 0x30A, 0x16F},
    {0x75, 0x30B, 0x171}, {0x75, 0x30C, 0x1D4}, {0x75, 0x30F, 0x215}, {0x75, 0x311, 0x217}, {0x75, 0x31B, 0x1B0},
    {0x75, 0x323, 0x1EE5}, {0x75, 0x324, 0x1E73}, {0x75, 0x328, 0x173}, {0x75, 0x32D, 0x1E77}, {0x75, 0x330, 0x1E75},
    {0x76, 0x303, 0x1E7D}, {0x76, 0x323, 0x1E7F}, {0x77, 0x300, 0x1E81}, {0x77, 0x301, 0x1E83}, {0x77, 0x302, 0x175},
    {0x77, 0x307, 0x1E87}, {0x77, 0x308, 0x1E85}, {0x77, 0x30A, 0x1E98}, {0x77, 0x323, 0x1E89}, {0x78, 0x307, 0x1E8B},
    {0x78, 0x308, 0x1E8D}, {0x79, 0x300, 0x1EF3}, {0x79, 0x301, 0xFD}, {0x79, 0x302, 0x177}, {0x79, 0x303, 0x1EF9},
    {0x79, 0x304, 0x233}, {0x79, 0x307, 0x1E8F}, {0x79, 0x308, 0xFF}, {0x79, 0x309, 0x1EF7}, {0x79, 0x30A, 0x1E99},
    {0x79, 0x323, 0x1EF5}, {0x7A, 0x301, 0x17A}, {0x7A, 0x302, 0x1E91}, {0x7A, 0x307, 0x17C}, {0x7A, 0x30C, 0x17E},
    {0x7A, 0x323, 0x1E93}, {0x7A, 0x331, 0x1E95}, {0xA8, 0x300, 0x1FED}, {0xA8, 0x301, 0x385}, {0xA8, 0x342, 0x1FC1},
    {0xC2, 0x300, 0x1EA6}, {0xC2, 0x301, 0x1EA4}, {0xC2, 0x303, 0x1EAA}, {0xC2, 0x309, 0x1EA8}, {0xC4, 0x304, 0x1DE},
    {0xC5, 0x301, 0x1FA}, {0xC6, 0x301, 0x1FC}, {0xC6, 0x304, 0x1E2}, {0xC7, 0x301, 0x1E08}, {0xCA, 0x300, 0x1EC0},
    {0xCA, 0x301, 0x1EBE}, {0xCA, 0x303, 0x1EC4}, {0xCA, 0x309, 0x1EC2}, {0xCF, 0x301, 0x1E2E}, {0xD4, 0x300, 0x1ED2},
    {0xD4, 0x301, 0x1ED0}, {0xD4, 0x303, 0x1ED6}, {0xD4, 0x309, 0x1ED4}, {0xD5, 0x301, 0x1E4C}, {0xD5, 0x304, 0x22C},
    {0xD5, 0x308, 0x1E4E}, {0xD6, 0x304, 0x22A}, {0xD8, 0x301, 0x1FE}, {0xDC, 0x300, 0x1DB}, {0xDC, 0x301, 0x1D7},
    {0xDC, 0x304, 0x1D5}, {0xDC, 0x30C, 0x1D9}, {0xE2, 0x300, 0x1EA7}, {0xE2, 0x301, 0x1EA5}, {0xE2, 0x303, 0x1EAB},
    {0xE2, 0x309, 0x1EA9}, {0xE4, 0x304, 0x1DF}, {0xE5, 0x301, 0x1FB}, {0xE6, 0x301, 0x1FD}, {0xE6, 0x304, 0x1E3},
    {0xE7, 0x301, 0x1E09}, {0xEA, 0x300, 0x1EC1}, {0xEA, 0x301, 0x1EBF}, {0xEA, 0x303, 0x1EC5}, {0xEA, 0x309, 0x1EC3},
    {0xEF, 0x301, 0x1E2F}, {0xF4, 0x300, 0x1ED3}, {0xF4, 0x301, 0x1ED1}, {0xF4, 0x303, 0x1ED7}, {0xF4, 0x309, 0x1ED5},
    {0xF5, 0x301, 0x1E4D}, {0xF5, 0x304, 0x22D}, {0xF5, 0x308, 0x1E4F}, {0xF6, 0x304, 0x22B}, {0xF8, 0x301, 0x1FF},
    {0xFC, 0x300, 0x1DC}, {0xFC, 0x301, 0x1D8}, {0xFC, 0x304, 0x1D6}, {0xFC, 0x30C, 0x1DA}, {0x102, 0x300, 0x1EB0},
    {0x102, 0x301, 0x1EAE}, {0x102, 0x303, 0x1EB4}, {0x102, 0x309, 0x1EB2}, {0x103, 0x300, 0x1EB1},
    {0x103, 0x301, 0x1EAF}, {0x103, 0x303, 0x1EB5}, {0x103, 0x309, 0x1EB3}, {0x112, 0x300, 0x1E14},
    {0x112, 0x301, 0x1E16}, {0x113, 0x300, 0x1E15}, {0x113, 0x301, 0x1E17}, {0x14C, 0x300, 0x1E50},
    {0x14C, 0x301, 0x1E52}, {0x14D, 0x300, 0x1E51}, {0x14D, 0x301, 0x1E53}, {0x15A, 0x307, 0x1E64},
    {0x15B, 0x307, 0x1E65}, {0x160, 0x307, 0x1E66}, {0x161, 0x307, 0x1E67}, {0x168, 0x301, 0x1E78},
    {0x169, 0x301, 0x1E79}, {0x16A, 0x308, 0x1E7A}, {0x16B, 0x308, 0x1E7B}, {0x17F, 0x307, 0x1E9B},
    {0x1A0, 0x300, 0x1EDC}, {0x1A0, 0x301, 0x1EDA}, {0x1A0, 0x303, 0x1EE0}, {0x1A0, 0x309, 0x1EDE},
    {0x1A0, 0x323, 0x1EE2}, {0x1A1, 0x300, 0x1EDD}, {0x1A1, 0x301, 0x1EDB}, {0x1A1, 0x303, 0x1EE1},
    {0x1A1, 0x309, 0x1EDF}, {0x1A1, 0x323, 0x1EE3}, {0x1AF, 0x300, 0x1EEA}, {0x1AF, 0x301, 0x1EE8},
    {0x1AF, 0x303, 0x1EEE}, {0x1AF, 0x309, 0x1EEC}, {0x1AF, 0x323, 0x1EF0}, {0x1B0, 0x300, 0x1EEB},
    {0x1B0, 0x301, 0x1EE9}, {0x1B0, 0x303, 0x1EEF}, {0x1B0, 0x309, 0x1EED}, {0x1B0, 0x323, 0x1EF1},
    {0x1B7, 0x30C, 0x1EE}, {0x1EA, 0x304, 0x1EC}, {0x1EB, 0x304, 0x1ED}, {0x226, 0x304, 0x1E0}, {0x227, 0x304, 0x1E1},
    {0x228, 0x306, 0x1E1C}, {0x229, 0x306, 0x1E1D}, {0x22E, 0x304, 0x230}, {0x22F, 0x304, 0x231}, {0x292, 0x30C, 0x1EF},
    {0x391, 0x300, 0x1FBA}, {0x391, 0x301, 0x386}, {0x391, 0x304, 0x1FB9}, {0x391, 0x306, 0x1FB8},
    {0x391, 0x313, 0x1F08}, {0x391, 0x314, 0x1F09}, {0x391, 0x345, 0x1FBC}, {0x395, 0x300, 0x1FC8},
    {0x395, 0x301, 0x388}, {0x395, 0x313, 0x1F18}, {0x395, 0x314, 0x1F19}, {0x397, 0x300, 0x1FCA},
    {0x397, 0x301, 0x389}, {0x397, 0x313, 0x1F28}, {0x397, 0x314, 0x1F29}, {0x397, 0x345, 0x1FCC},
    {0x399, 0x300, 0x1FDA}, {0x399, 0x301, 0x38A}, {0x399, 0x304, 0x1FD9}, {0x399, 0x306, 0x1FD8},
    {0x399, 0x308, 0x3AA}, {0x399, 0x313, 0x1F38}, {0x399, 0x314, 0x1F39}, {0x39F, 0x300, 0x1FF8},
    {0x39F, 0x301, 0x38C}, {0x39F, 0x313, 0x1F48}, {0x39F, 0x314, 0x1F49}, {0x3A1, 0x314, 0x1FEC},
    {0x3A5, 0x300, 0x1FEA}, {0x3A5, 0x301, 0x38E}, {0x3A5, 0x304, 0x1FE9}, {0x3A5, 0x306, 0x1FE8},
    {0x3A5, 0x308, 0x3AB}, {0x3A5, 0x314, 0x1F59}, {0x3A9, 0x300, 0x1FFA}, {0x3A9, 0x301, 0x38F},
    {0x3A9, 0x313, 0x1F68}, {0x3A9, 0x314, 0x1F69}, {0x3A9, 0x345, 0x1FFC}, {0x3AC, 0x345, 0x1FB4},
    {0x3AE, 0x345, 0x1FC4}, {0x3B1, 0x300, 0x1F70}, {0x3B1, 0x301, 0x3AC}, {0x3B1, 0x304, 0x1FB1},
    {0x3B1, 0x306, 0x1FB0}, {0x3B1, 0x313, 0x1F00}, {0x3B1, 0x314, 0x1F01}, {0x3B1, 0x342, 0x1FB6},
    {0x3B1, 0x345, 0x1FB3}, {0x3B5, 0x300, 0x1F72}, {0x3B5, 0x301, 0x3AD}, {0x3B5, 0x313, 0x1F10},
    {0x3B5, 0x314, 0x1F11}, {0x3B7, 0x300, 0x1F74}, {0x3B7, 0x301, 0x3AE}, {0x3B7, 0x313, 0x1F20},
    {0x3B7, 0x314, 0x1F21}, {0x3B7, 0x342, 0x1FC6}, {0x3B7, 0x345, 0x1FC3}, {0x3B9, 0x300, 0x1F76},
    {0x3B9, 0x301, 0x3AF}, {0x3B9, 0x304, 0x1FD1}, {0x3B9, 0x306, 0x1FD0}, {0x3B9, 0x308, 0x3CA},
    {0x3B9, 0x313, 0x1F30}, {0x3B9, 0x314, 0x1F31}, {0x3B9, 0x342, 0x1FD6}, {0x3BF, 0x300, 0x1F78},
    {0x3BF, 0x301, 0x3CC}, {0x3BF, 0x313, 0x1F40}, {0x3BF, 0x314, 0x1F41}, {0x3C1, 0x313, 0x1FE4},
    {0x3C1, 0x314, 0x1FE5}, {0x3C5, 0x300, 0x1F7A}, {0x3C5, 0x301, 0x3CD}, {0x3C5, 0x304, 0x1FE1},
    {0x3C5, 0x306, 0x1FE0}, {0x3C5, 0x308, 0x3CB}, {0x3C5, 0x313, 0x1F50}, {0x3C5, 0x314, 0x1F51},
    {0x3C5, 0x342, 0x1FE6}, {0x3C9, 0x300, 0x1F7C}, {0x3C9, 0x301, 0x3CE}, {0x3C9, 0x313, 0x1F60},
    {0x3C9, 0x314, 0x1F61}, {0x3C9, 0x342, 0x1FF6}, {0x3C9, 0x345, 0x1FF3}, {0x3CA, 0x300, 0x1FD2},
    {0x3CA, 0x301, 0x390}, {0x3CA, 0x342, 0x1FD7}, {0x3CB, 0x300, 0x1FE2}, {0x3CB, 0x301, 0x3B0},
    {0x3CB, 0x342, 0x1FE7}, {0x3CE, 0x345, 0x1FF4}, {0x3D2, 0x301, 0x3D3}, {0x3D2, 0x308, 0x3D4}, {0x406, 0x308, 0x407},
    {0x410, 0x306, 0x4D0}, {0x410, 0x308, 0x4D2}, {0x413, 0x301, 0x403}, {0x415, 0x300, 0x400}, {0x415, 0x306, 0x4D6},
    {0x415, 0x308, 0x401}, {0x416, 0x306, 0x4C1}, {0x416, 0x308, 0x4DC}, {0x417, 0x308, 0x4DE}, {0x418, 0x300, 0x40D},
    {0x418, 0x304, 0x4E2}, {0x418, 0x306, 0x419}, {0x418, 0x308, 0x4E4}, {0x41A, 0x301, 0x40C}, {0x41E, 0x308, 0x4E6},
    {0x423, 0x304, 0x4EE}, {0x423, 0x306, 0x40E}, {0x423, 0x308, 0x4F0}, {0x423, 0x30B, 0x4F2}, {0x427, 0x308, 0x4F4},
    {0x42B, 0x308, 0x4F8}, {0x42D, 0x308, 0x4EC}, {0x430, 0x306, 0x4D1}, {0x430, 0x308, 0x4D3}, {0x433, 0x301, 0x453},
    {0x435, 0x300, 0x450}, {0x435, 0x306, 0x4D7}, {0x435, 0x308, 0x451}, {0x436, 0x306, 0x4C2}, {0x436, 0x308, 0x4DD},
    {0x437, 0x308, 0x4DF}, {0x438, 0x300, 0x45D}, {0x438, 0x304, 0x4E3}, {0x438, 0x306, 0x439}, {0x438, 0x308, 0x4E5},
    {0x43A, 0x301, 0x45C}, {0x43E, 0x308, 0x4E7}, {0x443, 0x304, 0x4EF}, {0x443, 0x306, 0x45E}, {0x443, 0x308, 0x4F1},
    {0x443, 0x30B, 0x4F3}, {0x447, 0x308, 0x4F5}, {0x44B, 0x308, 0x4F9}, {0x44D, 0x308, 0x4ED}, {0x456, 0x308, 0x457},
    {0x474, 0x30F, 0x476}, {0x475, 0x30F, 0x477}, {0x4D8, 0x308, 0x4DA}, {0x4D9, 0x308, 0x4DB}, {0x4E8, 0x308, 0x4EA},
    {0x4E9, 0x308, 0x4EB}, {0x627, 0x653, 0x622}, {0x627, 0x654, 0x623}, {0x627, 0x655, 0x625}, {0x648, 0x654, 0x624},
    {0x64A, 0x654, 0x626}, {0x6C1, 0x654, 0x6C2}, {0x6D2, 0x654, 0x6D3}, {0x6D5, 0x654, 0x6C0}, {0x928, 0x93C, 0x929},
    {0x930, 0x93C, 0x931}, {0x933, 0x93C, 0x934}, {0x9C7, 0x9BE, 0x9CB}, {0x9C7, 0x9D7, 0x9CC}, {0xB47, 0xB3E, 0xB4B},
    {0xB47, 0xB56, 0xB48}, {0xB47, 0xB57, 0xB4C}, {0xB92, 0xBD7, 0xB94}, {0xBC6, 0xBBE, 0xBCA}, {0xBC6, 0xBD7, 0xBCC},
    {0xBC7, 0xBBE, 0xBCB}, {0xC46, 0xC56, 0xC48}, {0xCBF, 0xCD5, 0xCC0}, {0xCC6, 0xCC2, 0xCCA}, {0xCC6, 0xCD5, 0xCC7},
    {0xCC6, 0xCD6, 0xCC8}, {0xCCA, 0xCD5, 0xCCB}, {0xD46, 0xD3E, 0xD4A}, {0xD46, 0xD57, 0xD4C}, {0xD47, 0xD3E, 0xD4B},
    {0xDD9, 0xDCA, 0xDDA}, {0xDD9, 0xDCF, 0xDDC}, {0xDD9, 0xDDF, 0xDDE}, {0xDDC, 0xDCA, 0xDDD},
    {0x1025, 0x102E, 0x1026}, {0x1B05, 0x1B35, 0x1B06}, {0x1B07, 0x1B35, 0x1B08}, {0x1B09, 0x1B35, 0x1B0A},
    {0x1B0B, 0x1B35, 0x1B0C}, {0x1B0D, 0x1B35, 0x1B0E}, {0x1B11, 0x1B35, 0x1B12}, {0x1B3A, 0x1B35, 0x1B3B},
    {0x1B3C, 0x1B35, 0x1B3D}, {0x1B3E, 0x1B35, 0x1B40}, {0x1B3F, 0x1B35, 0x1B41}, {0x1B42, 0x1B35, 0x1B43},
    {0x1E36, 0x304, 0x1E38}, {0x1E37, 0x304, 0x1E39}, {0x1E5A, 0x304, 0x1E5C}, {0x1E5B, 0x304, 0x1E5D},
    {0x1E62, 0x307, 0x1E68}, {0x1E63, 0x307, 0x1E69}, {0x1EA0, 0x302, 0x1EAC}, {0x1EA0, 0x306, 0x1EB6},
    {0x1EA1, 0x302, 0x1EAD}, {0x1EA1, 0x306, 0x1EB7}, {0x1EB8, 0x302, 0x1EC6}, {0x1EB9, 0x302, 0x1EC7},
    {0x1ECC, 0x302, 0x1ED8}, {0x1ECD, 0x302, 0x1ED9}, {0x1F00, 0x300, 0x1F02}, {0x1F00, 0x301, 0x1F04},
    {0x1F00, 0x342, 0x1F06}, {0x1F00, 0x345, 0x1F80}, {0x1F01, 0x300, 0x1F03}, {0x1F01, 0x301, 0x1F05},
    {0x1F01, 0x342, 0x1F07}, {0x1F01, 0x345, 0x1F81}, {0x1F02, 0x345, 0x1F82}, {0x1F03, 0x345, 0x1F83},
    {0x1F04, 0x345, 0x1F84}, {0x1F05, 0x345, 0x1F85}, {0x1F06, 0x345, 0x1F86}, {0x1F07, 0x345, 0x1F87},
    {0x1F08, 0x300, 0x1F0A}, {0x1F08, 0x301, 0x1F0C}, {0x1F08, 0x342, 0x1F0E}, {0x1F08, 0x345, 0x1F88},
    {0x1F09, 0x300, 0x1F0B}, {0x1F09, 0x301, 0x1F0D}, {0x1F09, 0x342, 0x1F0F}, {0x1F09, 0x345, 0x1F89},
    {0x1F0A, 0x345, 0x1F8A}, {0x1F0B, 0x345, 0x1F8B}, {0x1F0C, 0x345, 0x1F8C}, {0x1F0D, 0x345, 0x1F8D},
    {0x1F0E, 0x345, 0x1F8E}, {0x1F0F, 0x345, 0x1F8F}, {0x1F10, 0x300, 0x1F12}, {0x1F10, 0x301, 0x1F14},
    {0x1F11, 0x300, 0x1F13}, {0x1F11, 0x301, 0x1F15}, {0x1F18, 0x300, 0x1F1A}, {0x1F18, 0x301, 0x1F1C},
    {0x1F19, 0x300, 0x1F1B}, {0x1F19, 0x301, 0x1F1D}, {0x1F20, 0x300, 0x1F22}, {0x1F20, 0x301, 0x1F24},
    {0x1F20, 0x342, 0x1F26}, {0x1F20, 0x345, 0x1F90}, {0x1F21, 0x300, 0x1F23}, {0x1F21, 0x301, 0x1F25},
    {0x1F21, 0x342, 0x1F27}, {0x1F21, 0x345, 0x1F91}, {0x1F22, 0x345, 0x1F92}, {0x1F23, 0x345, 0x1F93},
    {0x1F24, 0x345, 0x1F94}, {0x1F25, 0x345, 0x1F95}, {0x1F26, 0x345, 0x1F96}, {0x1F27, 0x345, 0x1F97},
    {0x1F28, 0x300, 0x1F2A}, {0x1F28, 0x301, 0x1F2C}, {0x1F28, 0x342, 0x1F2E}, {0x1F28, 0x345, 0x1F98},
    {0x1F29, 0x300, 0x1F2B}, {0x1F29, 0x301, 0x1F2D}, {0x1F29, 0x342, 0x1F2F}, {0x1F29, 0x345, 0x1F99},
    {0x1F2A, 0x345, 0x1F9A}, {0x1F2B, 0x345, 0x1F9B}, {0x1F2C, 0x345, 0x1F9C}, {0x1F2D, 0x345, 0x1F9D},
    {0x1F2E, 0x345, 0x1F9E}, {0x1F2F, 0x345, 0x1F9F}, {0x1F30, 0x300, 0x1F32}, {0x1F30, 0x301, 0x1F34},
    {0x1F30, 0x342, 0x1F36}, {0x1F31, 0x300, 0x1F33}, {0x1F31, 0x301, 0x1F35}, {0x1F31, 0x342, 0x1F37},
    {0x1F38, 0x300, 0x1F3A}, {0x1F38, 0x301, 0x1F3C}, {0x1F38, 0x342, 0x1F3E}, {0x1F39, 0x300, 0x1F3B},
    {0x1F39, 0x301, 0x1F3D}, {0x1F39, 0x342, 0x1F3F}, {0x1F40, 0x300, 0x1F42}, {0x1F40, 0x301, 0x1F44},
    {0x1F41, 0x300, 0x1F43}, {0x1F41, 0x301, 0x1F45}, {0x1F48, 0x300, 0x1F4A}, {0x1F48, 0x301, 0x1F4C},
    {0x1F49, 0x300, 0x1F4B}, {0x1F49, 0x301, 0x1F4D}, {0x1F50, 0x300, 0x1F52}, {0x1F50, 0x301, 0x1F54},
    {0x1F50, 0x342, 0x1F56}, {0x1F51, 0x300, 0x1F53}, {0x1F51, 0x301, 0x1F55}, {0x1F51, 0x342, 0x1F57},
    {0x1F59, 0x300, 0x1F5B}, {0x1F59, 0x301, 0x1F5D}, {0x1F59, 0x342, 0x1F5F}, {0x1F60, 0x300, 0x1F62},
    {0x1F60, 0x301, 0x1F64}, {0x1F60, 0x342, 0x1F66}, {0x1F60, 0x345, 0x1FA0}, {0x1F61, 0x300, 0x1F63},
    {0x1F61, 0x301, 0x1F65}, {0x1F61, 0x342, 0x1F67}, {0x1F61, 0x345, 0x1FA1}, {0x1F62, 0x345, 0x1FA2},
    {0x1F63, 0x345, 0x1FA3}, {0x1F64, 0x345, 0x1FA4}, {0x1F65, 0x345, 0x1FA5}, {0x1F66, 0x345, 0x1FA6},
    {0x1F67, 0x345, 0x1FA7}, {0x1F68, 0x300, 0x1F6A}, {0x1F68, 0x301, 0x1F6C}, {0x1F68, 0x342, 0x1F6E},
    {0x1F68, 0x345, 0x1FA8}, {0x1F69, 0x300, 0x1F6B}, {0x1F69, 0x301, 0x1F6D}, {0x1F69, 0x342, 0x1F6F},
    {0x1F69, 0x345, 0x1FA9}, {0x1F6A, 0x345, 0x1FAA}, {0x1F6B, 0x345, 0x1FAB}, {0x1F6C, 0x345, 0x1FAC},
    {0x1F6D, 0x345, 0x1FAD}, {0x1F6E, 0x345, 0x1FAE}, {0x1F6F, 0x345, 0x1FAF}, {0x1F70, 0x345, 0x1FB2},
    {0x1F74, 0x345, 0x1FC2}, {0x1F7C, 0x345, 0x1FF2}, {0x1FB6, 0x345, 0x1FB7}, {0x1FBF, 0x300, 0x1FCD},
    {0x1FBF, 0x301, 0x1FCE}, {0x1FBF, 0x342, 0x1FCF}, {0x1FC6, 0x345, 0x1FC7}, {0x1FF6, 0x345, 0x1FF7},
    {0x1FFE, 0x300, 0x1FDD}, {0x1FFE, 0x301, 0x1FDE}, {0x1FFE, 0x342, 0x1FDF}, {0x2190, 0x338, 0x219A},
    {0x2192, 0x338, 0x219B}, {0x2194, 0x338, 0x21AE}, {0x21D0, 0x338, 0x21CD}, {0x21D2, 0x338, 0x21CF},
    {0x21D4, 0x338, 0x21CE}, {0x2203, 0x338, 0x2204}, {0x2208, 0x338, 0x2209}, {0x220B, 0x338, 0x220C},
    {0x2223, 0x338, 0x2224}, {0x2225, 0x338, 0x2226}, {0x223C, 0x338, 0x2241}, {0x2243, 0x338, 0x2244},
    {0x2245, 0x338, 0x2247}, {0x2248, 0x338, 0x2249}, {0x224D, 0x338, 0x226D}, {0x2261, 0x338, 0x2262},
    {0x2264, 0x338, 0x2270}, {0x2265, 0x338, 0x2271}, {0x2272, 0x338, 0x2274}, {0x2273, 0x338, 0x2275},
    {0x2276, 0x338, 0x2278}, {0x2277, 0x338, 0x2279}, {0x227A, 0x338, 0x2280}, {0x227B, 0x338, 0x2281},
    {0x227C, 0x338, 0x22E0}, {0x227D, 0x338, 0x22E1}, {0x2282, 0x338, 0x2284}, {0x2283, 0x338, 0x2285},
    {0x2286, 0x338, 0x2288}, {0x2287, 0x338, 0x2289}, {0x2291, 0x338, 0x22E2}, {0x2292, 0x338, 0x22E3},
    {0x22A2, 0x338, 0x22AC}, {0x22A8, 0x338, 0x22AD}, {0x22A9, 0x338, 0x22AE}, {0x22AB, 0x338, 0x22AF},
    {0x22B2, 0x338, 0x22EA}, {0x22B3, 0x338, 0x22EB}, {0x22B4, 0x338, 0x22EC}, {0x22B5, 0x338, 0x22ED},
    {0x3046, 0x3099, 0x3094}, {0x304B, 0x3099, 0x304C}, {0x304D, 0x3099, 0x304E}, {0x304F, 0x3099, 0x3050},
    {0x3051, 0x3099, 0x3052}, {0x3053, 0x3099, 0x3054}, {0x3055, 0x3099, 0x3056}, {0x3057, 0x3099, 0x3058},
    {0x3059, 0x3099, 0x305A}, {0x305B, 0x3099, 0x305C}, {0x305D, 0x3099, 0x305E}, {0x305F, 0x3099, 0x3060},
    {0x3061, 0x3099, 0x3062}, {0x3064, 0x3099, 0x3065}, {0x3066, 0x3099, 0x3067}, {0x3068, 0x3099, 0x3069},
    {0x306F, 0x3099, 0x3070}, {0x306F, 0x309A, 0x3071}, {0x3072, 0x3099, 0x3073}, {0x3072, 0x309A, 0x3074},
    {0x3075, 0x3099, 0x3076}, {0x3075, 0x309A, 0x3077}, {0x3078, 0x3099, 0x3079}, {0x3078, 0x309A, 0x307A},
    {0x307B, 0x3099, 0x307C}, {0x307B, 0x309A, 0x307D}, {0x309D, 0x3099, 0x309E}, {0x30A6, 0x3099, 0x30F4},
    {0x30AB, 0x3099, 0x30AC}, {0x30AD, 0x3099, 0x30AE}, {0x30AF, 0x3099, 0x30B0}, {0x30B1, 0x3099, 0x30B2},
    {0x30B3, 0x3099, 0x30B4}, {0x30B5, 0x3099, 0x30B6}, {0x30B7, 0x3099, 0x30B8}, {0x30B9, 0x3099, 0x30BA},
    {0x30BB, 0x3099, 0x30BC}, {0x30BD, 0x3099, 0x30BE}, {0x30BF, 0x3099, 0x30C0}, {0x30C1, 0x3099, 0x30C2},
    {0x30C4, 0x3099, 0x30C5}, {0x30C6, 0x3099, 0x30C7}, {0x30C8, 0x3099, 0x30C9}, {0x30CF, 0x3099, 0x30D0},
    {0x30CF, 0x309A, 0x30D1}, {0x30D2, 0x3099, 0x30D3}, {0x30D2, 0x309A, 0x30D4}, {0x30D5, 0x3099, 0x30D6},
    {0x30D5, 0x309A, 0x30D7}, {0x30D8, 0x3099, 0x30D9}, {0x30D8, 0x309A, 0x30DA}, {0x30DB, 0x3099, 0x30DC},
    {0x30DB, 0x309A, 0x30DD}, {0x30EF, 0x3099, 0x30F7}, {0x30F0, 0x3099, 0x30F8}, {0x30F1, 0x3099, 0x30F9},
    {0x30F2, 0x3099, 0x30FA}, {0x30FD, 0x3099, 0x30FE}, {0x105D2, 0x307, 0x105C9}, {0x105DA, 0x307, 0x105E4},
    {0x11099, 0x110BA, 0x1109A}, {0x1109B, 0x110BA, 0x1109C}, {0x110A5, 0x110BA, 0x110AB}, {0x11131, 0x11127, 0x1112E},
    {0x11132, 0x11127, 0x1112F}, {0x11347, 0x1133E, 0x1134B}, {0x11347, 0x11357, 0x1134C}, {0x11382, 0x113C9, 0x11383},
    {0x11384, 0x113BB, 0x11385}, {0x1138B, 0x113C2, 0x1138E}, {0x11390, 0x113C9, 0x11391}, {0x113C2, 0x113B8, 0x113C7},
    {0x113C2, 0x113C2, 0x113C5}, {0x113C2, 0x113C9, 0x113C8}, {0x114B9, 0x114B0, 0x114BC}, {0x114B9, 0x114BA, 0x114BB},
    {0x114B9, 0x114BD, 0x114BE}, {0x115B8, 0x115AF, 0x115BA}, {0x115B9, 0x115AF, 0x115BB}, {0x11935, 0x11930, 0x11938},
    {0x1611E, 0x1611E, 0x16121}, {0x1611E, 0x1611F, 0x16123}, {0x1611E, 0x16120, 0x16125}, {0x1611E, 0x16129, 0x16122},
    {0x16121, 0x1611F, 0x16126}, {0x16121, 0x16120, 0x16128}, {0x16122, 0x1611F, 0x16127}, {0x16129, 0x1611F, 0x16124},
    {0x16D63, 0x16D67, 0x16D69}, {0x16D67, 0x16D67, 0x16D68}, {0x16D69, 0x16D67, 0x16D6A},
};
// clang-format on
// END GENERATED by tools/tokenizer/gen_unicode_tables.mjs

uint32_t lower_simple(uint32_t cp) {
  const auto* end = std::end(kLowerRanges);
  const auto* it =
      std::upper_bound(std::begin(kLowerRanges), end, cp, [](uint32_t c, const LowerRange& r) { return c < r.first; });
  if (it == std::begin(kLowerRanges)) return cp;
  const LowerRange& r = *(it - 1);
  const uint32_t off = cp - r.first;
  if (off % r.stride != 0 || off / r.stride >= r.count) return cp;
  return static_cast<uint32_t>(static_cast<int64_t>(cp) + r.delta);
}

// Hangul syllable composition (Unicode 3.12).
constexpr uint32_t kHangulS = 0xAC00, kHangulL = 0x1100, kHangulV = 0x1161, kHangulT = 0x11A7;
constexpr uint32_t kHangulLCount = 19, kHangulVCount = 21, kHangulTCount = 28;
constexpr uint32_t kHangulNCount = kHangulVCount * kHangulTCount, kHangulSCount = kHangulLCount * kHangulNCount;

// The composite of a + b, or 0 if they do not compose.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kHangulL && a < kHangulL + kHangulLCount && b >= kHangulV && b < kHangulV + kHangulVCount) {
    return kHangulS + ((a - kHangulL) * kHangulVCount + (b - kHangulV)) * kHangulTCount;
  }
  if (a >= kHangulS && a < kHangulS + kHangulSCount && (a - kHangulS) % kHangulTCount == 0 && b > kHangulT &&
      b < kHangulT + kHangulTCount) {
    return a + (b - kHangulT);
  }
  const auto* end = std::end(kCompositions);
  const auto* it = std::lower_bound(std::begin(kCompositions), end, std::pair{a, b},
                                    [](const Composition& c, const std::pair<uint32_t, uint32_t>& k) {
                                      return c.first != k.first ? c.first < k.first : c.second < k.second;
                                    });
  return it != end && it->first == a && it->second == b ? it->composite : 0;
}

// The NFC subset of tokenizer.h: each character is composed with the characters that follow it for as long
// as the pair composes.
std::string nfc(std::string_view s) {
  if (std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) {
    return std::string(s);
  }
  std::vector<uint32_t> cps;
  for (size_t i = 0; i < s.size();) cps.push_back(next_code_point(s, i));
  std::vector<uint32_t> out;
  out.reserve(cps.size());
  for (uint32_t cp : cps) {
    if (!out.empty()) {
      if (const uint32_t c = compose(out.back(), cp)) {
        out.back() = c;
        continue;
      }
    }
    out.push_back(cp);
  }
  std::string r;
  r.reserve(s.size());
  for (uint32_t cp : out) append_utf8(r, cp);
  return r;
}

// ---------------------------------------------------------------------------------------------------------
// Regex: PCRE2 with UTF + UCP, JIT-compiled where the library supports it.

using Spans = std::vector<std::pair<size_t, size_t>>;

#if STAVID_HAVE_PCRE2
class Regex {
 public:
  Regex(const std::string& pattern, bool literal, const std::string& where) {
    int err = 0;
    PCRE2_SIZE offset = 0;
    const uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);  // UCP is not allowed with LITERAL
    code_ =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &err, &offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      STAVID_THROW(ErrorCode::DataLoss, where, ": regex /", pattern, "/ does not compile at offset ", offset, ": ",
                   reinterpret_cast<const char*>(msg));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT is missing
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // The successive non-overlapping matches of s as byte spans; an empty match moves on by one character.
  void find_all(std::string_view s, Spans& out) const {
    out.clear();
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    STAVID_CHECK_CODE(md != nullptr, ErrorCode::OutOfMemory, "pcre2_match_data_create failed");
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    size_t pos = 0;
    while (pos <= s.size()) {
      int rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
        rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md.get(), nullptr);
      }
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        STAVID_THROW(ErrorCode::Internal, "pcre2_match failed: ", reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      const size_t begin = ov[0], end = std::max(ov[0], ov[1]);
      out.emplace_back(begin, end);
      if (end > begin) {
        pos = end;
      } else {
        if (end >= s.size()) break;
        pos = end + utf8_len(static_cast<unsigned char>(s[end]));
      }
    }
  }

 private:
  pcre2_code* code_ = nullptr;
};
#else
class Regex {
 public:
  Regex(const std::string&, bool, const std::string& where) {
    STAVID_THROW(ErrorCode::Unsupported, where, ": this build has no PCRE2 (install libpcre2-dev and reconfigure)");
  }
  void find_all(std::string_view, Spans&) const {}
};
#endif

// Final_Sigma (Unicode 3.13): a capital sigma after a cased letter and not before one lowers to final sigma.
const Regex& final_sigma_regex() {
  static const Regex re("\\p{Cased}\\p{Case_Ignorable}*\\K\\x{03A3}(?!\\p{Case_Ignorable}*\\p{Cased})", false,
                        "final sigma");
  return re;
}

// Unicode's full lower-case mapping: the simple mappings, U+0130 -> "i\u0307", and Final_Sigma.
std::string lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  if (std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) {
    for (char c : s) out += (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
    return out;
  }
  std::vector<bool> final_sigma;
  if (s.find("\xCE\xA3") != std::string_view::npos) {
    Spans spans;
    final_sigma_regex().find_all(s, spans);
    final_sigma.assign(s.size(), false);
    for (const auto& sp : spans) final_sigma[sp.first] = true;
  }
  for (size_t i = 0; i < s.size();) {
    const size_t at = i;
    const uint32_t cp = next_code_point(s, i);
    if (cp == 0x130) {
      out += "i\xCC\x87";
    } else if (cp == 0x3A3 && !final_sigma.empty() && final_sigma[at]) {
      append_utf8(out, 0x3C2);
    } else {
      append_utf8(out, lower_simple(cp));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// GPT-2's byte <-> unicode mapping (ByteLevel): printable bytes stand for themselves, the others for
// U+0100 + n in byte order.

struct ByteLevelTables {
  std::string byte_to_char[256];  // UTF-8 of the stand-in character
  int16_t char_to_byte[324];      // code point -> byte, -1 where none

  ByteLevelTables() {
    std::fill(std::begin(char_to_byte), std::end(char_to_byte), int16_t{-1});
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
      append_utf8(byte_to_char[b], cp);
      char_to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelTables& byte_level() {
  static const ByteLevelTables t;
  return t;
}

std::string byte_level_encode(std::string_view s) {
  const auto& t = byte_level();
  std::string out;
  out.reserve(s.size() * 2);
  for (char c : s) out += t.byte_to_char[static_cast<unsigned char>(c)];
  return out;
}

// The bytes a ByteLevel token stands for; a token with a character outside the mapping (an added token such
// as "<|eot_id|>" is mapped char by char, and its characters are all printable ASCII) keeps its own bytes.
void byte_level_decode(std::string_view token, std::string& bytes) {
  const auto& t = byte_level();
  std::string out;
  for (size_t i = 0; i < token.size();) {
    const uint32_t cp = next_code_point(token, i);
    if (cp >= 324 || t.char_to_byte[cp] < 0) {
      bytes.append(token);
      return;
    }
    out += static_cast<char>(t.char_to_byte[cp]);
  }
  bytes += out;
}

// ---------------------------------------------------------------------------------------------------------
// Pieces of the pipeline, as read from tokenizer.json.

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using Vocab = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct NormStep {
  enum class Kind { Nfc, Lowercase, Strip, Replace, Prepend };
  explicit NormStep(Kind k) : kind(k) {}
  Kind kind;
  bool strip_left = false;
  bool strip_right = false;
  std::shared_ptr<const Regex> pattern;  // Replace
  std::string content;                   // Replace, Prepend
};

// HF SplitDelimiterBehavior.
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct PreStep {
  enum class Kind { Split, ByteLevel };
  explicit PreStep(Kind k) : kind(k) {}
  Kind kind;
  std::shared_ptr<const Regex> pattern;  // Split
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  bool add_prefix_space = false;  // ByteLevel
  bool use_regex = false;         // ByteLevel: split with GPT-2's pattern first
};

struct DecodeStep {
  enum class Kind { ByteLevel, BpeSuffix, Fuse };
  explicit DecodeStep(Kind k) : kind(k) {}
  Kind kind;
  std::string suffix;  // BpeSuffix
};

struct AddedToken {
  std::string content;  // normalized already when `normalized`
  int32_t id = kNoToken;
  bool special = false;
  bool normalized = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

// Leftmost-longest matching of added tokens.
struct AddedMatcher {
  std::vector<const AddedToken*> by_first_byte[256];  // longest first

  bool empty() const {
    return std::all_of(std::begin(by_first_byte), std::end(by_first_byte), [](const auto& v) { return v.empty(); });
  }
};

struct Segment {
  std::string text;
  int32_t id = kNoToken;  // an added token when != kNoToken
};

bool is_word_byte(unsigned char c) {
  return std::isalnum(c) || c == '_' || c >= 0x80;
}

// Cuts the added tokens out of `text`.
void split_added(const std::string& text, const AddedMatcher& m, std::vector<Segment>& out) {
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    const AddedToken* hit = nullptr;
    for (const AddedToken* t : m.by_first_byte[static_cast<unsigned char>(text[i])]) {
      if (text.compare(i, t->content.size(), t->content) != 0) continue;
      if (t->single_word) {
        const size_t stop = i + t->content.size();
        if ((i > 0 && is_word_byte(text[i - 1])) || (stop < text.size() && is_word_byte(text[stop]))) continue;
      }
      hit = t;
      break;
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t begin = i, end = i + hit->content.size();
    if (hit->lstrip) begin -= space_run(std::string_view(text).substr(start, begin - start), /*forward=*/false);
    if (hit->rstrip) end += space_run(std::string_view(text).substr(end), /*forward=*/true);
    if (begin > start) out.push_back({text.substr(start, begin - start), kNoToken});
    out.push_back({std::string(), hit->id});
    i = start = end;
  }
  if (start < text.size()) out.push_back({text.substr(start), kNoToken});
}

// A small LRU map from a pre-token to its ids.
class WordCache {
 public:
  bool get(const std::string& key, std::vector<int32_t>& out) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = map_.find(key);
    if (it == map_.end()) return false;
    lru_.splice(lru_.begin(), lru_, it->second);
    out.insert(out.end(), it->second->second.begin(), it->second->second.end());
    return true;
  }
  void put(const std::string& key, const int32_t* ids, size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    if (capacity_ == 0 || map_.count(key) != 0) return;
    lru_.emplace_front(key, std::vector<int32_t>(ids, ids + n));
    map_.emplace(lru_.front().first, lru_.begin());
    trim();
  }
  void set_capacity(size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    capacity_ = n;
    trim();
  }

 private:
  void trim() {
    while (map_.size() > capacity_) {
      map_.erase(lru_.back().first);
      lru_.pop_back();
    }
  }
  using Entry = std::pair<std::string, std::vector<int32_t>>;
  std::mutex mu_;
  size_t capacity_ = 16384;
  std::list<Entry> lru_;  // most recent first; map_ keys view into these strings
  std::unordered_map<std::string_view, std::list<Entry>::iterator> map_;
};

constexpr size_t kMaxCachedWordBytes = 256;

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------

struct BpeTokenizer::Impl {
  std::string source;

  // model
  Vocab vocab;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (a, b) -> (rank, merged id)
  std::string continuing_prefix;
  std::string end_of_word_suffix;
  int32_t unk_id = kNoToken;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;

  // pipeline
  std::vector<AddedToken> added;
  AddedMatcher raw_matcher;         // normalized == false
  AddedMatcher normalized_matcher;  // normalized == true
  std::vector<NormStep> normalizer;
  std::vector<PreStep> pre_tokenizer;
  std::shared_ptr<const Regex> gpt2_regex;  // for ByteLevel(use_regex)
  std::vector<int32_t> prefix, suffix;      // post-processor, single sequence
  std::vector<DecodeStep> decoder;

  std::vector<std::string> id_to_token;  // model and added tokens
  std::vector<uint8_t> special;          // per id
  size_t num_ids = 0;
  SpecialTokenIds ids;

  mutable WordCache cache;

  std::string normalize(std::string s) const;
  void pre_tokenize(const std::string& s, std::vector<std::string>& pieces) const;
  void tokenize_word(const std::string& word, std::vector<int32_t>& out) const;
  void merge_word(const std::string& word, std::vector<int32_t>& out) const;
  std::vector<int32_t> encode(std::string_view text) const;
};

namespace {

// ---------------------------------------------------------------------------------------------------------
// Loading. Every error names the file (impl.source) and the field.

std::string field_path(const std::string& where, const char* key) {
  return where.empty() ? key : where + "." + key;
}

const json& require(const json& obj, const char* key, const std::string& where, const std::string& source) {
  STAVID_CHECK_CODE(obj.is_object(), ErrorCode::DataLoss, source, ": ", where.empty() ? "the file" : where,
                    " is not a JSON object");
  const auto it = obj.find(key);
  STAVID_CHECK_CODE(it != obj.end() && !it->is_null(), ErrorCode::DataLoss, source, ": missing field ",
                    field_path(where, key));
  return *it;
}

bool get_bool(const json& obj, const char* key, bool fallback) {
  const auto it = obj.find(key);
  return it != obj.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

std::string get_string(const json& obj, const char* key) {
  const auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string type_of(const json& obj, const std::string& where, const std::string& source) {
  const json& t = require(obj, "type", where, source);
  STAVID_CHECK_CODE(t.is_string(), ErrorCode::DataLoss, source, ": ", field_path(where, "type"), " is not a string");
  return t.get<std::string>();
}

// A {"Regex": "..."} or {"String": "..."} pattern.
std::shared_ptr<const Regex> read_pattern(const json& obj, const std::string& where, const std::string& source) {
  const json& p = require(obj, "pattern", where, source);
  if (p.is_object() && p.contains("Regex") && p["Regex"].is_string()) {
    return std::make_shared<const Regex>(p["Regex"].get<std::string>(), /*literal=*/false, source);
  }
  if (p.is_object() && p.contains("String") && p["String"].is_string()) {
    return std::make_shared<const Regex>(p["String"].get<std::string>(), /*literal=*/true, source);
  }
  STAVID_THROW(ErrorCode::DataLoss, source, ": ", field_path(where, "pattern"),
               " is neither {\"Regex\": ...} nor {\"String\": ...}");
}

void read_normalizer(const json& n, const std::string& where, const std::string& source, std::vector<NormStep>& out) {
  if (n.is_null()) return;
  const std::string type = type_of(n, where, source);
  if (type == "Sequence") {
    const json& list = require(n, "normalizers", where, source);
    STAVID_CHECK_CODE(list.is_array(), ErrorCode::DataLoss, source, ": ", where, ".normalizers is not an array");
    for (size_t i = 0; i < list.size(); ++i) {
      read_normalizer(list[i], detail::str_cat(where, ".normalizers[", i, "]"), source, out);
    }
  } else if (type == "NFC") {
    out.emplace_back(NormStep::Kind::Nfc);
  } else if (type == "Lowercase") {
    out.emplace_back(NormStep::Kind::Lowercase);
  } else if (type == "Strip") {
    NormStep s(NormStep::Kind::Strip);
    s.strip_left = get_bool(n, "strip_left", true);
    s.strip_right = get_bool(n, "strip_right", true);
    out.push_back(std::move(s));
  } else if (type == "Replace") {
    NormStep s(NormStep::Kind::Replace);
    s.pattern = read_pattern(n, where, source);
    const json& c = require(n, "content", where, source);
    STAVID_CHECK_CODE(c.is_string(), ErrorCode::DataLoss, source, ": ", where, ".content is not a string");
    s.content = c.get<std::string>();
    out.push_back(std::move(s));
  } else if (type == "Prepend") {
    NormStep s(NormStep::Kind::Prepend);
    s.content = require(n, "prepend", where, source).get<std::string>();
    out.push_back(std::move(s));
  } else {
    STAVID_THROW(ErrorCode::Unsupported, source, ": normalizer type '", type, "' (", where,
                 ") is not supported (NFC, Lowercase, Strip, Replace, Prepend, Sequence are)");
  }
}

SplitBehavior read_behavior(const json& n, const std::string& where, const std::string& source) {
  const std::string b = get_string(n, "behavior");
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  STAVID_THROW(ErrorCode::DataLoss, source, ": ", where, ".behavior '", b, "' is not a split behavior");
}

void read_pre_tokenizer(const json& n, const std::string& where, BpeTokenizer::Impl& impl) {
  const std::string& source = impl.source;
  if (n.is_null()) return;
  const std::string type = type_of(n, where, source);
  if (type == "Sequence") {
    const json& list = require(n, "pretokenizers", where, source);
    STAVID_CHECK_CODE(list.is_array(), ErrorCode::DataLoss, source, ": ", where, ".pretokenizers is not an array");
    for (size_t i = 0; i < list.size(); ++i) {
      read_pre_tokenizer(list[i], detail::str_cat(where, ".pretokenizers[", i, "]"), impl);
    }
  } else if (type == "Split") {
    PreStep s(PreStep::Kind::Split);
    s.pattern = read_pattern(n, where, source);
    s.behavior = read_behavior(n, where, source);
    s.invert = get_bool(n, "invert", false);
    impl.pre_tokenizer.push_back(std::move(s));
  } else if (type == "ByteLevel") {
    PreStep s(PreStep::Kind::ByteLevel);
    s.add_prefix_space = get_bool(n, "add_prefix_space", true);
    s.use_regex = get_bool(n, "use_regex", true);
    if (s.use_regex && !impl.gpt2_regex) {
      // tokenizers/src/pre_tokenizers/byte_level.rs
      impl.gpt2_regex = std::make_shared<const Regex>(
          "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", false, source);
    }
    impl.pre_tokenizer.push_back(std::move(s));
  } else if (type == "Whitespace") {
    PreStep s(PreStep::Kind::Split);
    s.pattern = std::make_shared<const Regex>("\\w+|[^\\w\\s]+", false, source);
    s.behavior = SplitBehavior::Removed;
    s.invert = true;
    impl.pre_tokenizer.push_back(std::move(s));
  } else if (type == "WhitespaceSplit") {
    PreStep s(PreStep::Kind::Split);
    s.pattern = std::make_shared<const Regex>("\\s+", false, source);
    s.behavior = SplitBehavior::Removed;
    impl.pre_tokenizer.push_back(std::move(s));
  } else {
    STAVID_THROW(ErrorCode::Unsupported, source, ": pre-tokenizer type '", type, "' (", where,
                 ") is not supported (Split, ByteLevel, Whitespace, WhitespaceSplit, Sequence are)");
  }
}

void read_post_processor(const json& n, const std::string& where, BpeTokenizer::Impl& impl) {
  const std::string& source = impl.source;
  if (n.is_null()) return;
  const std::string type = type_of(n, where, source);
  std::vector<int32_t> pre, post;
  if (type == "Sequence") {
    const json& list = require(n, "processors", where, source);
    STAVID_CHECK_CODE(list.is_array(), ErrorCode::DataLoss, source, ": ", where, ".processors is not an array");
    for (size_t i = 0; i < list.size(); ++i) {
      read_post_processor(list[i], detail::str_cat(where, ".processors[", i, "]"), impl);
    }
    return;
  } else if (type == "ByteLevel") {
    return;  // offsets only
  } else if (type == "TemplateProcessing") {
    const json& single = require(n, "single", where, source);
    const json& specials = require(n, "special_tokens", where, source);
    STAVID_CHECK_CODE(single.is_array(), ErrorCode::DataLoss, source, ": ", where, ".single is not an array");
    bool seen_sequence = false;
    for (const json& item : single) {
      if (item.contains("Sequence")) {
        STAVID_CHECK_CODE(!seen_sequence, ErrorCode::DataLoss, source, ": ", where, ".single has two sequences");
        seen_sequence = true;
        continue;
      }
      STAVID_CHECK_CODE(item.contains("SpecialToken"), ErrorCode::DataLoss, source, ": ", where,
                        ".single has an item that is neither SpecialToken nor Sequence");
      const std::string name = require(item["SpecialToken"], "id", where + ".single[]", source).get<std::string>();
      STAVID_CHECK_CODE(specials.contains(name), ErrorCode::DataLoss, source, ": ", where, " uses special token '",
                        name, "' missing from special_tokens");
      const json& ids = require(specials[name], "ids", where + ".special_tokens", source);
      for (const json& id : ids) (seen_sequence ? post : pre).push_back(id.get<int32_t>());
    }
    STAVID_CHECK_CODE(seen_sequence, ErrorCode::DataLoss, source, ": ", where, ".single has no $A sequence");
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    const json& cls = require(n, "cls", where, source);
    const json& sep = require(n, "sep", where, source);
    STAVID_CHECK_CODE(cls.is_array() && cls.size() == 2 && sep.is_array() && sep.size() == 2, ErrorCode::DataLoss,
                      source, ": ", where, ".cls / .sep are not [token, id] pairs");
    pre.push_back(cls[1].get<int32_t>());
    post.push_back(sep[1].get<int32_t>());
  } else {
    STAVID_THROW(ErrorCode::Unsupported, source, ": post-processor type '", type, "' (", where,
                 ") is not supported (TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, Sequence are)");
  }
  // A later processor wraps what the earlier ones produced.
  impl.prefix.insert(impl.prefix.begin(), pre.begin(), pre.end());
  impl.suffix.insert(impl.suffix.end(), post.begin(), post.end());
}

void read_decoder(const json& n, const std::string& where, BpeTokenizer::Impl& impl) {
  const std::string& source = impl.source;
  if (n.is_null()) return;
  const std::string type = type_of(n, where, source);
  if (type == "Sequence") {
    const json& list = require(n, "decoders", where, source);
    STAVID_CHECK_CODE(list.is_array(), ErrorCode::DataLoss, source, ": ", where, ".decoders is not an array");
    for (size_t i = 0; i < list.size(); ++i) read_decoder(list[i], detail::str_cat(where, ".decoders[", i, "]"), impl);
  } else if (type == "ByteLevel") {
    impl.decoder.emplace_back(DecodeStep::Kind::ByteLevel);
  } else if (type == "BPEDecoder") {
    DecodeStep s(DecodeStep::Kind::BpeSuffix);
    s.suffix = n.contains("suffix") ? get_string(n, "suffix") : "</w>";
    impl.decoder.push_back(std::move(s));
  } else if (type == "Fuse") {
    impl.decoder.emplace_back(DecodeStep::Kind::Fuse);
  } else {
    STAVID_THROW(ErrorCode::Unsupported, source, ": decoder type '", type, "' (", where,
                 ") is not supported (ByteLevel, BPEDecoder, Fuse, Sequence are)");
  }
}

void read_model(const json& m, BpeTokenizer::Impl& impl) {
  const std::string& source = impl.source;
  STAVID_CHECK_CODE(m.is_object(), ErrorCode::DataLoss, source, ": model is not a JSON object");
  // HF writes "type"; files without it are untagged and read as BPE when they have merges.
  const std::string type = m.contains("type") ? type_of(m, "model", source) : (m.contains("merges") ? "BPE" : "");
  STAVID_CHECK_CODE(type == "BPE", ErrorCode::Unsupported, source, ": model type '", type,
                    "' is not supported (only BPE is)");
  const json& vocab = require(m, "vocab", "model", source);
  const json& merges = require(m, "merges", "model", source);
  STAVID_CHECK_CODE(vocab.is_object(), ErrorCode::DataLoss, source, ": model.vocab is not an object");
  STAVID_CHECK_CODE(merges.is_array(), ErrorCode::DataLoss, source, ": model.merges is not an array");
  const auto dropout = m.find("dropout");
  STAVID_CHECK_CODE(dropout == m.end() || dropout->is_null() || dropout->get<double>() == 0.0, ErrorCode::Unsupported,
                    source, ": BPE dropout is a training feature and is not supported");

  impl.vocab.reserve(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    STAVID_CHECK_CODE(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < INT32_MAX,
                      ErrorCode::DataLoss, source, ": model.vocab['", token, "'] is not a valid id");
    impl.vocab.emplace(token, id.get<int32_t>());
  }
  impl.continuing_prefix = get_string(m, "continuing_subword_prefix");
  impl.end_of_word_suffix = get_string(m, "end_of_word_suffix");
  impl.fuse_unk = get_bool(m, "fuse_unk", false);
  impl.byte_fallback = get_bool(m, "byte_fallback", false);
  impl.ignore_merges = get_bool(m, "ignore_merges", false);
  const std::string unk = get_string(m, "unk_token");
  if (!unk.empty()) {
    const auto it = impl.vocab.find(unk);
    STAVID_CHECK_CODE(it != impl.vocab.end(), ErrorCode::DataLoss, source, ": model.unk_token '", unk,
                      "' is not in the vocabulary");
    impl.unk_id = it->second;
  }

  const auto id_of = [&](const std::string& token, size_t rank) {
    const auto it = impl.vocab.find(token);
    STAVID_CHECK_CODE(it != impl.vocab.end(), ErrorCode::DataLoss, source, ": model.merges[", rank, "] names '", token,
                      "', which is not in the vocabulary");
    return it->second;
  };
  impl.merges.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& m_i = merges[rank];
    std::string a, b;
    if (m_i.is_string()) {  // "a b"
      const std::string& s = m_i.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      STAVID_CHECK_CODE(space != std::string::npos && s.find(' ', space + 1) == std::string::npos, ErrorCode::DataLoss,
                        source, ": model.merges[", rank, "] '", s, "' is not two tokens separated by a space");
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else {  // ["a", "b"]
      STAVID_CHECK_CODE(m_i.is_array() && m_i.size() == 2 && m_i[0].is_string() && m_i[1].is_string(),
                        ErrorCode::DataLoss, source, ": model.merges[", rank,
                        "] is neither \"a b\" nor [\"a\", \"b\"]");
      a = m_i[0].get<std::string>();
      b = m_i[1].get<std::string>();
    }
    const int32_t ia = id_of(a, rank), ib = id_of(b, rank);
    const std::string_view tail = !impl.continuing_prefix.empty() && b.starts_with(impl.continuing_prefix)
                                      ? std::string_view(b).substr(impl.continuing_prefix.size())
                                      : std::string_view(b);
    const int32_t merged = id_of(a + std::string(tail), rank);
    impl.merges[pair_key(ia, ib)] = {static_cast<int32_t>(rank), merged};  // a repeated pair: the last wins, as in HF
  }
}

void add_matcher_entry(AddedMatcher& m, const AddedToken* t) {
  if (t->content.empty()) return;
  auto& list = m.by_first_byte[static_cast<unsigned char>(t->content[0])];
  list.push_back(t);
  std::stable_sort(list.begin(), list.end(),
                   [](const AddedToken* x, const AddedToken* y) { return x->content.size() > y->content.size(); });
}

// Token named by a tokenizer_config.json entry: "<s>" or {"content": "<s>", ...}.
void apply_config_token(const json& cfg, const char* key, const BpeTokenizer::Impl& impl, const std::string& source,
                        int32_t& slot) {
  const auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return;
  std::string token;
  if (it->is_string()) {
    token = it->get<std::string>();
  } else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    token = (*it)["content"].get<std::string>();
  } else {
    STAVID_THROW(ErrorCode::DataLoss, source, ": ", key, " is neither a string nor {\"content\": ...}");
  }
  for (const AddedToken& t : impl.added) {
    if (t.content == token) {
      slot = t.id;
      return;
    }
  }
  const auto v = impl.vocab.find(token);
  STAVID_CHECK_CODE(v != impl.vocab.end(), ErrorCode::DataLoss, source, ": ", key, " '", token,
                    "' is not a token of the tokenizer");
  slot = v->second;
}

std::shared_ptr<BpeTokenizer::Impl> build(std::string_view text, const std::string& source) {
  STAVID_CHECK_CODE(STAVID_HAVE_PCRE2, ErrorCode::Unsupported, source,
                    ": this build has no PCRE2, which tokenizers need (install libpcre2-dev and reconfigure)");
  json root;
  try {
    root = json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    STAVID_THROW(ErrorCode::DataLoss, source, ": not valid JSON (", e.what(), ")");
  }
  STAVID_CHECK_CODE(root.is_object(), ErrorCode::DataLoss, source, ": not a tokenizer.json (not a JSON object)");
  auto impl = std::make_shared<BpeTokenizer::Impl>();
  impl->source = source;
  try {
    read_model(require(root, "model", "", source), *impl);

    if (root.contains("added_tokens") && !root["added_tokens"].is_null()) {
      const json& list = root["added_tokens"];
      STAVID_CHECK_CODE(list.is_array(), ErrorCode::DataLoss, source, ": added_tokens is not an array");
      impl->added.reserve(list.size());
      for (size_t i = 0; i < list.size(); ++i) {
        const std::string where = detail::str_cat("added_tokens[", i, "]");
        AddedToken t;
        t.id = require(list[i], "id", where, source).get<int32_t>();
        t.content = require(list[i], "content", where, source).get<std::string>();
        t.special = get_bool(list[i], "special", false);
        t.normalized = get_bool(list[i], "normalized", !t.special);
        t.lstrip = get_bool(list[i], "lstrip", false);
        t.rstrip = get_bool(list[i], "rstrip", false);
        t.single_word = get_bool(list[i], "single_word", false);
        STAVID_CHECK_CODE(t.id >= 0, ErrorCode::DataLoss, source, ": ", where, ".id is negative");
        impl->added.push_back(std::move(t));
      }
    }

    if (root.contains("normalizer")) read_normalizer(root["normalizer"], "normalizer", source, impl->normalizer);
    if (root.contains("pre_tokenizer")) read_pre_tokenizer(root["pre_tokenizer"], "pre_tokenizer", *impl);
    if (root.contains("post_processor")) read_post_processor(root["post_processor"], "post_processor", *impl);
    if (root.contains("decoder")) read_decoder(root["decoder"], "decoder", *impl);
    const json& padding = root.contains("padding") ? root["padding"] : json();
    if (padding.is_object() && padding.contains("pad_id")) impl->ids.pad = padding["pad_id"].get<int32_t>();
  } catch (const json::exception& e) {
    STAVID_THROW(ErrorCode::DataLoss, source, ": unexpected field type (", e.what(), ")");
  }

  // Added tokens matched on normalized text are normalized themselves.
  for (AddedToken& t : impl->added) {
    if (t.normalized) t.content = impl->normalize(t.content);
  }
  for (const AddedToken& t : impl->added)
    add_matcher_entry(t.normalized ? impl->normalized_matcher : impl->raw_matcher, &t);

  // id -> token, special flags, distinct ids.
  int32_t max_id = -1;
  for (const auto& [token, id] : impl->vocab) max_id = std::max(max_id, id);
  for (const AddedToken& t : impl->added) max_id = std::max(max_id, t.id);
  impl->id_to_token.assign(static_cast<size_t>(max_id + 1), std::string());
  std::vector<uint8_t> used(static_cast<size_t>(max_id + 1), 0);
  impl->special.assign(static_cast<size_t>(max_id + 1), 0);
  for (const auto& [token, id] : impl->vocab) {
    impl->id_to_token[id] = token;
    used[id] = 1;
  }
  for (const AddedToken& t : impl->added) {
    impl->id_to_token[t.id] = t.content;
    used[t.id] = 1;
    impl->special[t.id] = t.special ? 1 : 0;
  }
  impl->num_ids = static_cast<size_t>(std::count(used.begin(), used.end(), uint8_t{1}));
  for (int32_t id : impl->prefix) {
    STAVID_CHECK_CODE(id >= 0 && id <= max_id && used[id], ErrorCode::DataLoss, source, ": post_processor id ", id,
                      " is not a token");
  }
  for (int32_t id : impl->suffix) {
    STAVID_CHECK_CODE(id >= 0 && id <= max_id && used[id], ErrorCode::DataLoss, source, ": post_processor id ", id,
                      " is not a token");
  }
  if (!impl->prefix.empty()) impl->ids.bos = impl->prefix.back();
  if (!impl->suffix.empty()) impl->ids.eos = impl->suffix.front();
  impl->ids.unk = impl->unk_id;
  return impl;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  STAVID_CHECK_CODE(in.good(), ErrorCode::NotFound, "cannot open tokenizer file ", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  STAVID_CHECK_CODE(!in.bad(), ErrorCode::DataLoss, "cannot read tokenizer file ", path.string());
  return ss.str();
}

// Applies a Split to s (HF tokenizers/src/tokenizer/normalizer.rs NormalizedString::split).
void split_pieces(const std::string& s, const Regex& re, SplitBehavior behavior, bool invert,
                  std::vector<std::string>& out) {
  if (s.empty()) return;
  Spans matches;
  re.find_all(s, matches);
  struct Piece {
    size_t begin, end;
    bool is_match;
  };
  std::vector<Piece> all;  // covers s
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    if (b > prev) all.push_back({prev, b, false});
    all.push_back({b, e, true});
    prev = e;
  }
  if (prev < s.size()) all.push_back({prev, s.size(), false});
  if (invert) {
    for (Piece& p : all) p.is_match = !p.is_match;
  }
  std::vector<Piece> kept;
  switch (behavior) {
    case SplitBehavior::Removed:
      for (const Piece& p : all) {
        if (!p.is_match) kept.push_back(p);
      }
      break;
    case SplitBehavior::Isolated:
      kept = all;
      break;
    case SplitBehavior::MergedWithPrevious: {
      bool previous_match = false;
      for (const Piece& p : all) {
        if (p.is_match && !previous_match && !kept.empty()) {
          kept.back().end = p.end;
        } else {
          kept.push_back(p);
        }
        previous_match = p.is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool previous_match = false;
      for (auto it = all.rbegin(); it != all.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty()) {
          kept.back().begin = it->begin;
        } else {
          kept.push_back(*it);
        }
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
    case SplitBehavior::Contiguous: {
      bool previous_match = false;
      for (size_t i = 0; i < all.size(); ++i) {
        if (i > 0 && all[i].is_match == previous_match) {
          kept.back().end = all[i].end;
        } else {
          kept.push_back(all[i]);
        }
        previous_match = all[i].is_match;
      }
      break;
    }
  }
  for (const Piece& p : kept) {
    if (p.end > p.begin) out.push_back(s.substr(p.begin, p.end - p.begin));
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Encoding

std::string BpeTokenizer::Impl::normalize(std::string s) const {
  for (const NormStep& step : normalizer) {
    switch (step.kind) {
      case NormStep::Kind::Nfc:
        s = nfc(s);
        break;
      case NormStep::Kind::Lowercase:
        s = lowercase(s);
        break;
      case NormStep::Kind::Strip: {
        const size_t left = step.strip_left ? space_run(s, /*forward=*/true) : 0;
        const size_t right = step.strip_right && left < s.size() ? space_run(s, /*forward=*/false) : 0;
        s = left >= s.size() ? std::string() : s.substr(left, s.size() - left - right);
        break;
      }
      case NormStep::Kind::Replace: {
        Spans spans;
        step.pattern->find_all(s, spans);
        if (spans.empty()) break;
        std::string r;
        size_t prev = 0;
        for (const auto& [b, e] : spans) {
          r.append(s, prev, b - prev);
          r += step.content;
          prev = e;
        }
        r.append(s, prev, std::string::npos);
        s = std::move(r);
        break;
      }
      case NormStep::Kind::Prepend:
        if (!s.empty()) s = step.content + s;
        break;
    }
  }
  return s;
}

void BpeTokenizer::Impl::pre_tokenize(const std::string& s, std::vector<std::string>& pieces) const {
  pieces.clear();
  if (s.empty()) return;
  pieces.push_back(s);
  std::vector<std::string> next;
  for (const PreStep& step : pre_tokenizer) {
    next.clear();
    for (std::string& p : pieces) {
      switch (step.kind) {
        case PreStep::Kind::Split:
          split_pieces(p, *step.pattern, step.behavior, step.invert, next);
          break;
        case PreStep::Kind::ByteLevel: {
          if (step.add_prefix_space && !p.starts_with(' ')) p.insert(p.begin(), ' ');
          if (step.use_regex) {
            const size_t first = next.size();
            split_pieces(p, *gpt2_regex, SplitBehavior::Isolated, /*invert=*/false, next);
            for (size_t i = first; i < next.size(); ++i) next[i] = byte_level_encode(next[i]);
          } else {
            next.push_back(byte_level_encode(p));
          }
          break;
        }
      }
    }
    pieces.swap(next);
  }
}

// The BPE merge loop on one word: start from its characters, then repeatedly merge the adjacent pair with the
// lowest rank (leftmost first) until no pair has a merge. (tokenizers/src/models/bpe/word.rs merge_all)
void BpeTokenizer::Impl::merge_word(const std::string& word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  std::vector<Symbol> sym;
  std::string piece;
  int32_t pending_unk = kNoToken;  // fuse_unk: one UNK for a run of unknown characters
  const auto push = [&](int32_t id) {
    const auto n = static_cast<int32_t>(sym.size());
    sym.push_back({id, n - 1, n + 1, true});
  };
  for (size_t i = 0; i < word.size();) {
    const size_t begin = i;
    i += utf8_len(static_cast<unsigned char>(word[i]));
    piece.assign(word, begin, i - begin);
    if (begin > 0 && !continuing_prefix.empty()) piece.insert(0, continuing_prefix);
    if (i >= word.size() && !end_of_word_suffix.empty()) piece += end_of_word_suffix;
    const auto it = vocab.find(piece);
    if (it != vocab.end()) {
      if (pending_unk != kNoToken) push(pending_unk);
      pending_unk = kNoToken;
      push(it->second);
      continue;
    }
    if (byte_fallback) {
      std::vector<int32_t> bytes;
      for (unsigned char c : piece) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", c);
        const auto b = vocab.find(std::string_view(name));
        if (b == vocab.end()) break;
        bytes.push_back(b->second);
      }
      if (bytes.size() == piece.size()) {
        if (pending_unk != kNoToken) push(pending_unk);
        pending_unk = kNoToken;
        for (int32_t id : bytes) push(id);
        continue;
      }
    }
    if (unk_id != kNoToken) {
      if (pending_unk != kNoToken && !fuse_unk) push(pending_unk);
      pending_unk = unk_id;
    }
  }
  if (pending_unk != kNoToken) push(pending_unk);
  if (sym.empty()) return;
  sym.back().next = -1;

  struct Candidate {
    int32_t rank, pos, merged;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  const auto consider = [&](int32_t pos) {
    if (pos < 0 || sym[pos].next < 0) return;
    const auto m = merges.find(pair_key(sym[pos].id, sym[sym[pos].next].id));
    if (m != merges.end()) queue.push({m->second.first, pos, m->second.second});
  };
  for (int32_t p = 0; p + 1 < static_cast<int32_t>(sym.size()); ++p) consider(p);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = sym[c.pos];
    if (!left.alive || left.next < 0) continue;
    const auto m = merges.find(pair_key(left.id, sym[left.next].id));
    if (m == merges.end() || m->second.first != c.rank || m->second.second != c.merged) continue;  // stale
    Symbol& right = sym[left.next];
    right.alive = false;
    left.id = c.merged;
    left.next = right.next;
    if (left.next >= 0) sym[left.next].prev = c.pos;
    consider(left.prev);
    consider(c.pos);
  }
  for (int32_t p = 0; p >= 0; p = sym[p].next) out.push_back(sym[p].id);
}

void BpeTokenizer::Impl::tokenize_word(const std::string& word, std::vector<int32_t>& out) const {
  if (ignore_merges) {
    const auto it = vocab.find(word);
    if (it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable && cache.get(word, out)) return;
  const size_t first = out.size();
  merge_word(word, out);
  if (cacheable) cache.put(word, out.data() + first, out.size() - first);
}

std::vector<int32_t> BpeTokenizer::Impl::encode(std::string_view text) const {
  const size_t bad = find_invalid_utf8(text);
  STAVID_CHECK(bad == std::string_view::npos, "text to tokenize is not valid UTF-8 (byte ", bad, ")");
  std::vector<int32_t> ids;
  std::vector<Segment> raw, norm;
  std::vector<std::string> pieces;
  split_added(std::string(text), raw_matcher, raw);
  for (Segment& seg : raw) {
    if (seg.id != kNoToken) {
      ids.push_back(seg.id);
      continue;
    }
    norm.clear();
    const std::string normalized = normalize(std::move(seg.text));
    if (normalized_matcher.empty()) {
      norm.push_back({normalized, kNoToken});
    } else {
      split_added(normalized, normalized_matcher, norm);
    }
    for (const Segment& part : norm) {
      if (part.id != kNoToken) {
        ids.push_back(part.id);
        continue;
      }
      pre_tokenize(part.text, pieces);
      for (const std::string& w : pieces) tokenize_word(w, ids);
    }
  }
  return ids;
}

// ---------------------------------------------------------------------------------------------------------
// Public API

bool tokenizer_supported() {
  return STAVID_HAVE_PCRE2 != 0;
}

BpeTokenizer::BpeTokenizer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

BpeTokenizer BpeTokenizer::from_json(std::string_view json_text, std::string_view source) {
  return BpeTokenizer(build(json_text, std::string(source)));
}

BpeTokenizer BpeTokenizer::from_file(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path file(path);
  std::error_code ec;
  if (fs::is_directory(file, ec)) file /= "tokenizer.json";
  STAVID_CHECK_CODE(fs::is_regular_file(file, ec), ErrorCode::NotFound, "tokenizer file not found: ", file.string());
  auto impl = build(read_file(file), file.string());

  const fs::path config = file.parent_path() / "tokenizer_config.json";
  if (fs::is_regular_file(config, ec)) {
    const std::string text = read_file(config);
    json cfg;
    try {
      cfg = json::parse(text);
    } catch (const json::parse_error& e) {
      STAVID_THROW(ErrorCode::DataLoss, config.string(), ": not valid JSON (", e.what(), ")");
    }
    STAVID_CHECK_CODE(cfg.is_object(), ErrorCode::DataLoss, config.string(), ": not a JSON object");
    apply_config_token(cfg, "bos_token", *impl, config.string(), impl->ids.bos);
    apply_config_token(cfg, "eos_token", *impl, config.string(), impl->ids.eos);
    apply_config_token(cfg, "pad_token", *impl, config.string(), impl->ids.pad);
    apply_config_token(cfg, "unk_token", *impl, config.string(), impl->ids.unk);
  }
  return BpeTokenizer(std::move(impl));
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool add_special) const {
  std::vector<int32_t> ids = impl_->encode(text);
  if (add_special && (!impl_->prefix.empty() || !impl_->suffix.empty())) {
    ids.insert(ids.begin(), impl_->prefix.begin(), impl_->prefix.end());
    ids.insert(ids.end(), impl_->suffix.begin(), impl_->suffix.end());
  }
  return ids;
}

PaddedIds BpeTokenizer::encode_padded(std::string_view text, size_t max_len, int32_t pad_id) const {
  if (pad_id == kNoToken) pad_id = impl_->ids.pad;
  STAVID_CHECK(pad_id >= 0, impl_->source, ": no pad token: pass pad_id to encode_padded");
  const size_t specials = impl_->prefix.size() + impl_->suffix.size();
  STAVID_CHECK(max_len >= specials, "encode_padded: max_len ", max_len, " cannot hold the ", specials,
               " special tokens");
  std::vector<int32_t> body = impl_->encode(text);
  if (body.size() > max_len - specials) body.resize(max_len - specials);
  PaddedIds r;
  r.ids.reserve(max_len);
  r.ids.insert(r.ids.end(), impl_->prefix.begin(), impl_->prefix.end());
  r.ids.insert(r.ids.end(), body.begin(), body.end());
  r.ids.insert(r.ids.end(), impl_->suffix.begin(), impl_->suffix.end());
  r.length = r.ids.size();
  r.mask.assign(r.length, 1);
  r.ids.resize(max_len, pad_id);
  r.mask.resize(max_len, 0);
  return r;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const Impl& m = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    STAVID_CHECK(id >= 0 && static_cast<size_t>(id) < m.id_to_token.size() && !m.id_to_token[id].empty(), "decode: id ",
                 id, " is not a token of ", m.source);
    if (skip_special && m.special[id]) continue;
    tokens.push_back(m.id_to_token[id]);
  }
  bool suffix_done = false;
  for (const DecodeStep& step : m.decoder) {
    switch (step.kind) {
      case DecodeStep::Kind::BpeSuffix:
        for (size_t i = 0; i < tokens.size(); ++i) {
          std::string& t = tokens[i];
          const std::string with = i + 1 == tokens.size() ? "" : " ";
          for (size_t p = t.find(step.suffix); !step.suffix.empty() && p != std::string::npos;
               p = t.find(step.suffix, p + with.size())) {
            t.replace(p, step.suffix.size(), with);
          }
        }
        suffix_done = true;
        break;
      case DecodeStep::Kind::ByteLevel: {
        std::string bytes;
        for (const std::string& t : tokens) byte_level_decode(t, bytes);
        tokens.assign(1, utf8_lossy(bytes));
        break;
      }
      case DecodeStep::Kind::Fuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
    }
  }
  std::string text;
  for (const std::string& t : tokens) text += t;
  if (!suffix_done && !m.end_of_word_suffix.empty()) {
    // transformers' CLIPTokenizerFast: the word-end suffix becomes a space, then the text is stripped.
    const std::string& sfx = m.end_of_word_suffix;
    for (size_t p = text.find(sfx); p != std::string::npos; p = text.find(sfx, p + 1)) text.replace(p, sfx.size(), " ");
    const size_t left = space_run(text, /*forward=*/true);
    const size_t right = left < text.size() ? space_run(text, /*forward=*/false) : 0;
    text = left >= text.size() ? std::string() : text.substr(left, text.size() - left - right);
  }
  return text;
}

int32_t BpeTokenizer::token_to_id(std::string_view token) const {
  for (const AddedToken& t : impl_->added) {
    if (t.content == token) return t.id;
  }
  const auto it = impl_->vocab.find(token);
  return it == impl_->vocab.end() ? kNoToken : it->second;
}

std::string BpeTokenizer::id_to_token(int32_t id) const {
  STAVID_CHECK(id >= 0 && static_cast<size_t>(id) < impl_->id_to_token.size() && !impl_->id_to_token[id].empty(), "id ",
               id, " is not a token of ", impl_->source);
  return impl_->id_to_token[id];
}

size_t BpeTokenizer::vocab_size() const {
  return impl_->num_ids;
}

bool BpeTokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->special.size() && impl_->special[id] != 0;
}

const SpecialTokenIds& BpeTokenizer::special_ids() const {
  return impl_->ids;
}
const std::vector<int32_t>& BpeTokenizer::prefix_ids() const {
  return impl_->prefix;
}
const std::vector<int32_t>& BpeTokenizer::suffix_ids() const {
  return impl_->suffix;
}
const std::string& BpeTokenizer::source() const {
  return impl_->source;
}
void BpeTokenizer::set_cache_capacity(size_t words) {
  impl_->cache.set_capacity(words);
}

}  // namespace stavid::text
