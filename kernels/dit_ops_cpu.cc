// CPU reference for the DiT op families (kernels/dit_ops.h).
#include <cmath>
#include <vector>

#include "kernels/dit_ops.h"

namespace stavid::detail {

void patchify_cpu(const PatchifyParams& p) {
  const int32_t tt = p.frames / p.pt, th = p.height / p.ph, tw = p.width / p.pw;
  const int64_t ntok = static_cast<int64_t>(tt) * th * tw;
  const int64_t feat = static_cast<int64_t>(p.channels) * p.pt * p.ph * p.pw;
  const int64_t plane = static_cast<int64_t>(p.height) * p.width;
  const int64_t vol = plane * p.frames;
  for (int32_t b = 0; b < p.batch; ++b)
    for (int64_t tok = 0; tok < ntok; ++tok) {
      const int64_t row = p.row_of_token ? p.row_of_token[tok] : tok;
      const int32_t w = static_cast<int32_t>(tok % tw), h = static_cast<int32_t>((tok / tw) % th);
      const int32_t t = static_cast<int32_t>(tok / (static_cast<int64_t>(tw) * th));
      for (int64_t f = 0; f < feat; ++f) {
        const int32_t ow = static_cast<int32_t>(f % p.pw), oh = static_cast<int32_t>((f / p.pw) % p.ph);
        const int32_t ot = static_cast<int32_t>((f / (p.pw * p.ph)) % p.pt);
        const int64_t c = f / (static_cast<int64_t>(p.pw) * p.ph * p.pt);
        const int64_t li = b * p.channels * vol + c * vol + (t * p.pt + ot) * plane +
                           static_cast<int64_t>(h * p.ph + oh) * p.width + (w * p.pw + ow);
        const int64_t ti = b * p.token_batch_stride + row * p.token_row_stride + f;
        if (p.inverse) {
          store_from_float(p.dst, p.latent_dtype, static_cast<size_t>(li),
                           load_as_float(p.src, p.token_dtype, static_cast<size_t>(ti)));
        } else {
          store_from_float(p.dst, p.token_dtype, static_cast<size_t>(ti),
                           load_as_float(p.src, p.latent_dtype, static_cast<size_t>(li)));
        }
      }
    }
}

void qkv_prepare_cpu(const QkvPrepareParams& p) {
  const int64_t hd = p.head_dim, width = static_cast<int64_t>(p.heads) * hd;
  const int64_t seq = p.img_slots + p.txt_rows;
  std::vector<float> x(static_cast<size_t>(hd));
  for (int32_t b = 0; b < p.batch; ++b)
    for (int64_t s = 0; s < seq; ++s) {
      const bool is_img = s < p.img_slots;
      const int64_t row = is_img ? (p.img_row_of_slot ? p.img_row_of_slot[s] : s) : s - p.img_slots;
      const void* src = is_img ? p.img : p.txt;
      const int64_t base = is_img ? b * p.img_batch_stride + row * p.img_row_stride
                                  : b * p.txt_batch_stride + row * p.txt_row_stride;
      for (int32_t h = 0; h < p.heads; ++h)
        for (int which = 0; which < 3; ++which) {
          void* dst = which == 0 ? p.q : (which == 1 ? p.k : p.v);
          const int64_t out = ((static_cast<int64_t>(b) * p.heads + h) * seq + s) * hd;
          if (row < 0) {  // padded slot
            for (int64_t i = 0; i < hd; ++i) store_from_float(dst, p.dtype, static_cast<size_t>(out + i), 0.f);
            continue;
          }
          const int64_t in = base + which * width + h * hd;
          for (int64_t i = 0; i < hd; ++i) x[i] = load_as_float(src, p.dtype, static_cast<size_t>(in + i));
          if (which < 2) {
            const void* w = which == 0 ? (is_img ? p.q_norm_img : p.q_norm_txt) : (is_img ? p.k_norm_img : p.k_norm_txt);
            if (w) {
              double sq = 0;
              for (int64_t i = 0; i < hd; ++i) sq += static_cast<double>(x[i]) * x[i];
              const float r = static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(hd) + p.eps));
              for (int64_t i = 0; i < hd; ++i)
                x[i] = round_to(p.dtype, x[i] * r * load_as_float(w, p.dtype, static_cast<size_t>(i)));
            }
            if (is_img && p.rope_cos) {
              for (int64_t j = 0; j < hd / 2; ++j) {
                const float c = p.rope_cos[row * (hd / 2) + j], sn = p.rope_sin[row * (hd / 2) + j];
                const float x0 = x[2 * j], x1 = x[2 * j + 1];
                x[2 * j] = x0 * c - x1 * sn;
                x[2 * j + 1] = x1 * c + x0 * sn;
              }
            }
          }
          for (int64_t i = 0; i < hd; ++i) store_from_float(dst, p.dtype, static_cast<size_t>(out + i), x[i]);
        }
    }
}

}  // namespace stavid::detail
