// CPU reference for the row norms: fp32 storage math with double accumulation of the statistics.
#include <cmath>
#include <vector>

#include "kernels/cpu_elem.h"
#include "kernels/norm.h"

namespace stavid::detail {

namespace {
template <typename E>
void norm_t(const NormParams& p) {
  std::vector<float> row(static_cast<size_t>(p.dim));
  const bool layer = p.kind == NormKind::LayerNorm;
  for (int64_t r = 0; r < p.rows; ++r) {
    double sum = 0.0;
    for (int64_t c = 0; c < p.dim; ++c) {
      row[c] = E::load(p.x, static_cast<size_t>(r * p.x_stride + c));
      sum += row[c];
    }
    const double mean = layer ? sum / static_cast<double>(p.dim) : 0.0;
    double sq = 0.0;
    for (int64_t c = 0; c < p.dim; ++c) {
      const double d = row[c] - mean;
      sq += d * d;
    }
    const float rstd = static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(p.dim) + p.eps));
    const float meanf = static_cast<float>(mean);
    const int64_t g = (r / p.rows_per_group) * p.mod_stride;
    for (int64_t c = 0; c < p.dim; ++c) {
      float v = (row[c] - meanf) * rstd;
      if (p.weight) v *= E::load(p.weight, static_cast<size_t>(c));
      if (p.bias) v += E::load(p.bias, static_cast<size_t>(c));
      if (p.scale) v *= 1.f + E::load(p.scale, static_cast<size_t>(g + c));
      if (p.shift) v += E::load(p.shift, static_cast<size_t>(g + c));
      E::store(p.y, static_cast<size_t>(r * p.y_stride + c), v);
    }
  }
}
}  // namespace

void norm_cpu(const NormParams& p) { STAVID_CPU_DISPATCH(p.dtype, norm_t<E>(p)); }

}  // namespace stavid::detail
