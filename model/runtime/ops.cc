#include "model/runtime/ops.h"

#include "kernels/core/error.h"
#include "kernels/elementwise.h"
#include "kernels/norm.h"
#include "kernels/softmax.h"
#include "model/runtime/cuda_runtime.h"

namespace stavid::ops {
namespace {

void same_place(const Tensor& a, const Tensor& b, const char* op) {
  STAVID_CHECK(a.device() == b.device(), op, ": tensors on ", a.device().str(), " and ", b.device().str());
  STAVID_CHECK(a.dtype() == b.dtype(), op, ": dtypes ", dtype_name(a.dtype()), " and ", dtype_name(b.dtype()));
}

// Views x as [rows, last] with a row stride; requires the last dim contiguous and the leading dims
// to collapse into one stride.
struct Rows {
  int64_t rows, cols, stride;
};
Rows as_rows(const Tensor& x, const char* op) {
  STAVID_CHECK(x.dim() >= 1, op, ": needs at least one dimension");
  const int64_t cols = x.size(-1);
  STAVID_CHECK(x.stride(-1) == 1 || cols == 1, op, ": last dimension of ", x.str(), " is not contiguous");
  int64_t rows = 1, stride = cols;
  if (x.dim() >= 2) {
    stride = x.stride(-2);
    int64_t expect = x.stride(-2) * x.size(-2);
    rows = x.size(-2);
    for (int d = x.dim() - 3; d >= 0; --d) {
      STAVID_CHECK(x.size(d) == 1 || x.stride(d) == expect, op, ": leading dims of ", x.str(),
                   " do not collapse into rows");
      expect *= x.size(d);
      rows *= x.size(d);
    }
    if (x.size(-2) == 1) stride = cols;
  }
  return {rows, cols, stride};
}

// A [B, D] modulation view: returns the row stride between batch items.
int64_t mod_stride(const Tensor& m, int64_t batch, int64_t dim, const char* op) {
  STAVID_CHECK(m.dim() == 2 && m.size(0) == batch && m.size(1) == dim && m.stride(1) == 1, op,
               ": modulation must be [", batch, ", ", dim, "] with a contiguous last dim, got ", m.str());
  return batch == 1 ? dim : m.stride(0);
}

Tensor binary_op(const Tensor& a, const Tensor& b, BinaryOp op, const char* name) {
  same_place(a, b, name);
  const Rows ra = as_rows(a, name);
  BinaryParams p;
  p.op = op;
  if (b.shape() == a.shape()) {
    const Rows rb = as_rows(b, name);
    p.b_rows_per_group = 1;
    p.b_stride = rb.stride;
  } else {
    STAVID_CHECK(b.dim() == 1 && b.size(0) == ra.cols && b.is_contiguous(), name, ": cannot broadcast ",
                 b.str(), " to ", a.str());
    p.b_rows_per_group = ra.rows;
    p.b_stride = 0;
  }
  Tensor y = Tensor::empty(a.shape(), a.dtype(), a.device());
  p.a = a.data();
  p.b = b.data();
  p.y = y.data();
  p.rows = ra.rows;
  p.cols = ra.cols;
  p.a_stride = ra.stride;
  p.y_stride = ra.cols;
  p.dtype = a.dtype();
  p.device = a.device();
  binary(p, rt::current_stream(a.device()));
  return y;
}

Tensor unary_op(const Tensor& x, UnaryOp op) {
  Tensor xc = x.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  UnaryParams p;
  p.op = op;
  p.x = xc.data();
  p.y = y.data();
  p.n = x.numel();
  p.dtype = x.dtype();
  p.device = x.device();
  unary(p, rt::current_stream(x.device()));
  return y;
}

NormParams norm_params(const Tensor& x, Tensor& y, NormKind kind, float eps) {
  const Rows r = as_rows(x, "norm");
  NormParams p;
  p.kind = kind;
  p.x = x.data();
  p.y = y.data();
  p.rows = r.rows;
  p.dim = r.cols;
  p.x_stride = r.stride;
  p.y_stride = r.cols;
  p.eps = eps;
  p.dtype = x.dtype();
  p.device = x.device();
  return p;
}

const void* vec_ptr(const Tensor& v, const Tensor& x, const char* what) {
  if (!v.defined()) return nullptr;
  same_place(v, x, what);
  STAVID_CHECK(v.dim() == 1 && v.size(0) == x.size(-1) && v.is_contiguous(), what, ": expected [",
               x.size(-1), "], got ", v.str());
  return v.data();
}
}  // namespace

namespace {
// Rows of a [..., k] tensor for a GEMM: either one collapsed row range, or (3-D only) a batch of
// row ranges `batch_stride` apart.
struct GemmRows {
  int64_t batch, rows, stride, batch_stride;
};
GemmRows gemm_rows(const Tensor& x, const char* op, bool force_batched = false) {
  STAVID_CHECK(x.dim() >= 1 && (x.stride(-1) == 1 || x.size(-1) == 1), op, ": last dimension of ", x.str(),
               " is not contiguous");
  bool collapses = true;
  if (x.dim() >= 3) {
    int64_t expect = x.stride(-2) * x.size(-2);
    for (int d = x.dim() - 3; d >= 0; --d) {
      if (x.size(d) != 1 && x.stride(d) != expect) collapses = false;
      expect *= x.size(d);
    }
  }
  if (collapses && !(force_batched && x.dim() == 3)) {
    const Rows r = as_rows(x, op);
    return {1, r.rows, r.stride, 0};
  }
  STAVID_CHECK(x.dim() == 3, op, ": ", x.str(), " has leading dims that do not collapse into rows");
  return {x.size(0), x.size(1), x.size(1) > 1 ? x.stride(1) : x.size(2), x.stride(0)};
}
}  // namespace

void linear_into(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, Tensor& out) {
  same_place(x, w, "linear");
  same_place(x, out, "linear output");
  STAVID_CHECK(w.dim() == 2 && w.is_contiguous(), "linear: weight must be a contiguous [n, k], got ", w.str());
  STAVID_CHECK(x.size(-1) == w.size(1), "linear: input ", x.str(), " does not match weight ", w.str());
  Shape want = x.shape();
  want.back() = w.size(0);
  STAVID_CHECK(out.shape() == want, "linear: output ", out.str(), " should be ", shape_str(want));
  GemmRows a = gemm_rows(x, "linear");
  GemmRows d = gemm_rows(out, "linear output");
  // One side a strided batch: describe both sides as batches of rows.
  if (a.batch != d.batch) {
    a = gemm_rows(x, "linear", /*force_batched=*/true);
    d = gemm_rows(out, "linear output", /*force_batched=*/true);
  }
  STAVID_CHECK(a.batch == d.batch && a.rows == d.rows, "linear: input and output row layouts differ");
  GemmParams p;
  p.a = x.data();
  p.b = w.data();
  p.d = out.data();
  p.m = a.rows;
  p.n = w.size(0);
  p.k = w.size(1);
  p.lda = a.stride;
  p.ldb = w.size(1);
  p.ldd = d.stride;
  p.batch = a.batch;
  p.stride_a = a.batch_stride;
  p.stride_b = 0;
  p.stride_d = d.batch_stride;
  p.dtype = p.out_dtype = x.dtype();
  p.device = x.device();
  if (bias.defined()) {
    same_place(bias, x, "linear bias");
    STAVID_CHECK(bias.dim() == 1 && bias.size(0) == p.n && bias.is_contiguous(), "linear: bias must be [", p.n,
                 "], got ", bias.str());
    p.bias = bias.data();
  }
  p.epilogue = act == Activation::GeluTanh ? (p.bias ? GemmEpilogue::BiasGeluTanh : GemmEpilogue::GeluTanh)
                                           : (p.bias ? GemmEpilogue::Bias : GemmEpilogue::None);
  gemm(p, rt::current_stream(x.device()));
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act) {
  STAVID_CHECK(w.dim() == 2, "linear: weight must be 2-D, got ", w.str());
  Shape out_shape = x.shape();
  out_shape.back() = w.size(0);
  Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
  linear_into(x, w, bias, act, y);
  return y;
}

Tensor bmm(const Tensor& a, const Tensor& b, bool b_transposed) {
  same_place(a, b, "bmm");
  STAVID_CHECK(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0), "bmm: expected [b, m, k] and [b, ., .], got ",
               a.str(), " and ", b.str());
  STAVID_CHECK(a.stride(2) == 1 && b.stride(2) == 1, "bmm: inner dimension must be contiguous");
  const int64_t k = a.size(2);
  const int64_t n = b_transposed ? b.size(1) : b.size(2);
  STAVID_CHECK((b_transposed ? b.size(2) : b.size(1)) == k, "bmm: inner sizes differ: ", a.str(), " . ", b.str());
  Tensor y = Tensor::empty({a.size(0), a.size(1), n}, a.dtype(), a.device());
  GemmParams p;
  p.a = a.data();
  p.b = b.data();
  p.d = y.data();
  p.m = a.size(1);
  p.n = n;
  p.k = k;
  p.lda = a.size(1) > 1 ? a.stride(1) : k;
  p.ldb = b.size(1) > 1 ? b.stride(1) : b.size(2);
  p.ldd = n;
  p.b_transposed = b_transposed;
  p.batch = a.size(0);
  p.stride_a = a.stride(0);
  p.stride_b = b.stride(0);
  p.stride_d = p.m * n;
  p.dtype = p.out_dtype = a.dtype();
  p.device = a.device();
  gemm(p, rt::current_stream(a.device()));
  return y;
}

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  NormParams p = norm_params(x, y, NormKind::LayerNorm, eps);
  p.weight = vec_ptr(weight, x, "layer_norm weight");
  p.bias = vec_ptr(bias, x, "layer_norm bias");
  norm(p, rt::current_stream(x.device()));
  return y;
}

Tensor layer_norm_modulated(const Tensor& x, const Tensor& scale, const Tensor& shift, float eps) {
  STAVID_CHECK(x.dim() == 3, "layer_norm_modulated: x must be [B, N, D], got ", x.str());
  same_place(x, scale, "layer_norm_modulated");
  same_place(x, shift, "layer_norm_modulated");
  const int64_t batch = x.size(0), dim = x.size(2);
  const int64_t ss = mod_stride(scale, batch, dim, "layer_norm_modulated scale");
  const int64_t hs = mod_stride(shift, batch, dim, "layer_norm_modulated shift");
  STAVID_CHECK(ss == hs, "layer_norm_modulated: scale and shift must share a row stride");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  NormParams p = norm_params(x, y, NormKind::LayerNorm, eps);
  p.scale = scale.data();
  p.shift = shift.data();
  p.rows_per_group = x.size(1);
  p.mod_stride = ss;
  norm(p, rt::current_stream(x.device()));
  return y;
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  NormParams p = norm_params(x, y, NormKind::RmsNorm, eps);
  p.weight = vec_ptr(weight, x, "rms_norm weight");
  norm(p, rt::current_stream(x.device()));
  return y;
}

Tensor gelu_tanh(const Tensor& x) { return unary_op(x, UnaryOp::GeluTanh); }
Tensor silu(const Tensor& x) { return unary_op(x, UnaryOp::Silu); }
Tensor add(const Tensor& a, const Tensor& b) { return binary_op(a, b, BinaryOp::Add, "add"); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary_op(a, b, BinaryOp::Mul, "mul"); }

void gated_residual_(Tensor& x, const Tensor& y, const Tensor& gate) {
  same_place(x, y, "gated_residual_");
  STAVID_CHECK(x.dim() == 3 && x.shape() == y.shape(), "gated_residual_: x and y must be the same [B, N, D], got ",
               x.str(), " and ", y.str());
  const Rows rx = as_rows(x, "gated_residual_"), ry = as_rows(y, "gated_residual_");
  GatedResidualParams p;
  p.x = x.data();
  p.y = y.data();
  p.rows = rx.rows;
  p.cols = rx.cols;
  p.x_stride = rx.stride;
  p.y_stride = ry.stride;
  if (gate.defined()) {
    same_place(x, gate, "gated_residual_ gate");
    p.gate = gate.data();
    p.gate_stride = mod_stride(gate, x.size(0), x.size(2), "gated_residual_ gate");
    p.rows_per_group = x.size(1);
  }
  p.dtype = x.dtype();
  p.device = x.device();
  gated_residual(p, rt::current_stream(x.device()));
}

void axpy_(Tensor& x, const Tensor& y, float alpha) {
  same_place(x, y, "axpy_");
  STAVID_CHECK(x.shape() == y.shape() && x.is_contiguous() && y.is_contiguous(), "axpy_: x ", x.str(), " and y ",
               y.str(), " must be contiguous and the same shape");
  GatedResidualParams p;
  p.x = x.data();
  p.y = y.data();
  p.rows = 1;
  p.cols = x.numel();
  p.x_stride = p.y_stride = p.cols;
  p.scale = alpha;
  p.dtype = x.dtype();
  p.device = x.device();
  gated_residual(p, rt::current_stream(x.device()));
}

std::pair<double, double> abs_sums(const Tensor& a, const Tensor& b) {
  const Tensor ac = a.contiguous();
  Tensor bc;
  if (b.defined()) {
    same_place(a, b, "abs_sums");
    STAVID_CHECK(a.shape() == b.shape(), "abs_sums: shapes ", a.str(), " and ", b.str(), " differ");
    bc = b.contiguous();
  }
  AbsSumsParams p;
  p.a = ac.data();
  p.b = bc.defined() ? bc.data() : nullptr;
  p.n = a.numel();
  p.dtype = a.dtype();
  p.device = a.device();
  double host[2] = {0, 0};
  if (a.device().is_cpu()) {
    p.out = host;
    abs_sums(p, Stream::cpu());
  } else {
    Tensor scratch = Tensor::empty({4}, DType::F32, a.device());  // 16 bytes: two doubles
    p.out = static_cast<double*>(scratch.data());
    const Stream st = rt::current_stream(a.device());
    abs_sums(p, st);
    rt::copy_bytes(host, Device::cpu(), p.out, a.device(), sizeof(host), st);
  }
  return {host[0], host[1]};
}

Tensor softmax(const Tensor& x, float scale) {
  const Rows r = as_rows(x, "softmax");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  SoftmaxParams p;
  p.x = x.data();
  p.y = y.data();
  p.rows = r.rows;
  p.cols = r.cols;
  p.x_stride = r.stride;
  p.y_stride = r.cols;
  p.scale = scale;
  p.dtype = x.dtype();
  p.device = x.device();
  softmax(p, rt::current_stream(x.device()));
  return y;
}

}  // namespace stavid::ops
