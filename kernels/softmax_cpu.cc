// CPU reference for the row softmax (double accumulation).
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/softmax.h"

namespace stavid::detail {

void softmax_cpu(const SoftmaxParams& p) {
  std::vector<double> row(static_cast<size_t>(p.cols));
  for (int64_t r = 0; r < p.rows; ++r) {
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t c = 0; c < p.cols; ++c) {
      row[c] = static_cast<double>(p.scale) *
               load_as_float(p.x, p.dtype, static_cast<size_t>(r * p.x_stride + c));
      if (row[c] > mx) mx = row[c];
    }
    double sum = 0.0;
    if (std::isinf(mx) && mx < 0) {
      for (int64_t c = 0; c < p.cols; ++c) row[c] = 0.0;
    } else {
      for (int64_t c = 0; c < p.cols; ++c) {
        row[c] = std::exp(row[c] - mx);
        sum += row[c];
      }
    }
    const double inv = sum > 0.0 ? 1.0 / sum : 0.0;
    for (int64_t c = 0; c < p.cols; ++c)
      store_from_float(p.y, p.dtype, static_cast<size_t>(r * p.y_stride + c),
                       static_cast<float>(row[c] * inv));
  }
}

}  // namespace stavid::detail
