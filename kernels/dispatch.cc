// Validate-and-dispatch for every op family: one place that checks a params struct and sends it to
// the CPU reference or the CUDA implementation. Kernels behind it may assume what is checked here.
#include <type_traits>

#include "kernels/core/error.h"
#include "kernels/core/observer.h"
#include "kernels/dit_ops.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"
#include "kernels/rng.h"
#include "kernels/softmax.h"
#include "kernels/vae_ops.h"

namespace stavid {
namespace {

void check_stream(const Device& d, const Stream& s, const char* op) {
  STAVID_CHECK(s.device == d, op, ": params are on ", d.str(), " but the stream is on ", s.device.str());
}

[[noreturn]] void no_cuda(const char* op) {
  STAVID_THROW(ErrorCode::Unsupported, op, ": this build has no CUDA backend (configure with STAVID_CUDA=ON)");
}

// Runs the CPU function or the CUDA one for the params' device.
template <typename P, typename CpuFn, typename CudaFn>
void dispatch(const char* op, const P& p, const Stream& s, CpuFn cpu, CudaFn cuda) {
  check_stream(p.device, s, op);
  const ObservedDispatch observed(op, &p, s);
  if (p.device.is_cpu()) {
    cpu(p);
    return;
  }
  if constexpr (std::is_null_pointer_v<CudaFn>) {
    no_cuda(op);
  } else {
    cuda(p, s.cuda);
  }
}

// In a CPU-only build the CUDA entry points do not exist: dispatch gets nullptr instead.
#if defined(STAVID_WITH_CUDA)
#define CUDA_FN(f) f
#else
#define CUDA_FN(f) nullptr
#endif
KernelObserver* g_observer = nullptr;
}  // namespace

void set_kernel_observer(KernelObserver* observer) { g_observer = observer; }
KernelObserver* kernel_observer() { return g_observer; }

void gemm(const GemmParams& p, const Stream& s) {
  STAVID_CHECK(p.m >= 0 && p.n >= 0 && p.k >= 0 && p.batch >= 1, "gemm: bad sizes m=", p.m, " n=", p.n,
               " k=", p.k, " batch=", p.batch);
  if (p.m == 0 || p.n == 0) return;
  STAVID_CHECK(p.a && p.b && p.d, "gemm: null operand");
  STAVID_CHECK(p.lda >= p.k, "gemm: lda ", p.lda, " < k ", p.k);
  STAVID_CHECK(p.ldb >= (p.b_transposed ? p.k : p.n), "gemm: ldb ", p.ldb, " too small");
  STAVID_CHECK(p.ldd >= p.n, "gemm: ldd ", p.ldd, " < n ", p.n);
  const bool wants_bias = p.epilogue == GemmEpilogue::Bias || p.epilogue == GemmEpilogue::BiasGeluTanh;
  STAVID_CHECK(!wants_bias || p.bias, "gemm: the bias epilogue needs a bias pointer");
  STAVID_CHECK(wants_bias || !p.bias, "gemm: a bias pointer was given without a bias epilogue");
  const bool gelu = p.epilogue == GemmEpilogue::GeluTanh || p.epilogue == GemmEpilogue::BiasGeluTanh;
  STAVID_CHECK(!(gelu && p.accumulate), "gemm: accumulate cannot combine with a GELU epilogue");
  STAVID_CHECK(p.batch == 1 || (p.stride_a >= 0 && p.stride_b >= 0 && p.stride_d > 0),
               "gemm: batched call needs non-negative strides and a positive output stride");
  dispatch("gemm", p, s, detail::gemm_cpu, CUDA_FN(detail::gemm_cuda));
}

void norm(const NormParams& p, const Stream& s) {
  STAVID_CHECK(p.rows >= 0 && p.dim >= 1, "norm: bad sizes rows=", p.rows, " dim=", p.dim);
  if (p.rows == 0) return;
  STAVID_CHECK(p.x && p.y, "norm: null input or output");
  STAVID_CHECK(p.x_stride >= p.dim && p.y_stride >= p.dim, "norm: row stride smaller than dim");
  STAVID_CHECK(p.eps > 0.f, "norm: eps must be positive");
  STAVID_CHECK(p.kind == NormKind::LayerNorm || (p.bias == nullptr && p.shift == nullptr),
               "norm: RMSNorm takes no bias and no shift");
  const bool modulated = p.scale || p.shift;
  STAVID_CHECK(!modulated || p.rows_per_group >= 1, "norm: rows_per_group must be >= 1");
  STAVID_CHECK(!modulated || p.mod_stride >= 0, "norm: negative modulation stride");
  dispatch("norm", p, s, detail::norm_cpu, CUDA_FN(detail::norm_cuda));
}

void unary(const UnaryParams& p, const Stream& s) {
  STAVID_CHECK(p.n >= 0, "unary: negative size");
  if (p.n == 0) return;
  STAVID_CHECK(p.x && p.y, "unary: null pointer");
  dispatch("unary", p, s, detail::unary_cpu, CUDA_FN(detail::unary_cuda));
}

void binary(const BinaryParams& p, const Stream& s) {
  STAVID_CHECK(p.rows >= 0 && p.cols >= 0, "binary: negative size");
  if (p.rows == 0 || p.cols == 0) return;
  STAVID_CHECK(p.a && p.b && p.y, "binary: null pointer");
  STAVID_CHECK(p.a_stride >= p.cols && p.y_stride >= p.cols, "binary: row stride smaller than cols");
  STAVID_CHECK(p.b_rows_per_group >= 1 && p.b_stride >= 0, "binary: bad broadcast of b");
  dispatch("binary", p, s, detail::binary_cpu, CUDA_FN(detail::binary_cuda));
}

void gated_residual(const GatedResidualParams& p, const Stream& s) {
  STAVID_CHECK(p.rows >= 0 && p.cols >= 0, "gated_residual: negative size");
  if (p.rows == 0 || p.cols == 0) return;
  STAVID_CHECK(p.x && p.y, "gated_residual: null pointer");
  STAVID_CHECK(p.x_stride >= p.cols && p.y_stride >= p.cols, "gated_residual: row stride smaller than cols");
  STAVID_CHECK(!p.gate || (p.rows_per_group >= 1 && p.gate_stride >= 0), "gated_residual: bad gate broadcast");
  dispatch("gated_residual", p, s, detail::gated_residual_cpu, CUDA_FN(detail::gated_residual_cuda));
}

void strided_copy(const CopyParams& p, const Stream& s) {
  STAVID_CHECK(p.ndim >= 0 && p.ndim <= kMaxCopyDims, "strided_copy: ndim ", p.ndim, " outside 0..", kMaxCopyDims);
  for (int i = 0; i < p.ndim; ++i) {
    STAVID_CHECK(p.sizes[i] >= 0, "strided_copy: negative size at dim ", i);
    if (p.sizes[i] == 0) return;
  }
  STAVID_CHECK(p.src && p.dst, "strided_copy: null pointer");
  dispatch("strided_copy", p, s, detail::strided_copy_cpu, CUDA_FN(detail::strided_copy_cuda));
}

void fill(const FillParams& p, const Stream& s) {
  STAVID_CHECK(p.n >= 0, "fill: negative size");
  if (p.n == 0) return;
  STAVID_CHECK(p.y, "fill: null pointer");
  dispatch("fill", p, s, detail::fill_cpu, CUDA_FN(detail::fill_cuda));
}

void group_sq_diff(const GroupSqDiffParams& p, const Stream& s) {
  STAVID_CHECK(p.a && p.b && p.out && p.rows >= 0 && p.group >= 1 && p.cols % p.group == 0,
               "group_sq_diff: bad params (cols must be a multiple of group)");
  STAVID_CHECK(p.a_stride >= p.cols && p.b_stride >= p.cols, "group_sq_diff: row stride smaller than cols");
  if (p.rows == 0 || p.cols == 0) return;
  dispatch("group_sq_diff", p, s, detail::group_sq_diff_cpu, CUDA_FN(detail::group_sq_diff_cuda));
}

void abs_sums(const AbsSumsParams& p, const Stream& s) {
  STAVID_CHECK(p.n >= 0 && p.a && p.out, "abs_sums: bad params");
  dispatch("abs_sums", p, s, detail::abs_sums_cpu, CUDA_FN(detail::abs_sums_cuda));
}

void softmax(const SoftmaxParams& p, const Stream& s) {
  STAVID_CHECK(p.rows >= 0 && p.cols >= 1, "softmax: bad sizes rows=", p.rows, " cols=", p.cols);
  if (p.rows == 0) return;
  STAVID_CHECK(p.x && p.y, "softmax: null pointer");
  STAVID_CHECK(p.x_stride >= p.cols && p.y_stride >= p.cols, "softmax: row stride smaller than cols");
  dispatch("softmax", p, s, detail::softmax_cpu, CUDA_FN(detail::softmax_cuda));
}

void normal(const NormalParams& p, const Stream& s) {
  STAVID_CHECK(p.n >= 0, "normal: negative size");
  if (p.n == 0) return;
  STAVID_CHECK(p.y, "normal: null pointer");
  dispatch("normal", p, s, detail::normal_cpu, CUDA_FN(detail::normal_cuda));
}

void patchify(const PatchifyParams& p, const Stream& s) {
  STAVID_CHECK(p.src && p.dst, "patchify: null pointer");
  STAVID_CHECK(p.batch >= 1 && p.channels >= 1 && p.pt >= 1 && p.ph >= 1 && p.pw >= 1, "patchify: bad sizes");
  STAVID_CHECK(p.frames % p.pt == 0 && p.height % p.ph == 0 && p.width % p.pw == 0, "patchify: latent ",
               p.frames, "x", p.height, "x", p.width, " is not divisible by the patch ", p.pt, "x", p.ph, "x", p.pw);
  const int64_t feat = static_cast<int64_t>(p.channels) * p.pt * p.ph * p.pw;
  STAVID_CHECK(p.token_row_stride >= feat, "patchify: token row stride ", p.token_row_stride, " < ", feat);
  dispatch("patchify", p, s, detail::patchify_cpu, CUDA_FN(detail::patchify_cuda));
}

void qkv_prepare(const QkvPrepareParams& p, const Stream& s) {
  STAVID_CHECK(p.q && p.k && p.v, "qkv_prepare: null output");
  STAVID_CHECK(p.batch >= 1 && p.heads >= 1 && p.head_dim >= 2 && p.head_dim % 2 == 0,
               "qkv_prepare: head_dim must be even and >= 2, got ", p.head_dim);
  STAVID_CHECK(p.img_slots == 0 || p.img, "qkv_prepare: image slots without an image source");
  STAVID_CHECK(p.txt_rows == 0 || p.txt, "qkv_prepare: text rows without a text source");
  STAVID_CHECK(p.img_row_of_slot || p.img_slots == p.img_rows, "qkv_prepare: without a slot map the image slots (",
               p.img_slots, ") must equal the image rows (", p.img_rows, ")");
  const int64_t width = 3LL * p.heads * p.head_dim;
  STAVID_CHECK(p.img_slots == 0 || p.img_row_stride >= width, "qkv_prepare: image row stride < 3*H*Dh");
  STAVID_CHECK(p.txt_rows == 0 || p.txt_row_stride >= width, "qkv_prepare: text row stride < 3*H*Dh");
  STAVID_CHECK((p.rope_cos == nullptr) == (p.rope_sin == nullptr), "qkv_prepare: RoPE needs both cos and sin");
  dispatch("qkv_prepare", p, s, detail::qkv_prepare_cpu, CUDA_FN(detail::qkv_prepare_cuda));
}

void causal_im2col(const CausalIm2colParams& p, const Stream& s) {
  STAVID_CHECK(p.x && p.col, "causal_im2col: null pointer");
  STAVID_CHECK(p.cin >= 1 && p.frames >= 1 && p.height >= 1 && p.width >= 1, "causal_im2col: bad sizes");
  STAVID_CHECK(p.kt >= 1 && p.kh >= 1 && p.kw >= 1 && p.kh % 2 == 1 && p.kw % 2 == 1,
               "causal_im2col: kernel sizes must be >= 1 and odd in H and W");
  STAVID_CHECK(p.t0 >= 0 && p.nt >= 1 && p.t0 + p.nt <= p.frames, "causal_im2col: frame range [", p.t0, ", ",
               p.t0 + p.nt, ") outside ", p.frames, " frames");
  dispatch("causal_im2col", p, s, detail::causal_im2col_cpu, CUDA_FN(detail::causal_im2col_cuda));
}

void group_norm(const GroupNormParams& p, const Stream& s) {
  STAVID_CHECK(p.x && p.y, "group_norm: null pointer");
  STAVID_CHECK(p.groups >= 1 && p.channels % p.groups == 0, "group_norm: ", p.channels,
               " channels are not divisible into ", p.groups, " groups");
  if (p.n == 0 || p.batch == 0) return;
  dispatch("group_norm", p, s, detail::group_norm_cpu, CUDA_FN(detail::group_norm_cuda));
}

void group_sums(const GroupSumsParams& p, const Stream& s) {
  STAVID_CHECK(p.x && p.sums, "group_sums: null pointer");
  STAVID_CHECK(p.groups >= 1 && p.channels % p.groups == 0, "group_sums: channels not divisible into groups");
  if (p.n == 0 || p.batch == 0) return;
  dispatch("group_sums", p, s, detail::group_sums_cpu, CUDA_FN(detail::group_sums_cuda));
}

void upsample_causal(const UpsampleParams& p, const Stream& s) {
  STAVID_CHECK(p.x && p.y, "upsample_causal: null pointer");
  STAVID_CHECK(p.frames >= 1 && p.ft >= 1 && p.fh >= 1 && p.fw >= 1, "upsample_causal: bad sizes");
  dispatch("upsample_causal", p, s, detail::upsample_causal_cpu, CUDA_FN(detail::upsample_causal_cuda));
}

}  // namespace stavid
