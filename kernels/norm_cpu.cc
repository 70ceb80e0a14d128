// CPU reference for the row norms: fp32 storage math with double accumulation of the statistics.
#include <cmath>
#include <vector>

#include "kernels/norm.h"

namespace stavid::detail {

void norm_cpu(const NormParams& p) {
  std::vector<float> row(static_cast<size_t>(p.dim));
  const bool layer = p.kind == NormKind::LayerNorm;
  for (int64_t r = 0; r < p.rows; ++r) {
    double sum = 0.0;
    for (int64_t c = 0; c < p.dim; ++c) {
      row[c] = load_as_float(p.x, p.dtype, static_cast<size_t>(r * p.x_stride + c));
      sum += row[c];
    }
    const double mean = layer ? sum / static_cast<double>(p.dim) : 0.0;
    double sq = 0.0;
    for (int64_t c = 0; c < p.dim; ++c) {
      const double d = row[c] - mean;
      sq += d * d;
    }
    const double rstd = 1.0 / std::sqrt(sq / static_cast<double>(p.dim) + p.eps);
    const int64_t g = (r / p.rows_per_group) * p.mod_stride;
    for (int64_t c = 0; c < p.dim; ++c) {
      float v = static_cast<float>((row[c] - mean) * rstd);
      if (p.weight) v *= load_as_float(p.weight, p.dtype, c);
      if (p.bias) v += load_as_float(p.bias, p.dtype, c);
      if (p.scale) v *= 1.f + load_as_float(p.scale, p.dtype, static_cast<size_t>(g + c));
      if (p.shift) v += load_as_float(p.shift, p.dtype, static_cast<size_t>(g + c));
      store_from_float(p.y, p.dtype, static_cast<size_t>(r * p.y_stride + c), v);
    }
  }
}

}  // namespace stavid::detail
