// CPU reference for the element-wise families.
#include <cmath>

#include "kernels/cpu_elem.h"
#include "kernels/cpu_math.h"
#include "kernels/elementwise.h"

namespace stavid::detail {

namespace {
template <typename E>
void unary_t(const UnaryParams& p) {
  if (p.op == UnaryOp::GeluTanh) {
    for (int64_t i = 0; i < p.n; ++i)
      E::store(p.y, static_cast<size_t>(i), cpu::gelu_tanh_fast(E::load(p.x, static_cast<size_t>(i))));
  } else {
    for (int64_t i = 0; i < p.n; ++i)
      E::store(p.y, static_cast<size_t>(i), cpu::silu_fast(E::load(p.x, static_cast<size_t>(i))));
  }
}

template <typename E>
void binary_t(const BinaryParams& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    const int64_t bro = (r / p.b_rows_per_group) * p.b_stride;
    for (int64_t c = 0; c < p.cols; ++c) {
      const float a = E::load(p.a, static_cast<size_t>(r * p.a_stride + c));
      const float b = E::load(p.b, static_cast<size_t>(bro + c * p.b_col_stride));
      E::store(p.y, static_cast<size_t>(r * p.y_stride + c), p.op == BinaryOp::Add ? a + b : a * b);
    }
  }
}

template <typename E>
void gated_residual_t(const GatedResidualParams& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    const int64_t go = (r / p.rows_per_group) * p.gate_stride;
    for (int64_t c = 0; c < p.cols; ++c) {
      const size_t xi = static_cast<size_t>(r * p.x_stride + c);
      const float g = p.scale * (p.gate ? E::load(p.gate, static_cast<size_t>(go + c)) : 1.f);
      E::store(p.x, xi, E::load(p.x, xi) + g * E::load(p.y, static_cast<size_t>(r * p.y_stride + c)));
    }
  }
}
}  // namespace

void unary_cpu(const UnaryParams& p) { STAVID_CPU_DISPATCH(p.dtype, unary_t<E>(p)); }
void binary_cpu(const BinaryParams& p) { STAVID_CPU_DISPATCH(p.dtype, binary_t<E>(p)); }
void gated_residual_cpu(const GatedResidualParams& p) { STAVID_CPU_DISPATCH(p.dtype, gated_residual_t<E>(p)); }

void strided_copy_cpu(const CopyParams& p) {
  int64_t total = 1;
  for (int d = 0; d < p.ndim; ++d) total *= p.sizes[d];
  int64_t idx[kMaxCopyDims] = {};
  for (int64_t i = 0; i < total; ++i) {
    int64_t so = 0, dof = 0;
    for (int d = 0; d < p.ndim; ++d) {
      so += idx[d] * p.src_strides[d];
      dof += idx[d] * p.dst_strides[d];
    }
    if (p.src_dtype == p.dst_dtype && p.src_dtype != DType::F32) {
      // 16-bit to 16-bit: move the bits (keeps NaN payloads and avoids double rounding).
      static_cast<uint16_t*>(p.dst)[dof] = static_cast<const uint16_t*>(p.src)[so];
    } else {
      store_from_float(p.dst, p.dst_dtype, static_cast<size_t>(dof),
                       load_as_float(p.src, p.src_dtype, static_cast<size_t>(so)));
    }
    for (int d = p.ndim - 1; d >= 0; --d) {
      if (++idx[d] < p.sizes[d]) break;
      idx[d] = 0;
    }
  }
}

void group_sq_diff_cpu(const GroupSqDiffParams& p) {
  for (int64_t r = 0; r < p.rows; ++r)
    for (int64_t c = 0; c < p.cols; ++c) {
      const double d = static_cast<double>(load_as_float(p.a, p.dtype, static_cast<size_t>(r * p.a_stride + c))) -
                       load_as_float(p.b, p.dtype, static_cast<size_t>(r * p.b_stride + c));
      p.out[c / p.group] += d * d;
    }
}

void abs_sums_cpu(const AbsSumsParams& p) {
  double diff = 0, mag = 0;
  for (int64_t i = 0; i < p.n; ++i) {
    const double a = load_as_float(p.a, p.dtype, static_cast<size_t>(i));
    const double b = p.b ? load_as_float(p.b, p.dtype, static_cast<size_t>(i)) : 0.0;
    diff += std::fabs(a - b);
    mag += std::fabs(b);
  }
  p.out[0] = diff;
  p.out[1] = mag;
}

void fill_cpu(const FillParams& p) {
  for (int64_t i = 0; i < p.n; ++i) store_from_float(p.y, p.dtype, static_cast<size_t>(i), p.value);
}

}  // namespace stavid::detail
