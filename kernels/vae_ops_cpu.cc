// CPU reference for the VAE op families (kernels/vae_ops.h).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/elementwise.h"
#include "kernels/vae_ops.h"

namespace stavid::detail {

namespace {
// fp32 fast path: whole rows copied with clamped edges, no per-element dtype dispatch.
void causal_im2col_f32(const CausalIm2colParams& p) {
  const int64_t hw = static_cast<int64_t>(p.height) * p.width, cols = p.nt * hw;
  const int32_t pad = p.kt - 1;
  const float* x = static_cast<const float*>(p.x);
  const float* prev = static_cast<const float*>(p.prev);
  float* col = static_cast<float*>(p.col);
  for (int32_t ci = 0; ci < p.cin; ++ci)
    for (int32_t dt = 0; dt < p.kt; ++dt)
      for (int32_t dh = 0; dh < p.kh; ++dh)
        for (int32_t dw = 0; dw < p.kw; ++dw) {
          const int64_t row = ((static_cast<int64_t>(ci) * p.kt + dt) * p.kh + dh) * p.kw + dw;
          float* out = col + row * cols;
          const int32_t off = dw - p.kw / 2;
          for (int32_t t = 0; t < p.nt; ++t) {
            const int32_t src_t = p.t0 + t + dt - pad;
            const float* frame = src_t >= 0 ? x + (ci * static_cast<int64_t>(p.frames) + src_t) * hw
                                 : prev     ? prev + (ci * static_cast<int64_t>(pad) + pad + src_t) * hw
                                            : x + ci * static_cast<int64_t>(p.frames) * hw;
            for (int32_t h = 0; h < p.height; ++h) {
              const float* src = frame + static_cast<int64_t>(std::min(std::max(h + dh - p.kh / 2, 0), p.height - 1)) * p.width;
              float* dst = out + t * hw + static_cast<int64_t>(h) * p.width;
              const int32_t w_lo = std::max(0, -off), w_hi = std::min(p.width, p.width - off);
              for (int32_t w = 0; w < w_lo; ++w) dst[w] = src[0];
              for (int32_t w = w_lo; w < w_hi; ++w) dst[w] = src[w + off];
              for (int32_t w = std::max(w_hi, w_lo); w < p.width; ++w) dst[w] = src[p.width - 1];
            }
          }
        }
}
}  // namespace

void causal_im2col_cpu(const CausalIm2colParams& p) {
  if (p.dtype == DType::F32) {
    causal_im2col_f32(p);
    return;
  }
  const int64_t hw = static_cast<int64_t>(p.height) * p.width, cols = p.nt * hw;
  const int32_t pad = p.kt - 1;
  for (int32_t ci = 0; ci < p.cin; ++ci)
    for (int32_t dt = 0; dt < p.kt; ++dt)
      for (int32_t dh = 0; dh < p.kh; ++dh)
        for (int32_t dw = 0; dw < p.kw; ++dw) {
          const int64_t row = ((static_cast<int64_t>(ci) * p.kt + dt) * p.kh + dh) * p.kw + dw;
          for (int32_t t = 0; t < p.nt; ++t) {
            const int32_t src_t = p.t0 + t + dt - pad;  // may be negative: padding
            for (int32_t h = 0; h < p.height; ++h) {
              const int32_t sh = std::min(std::max(h + dh - p.kh / 2, 0), p.height - 1);
              for (int32_t w = 0; w < p.width; ++w) {
                const int32_t sw = std::min(std::max(w + dw - p.kw / 2, 0), p.width - 1);
                float v;
                if (src_t >= 0) {
                  v = load_as_float(p.x, p.dtype, static_cast<size_t>((ci * static_cast<int64_t>(p.frames) + src_t) * hw + sh * p.width + sw));
                } else if (p.prev) {
                  const int32_t pt = pad + src_t;  // index into the cached frames
                  v = load_as_float(p.prev, p.dtype, static_cast<size_t>((ci * static_cast<int64_t>(pad) + pt) * hw + sh * p.width + sw));
                } else {
                  v = load_as_float(p.x, p.dtype, static_cast<size_t>(ci * static_cast<int64_t>(p.frames) * hw + sh * p.width + sw));
                }
                store_from_float(p.col, p.dtype, static_cast<size_t>(row * cols + t * hw + h * p.width + w), v);
              }
            }
          }
        }
}

void group_sums_cpu(const GroupSumsParams& p) {
  const int32_t cg = p.channels / p.groups;
  for (int32_t b = 0; b < p.batch; ++b)
    for (int32_t g = 0; g < p.groups; ++g) {
      double s = 0, s2 = 0;
      const int64_t base = (static_cast<int64_t>(b) * p.channels + g * cg) * p.n;
      for (int64_t i = 0; i < cg * p.n; ++i) {
        const double v = load_as_float(p.x, p.dtype, static_cast<size_t>(base + i));
        s += v;
        s2 += v * v;
      }
      p.sums[(b * p.groups + g) * 2] += s;
      p.sums[(b * p.groups + g) * 2 + 1] += s2;
    }
}

void group_norm_cpu(const GroupNormParams& p) {
  const int32_t cg = p.channels / p.groups;
  for (int32_t b = 0; b < p.batch; ++b)
    for (int32_t g = 0; g < p.groups; ++g) {
      const int64_t base = (static_cast<int64_t>(b) * p.channels + g * cg) * p.n;
      const int64_t count = cg * p.n;
      float mean, rstd;
      if (p.stats) {
        mean = p.stats[(b * p.groups + g) * 2];
        rstd = p.stats[(b * p.groups + g) * 2 + 1];
      } else {
        double s = 0;
        for (int64_t i = 0; i < count; ++i) s += load_as_float(p.x, p.dtype, static_cast<size_t>(base + i));
        const double m = s / static_cast<double>(count);
        double sq = 0;
        for (int64_t i = 0; i < count; ++i) {
          const double d = load_as_float(p.x, p.dtype, static_cast<size_t>(base + i)) - m;
          sq += d * d;
        }
        mean = static_cast<float>(m);
        rstd = static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(count) + p.eps));
      }
      for (int32_t c = 0; c < cg; ++c) {
        const int32_t ch = g * cg + c;
        const float wt = p.weight ? load_as_float(p.weight, p.dtype, static_cast<size_t>(ch)) : 1.f;
        const float bs = p.bias ? load_as_float(p.bias, p.dtype, static_cast<size_t>(ch)) : 0.f;
        for (int64_t i = 0; i < p.n; ++i) {
          const size_t idx = static_cast<size_t>(base + c * p.n + i);
          float v = (load_as_float(p.x, p.dtype, idx) - mean) * rstd * wt + bs;
          if (p.silu) v = silu_f(v);
          store_from_float(p.y, p.dtype, idx, v);
        }
      }
    }
}

void upsample_causal_cpu(const UpsampleParams& p) {
  const int32_t to = upsampled_frames(p), ho = p.height * p.fh, wo = p.width * p.fw;
  for (int32_t b = 0; b < p.batch; ++b)
    for (int32_t c = 0; c < p.channels; ++c)
      for (int32_t t = 0; t < to; ++t) {
        // Output frame t comes from input frame 0 (t == 0 at the video start) or (t - 1)/ft + 1.
        const int32_t st = p.first_is_video_start ? (t == 0 ? 0 : (t - 1) / p.ft + 1) : t / p.ft;
        for (int32_t h = 0; h < ho; ++h)
          for (int32_t w = 0; w < wo; ++w) {
            const int64_t src = (((static_cast<int64_t>(b) * p.channels + c) * p.frames + st) * p.height + h / p.fh) * p.width + w / p.fw;
            const int64_t dst = (((static_cast<int64_t>(b) * p.channels + c) * to + t) * ho + h) * wo + w;
            store_from_float(p.y, p.dtype, static_cast<size_t>(dst), load_as_float(p.x, p.dtype, static_cast<size_t>(src)));
          }
      }
}

}  // namespace stavid::detail
