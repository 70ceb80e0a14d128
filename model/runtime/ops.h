// Tensor-level wrappers over the kernel families: shape checks, output allocation, params structs.
// Every op runs on the current stream of its inputs' device. Inputs must share device and dtype.
#pragma once

#include "kernels/gemm.h"
#include "model/runtime/tensor.h"

namespace stavid::ops {

// y[..., n] = act(x[..., k] . w[n, k]^T + bias[n]); x's last dim contiguous, w contiguous.
// `bias` may be undefined. `act` is None or GeluTanh. A 3-D x whose batch does not collapse into
// its rows (a slice of a longer sequence) runs as one strided-batch GEMM.
enum class Activation { None, GeluTanh };
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor(),
              Activation act = Activation::None);
// The same, writing into `out` (same leading shape as x, last dim n, last dim contiguous; may be
// a strided view such as a column range of a wider buffer).
void linear_into(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, Tensor& out);

// Batched matmul over the leading dimension: a [b, m, k] . b [b, k, n] (or b^T when
// `b_transposed`, b stored [b, n, k]) -> [b, m, n]. Inner rows contiguous.
Tensor bmm(const Tensor& a, const Tensor& b, bool b_transposed = false);

// LayerNorm over the last dim (no affine when weight/bias undefined), with optional adaLN modulation
// y = norm(x) * (1 + scale) + shift, where scale/shift are [B, dim] views (row stride may exceed
// dim) and x is [B, N, dim].
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps);
Tensor layer_norm_modulated(const Tensor& x, const Tensor& scale, const Tensor& shift, float eps);
Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps);

Tensor gelu_tanh(const Tensor& x);
Tensor silu(const Tensor& x);
Tensor add(const Tensor& a, const Tensor& b);  // same shape, or b broadcast as a row vector [cols]
Tensor mul(const Tensor& a, const Tensor& b);  // likewise
// x [B, N, D] += gate [B, D] (row stride may exceed D) * y [B, N, D]; gate undefined = plain add.
void gated_residual_(Tensor& x, const Tensor& y, const Tensor& gate);
// x += alpha * y, same shape, contiguous (the sampler's Euler step).
void axpy_(Tensor& x, const Tensor& y, float alpha);
Tensor softmax(const Tensor& x, float scale = 1.f);
// {sum |a - b|, sum |b|} over all elements in double (synchronizes); b undefined: {sum |a|, 0}.
std::pair<double, double> abs_sums(const Tensor& a, const Tensor& b);

}  // namespace stavid::ops
