// act_fast_cpu::rms_norm_transport and ::layer_norm_transport: the norm module's output, then the
// affine transport of it, bit-identical to act_fast.ops.reference.{rms,layer}_norm_transport_ref.
//
// Rows are processed in blocks of about kBlockElements values that stay in cache between the
// reduction and the output pass; x is read from memory once and the output written once.
//
// RMSNorm: the squares of a block (float32) go to a scratch that at::mean reduces, i.e. the
// reference's own `x.pow(2).mean(-1)` (the same ATen reduction of a contiguous row, so the same
// summation order); then rstd = 1 / sqrt(mean + eps) and, per element, x·rstd [rounded to the input
// dtype when cast_before_scale] · (norm_weight + offset), rounded to the input dtype, transported.
//
// LayerNorm: at::layer_norm of the block (the module's kernel itself: its row statistics and
// affine are computed per row), then the transport of that block from cache.
#include <ATen/ATen.h>

#include "common.h"

#include <cmath>

namespace act_fast_cpu {

namespace {

// kWeight: a norm weight (scale = norm_weight + offset); kCast: round the normalised value to T
// before scaling (cast_before_scale).
template <bool kSupport, bool kWeight, bool kCast, typename T>
void rms_kernel(const at::Tensor& x2, const at::Tensor& out, const at::Tensor& scale, double eps,
                const TransportArgs& a, int64_t rpb) {
  const int64_t R = x2.size(0), C = x2.size(1), sr = x2.stride(0);
  const T* xp = x2.data_ptr<T>();
  T* yp = out.data_ptr<T>();
  const float* sp = kWeight ? scale.data_ptr<float>() : nullptr;
  const float epsf = static_cast<float>(eps);  // the reference adds eps as a float32 scalar
  const int64_t block = std::max<int64_t>(1, kBlockElements / C);
  for_each_block(R, block, [&](int64_t r0, int64_t r1) {
    const int64_t n = r1 - r0;
    float* qp = scratch(n * C + n);
    for (int64_t r = r0; r < r1; ++r) {
      const T* row = xp + r * sr;
      float* q = qp + (r - r0) * C;
      for (int64_t c = 0; c < C; c += kStep) {
        const int64_t k = std::min(kStep, C - c);
        Vec va, vb;
        load2(row + c, k, va, vb);
        store2(q + c, k, va * va, vb * vb);
      }
    }
    float* rstd = qp + n * C;
    at::Tensor means = at::from_blob(rstd, {n}, at::kFloat);
    at::mean_out(means, at::from_blob(qp, {n, C}, at::kFloat), {1}, false);
    for (int64_t i = 0; i < n; ++i) rstd[i] = 1.0f / std::sqrt(rstd[i] + epsf);
    // the module's output, rounded as the module rounds it, then transported
    const auto load = [&](int64_t r, int64_t c, int64_t k, Vec& va, Vec& vb) __attribute__((always_inline)) {
      load2(xp + r * sr + c, k, va, vb);
      const Vec s(rstd[r - r0]);
      va = va * s;
      vb = vb * s;
      if constexpr (kWeight) {
        if constexpr (kCast) round_to<T>(va, vb);
        Vec sa, sb;
        load2(sp + c, k, sa, sb);
        va = va * sa;
        vb = vb * sb;
      }
      round_to<T>(va, vb);
    };
    transport_row_range<kSupport>(load, yp + r0 * C, C, r0, r1, a, rpb);
  });
}

template <bool kSupport, typename T>
void layer_kernel(const at::Tensor& x2, const at::Tensor& out, const std::optional<at::Tensor>& nw,
                  const std::optional<at::Tensor>& nb, bool in_float, double eps, const TransportArgs& a,
                  int64_t rpb) {
  const int64_t R = x2.size(0), C = x2.size(1);
  T* yp = out.data_ptr<T>();
  const int64_t block = std::max<int64_t>(1, kBlockElements / C);
  for_each_block(R, block, [&](int64_t r0, int64_t r1) {
    at::Tensor xb = x2.narrow(0, r0, r1 - r0);
    if (in_float) xb = xb.to(at::kFloat);
    at::Tensor h = at::layer_norm(xb, {C}, nw, nb, eps);
    if (in_float) h = h.to(x2.scalar_type());
    h = h.contiguous();
    transport_row_range<kSupport>(RowLoader<T>{h.data_ptr<T>(), C, r0}, yp + r0 * C, C, r0, r1, a, rpb);
  });
}

void check_out(const at::Tensor& x, const at::Tensor& out, const char* name) {
  TORCH_CHECK(out.is_contiguous() && out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type(), name,
              ": out must be a contiguous tensor shaped and typed like x");
}

}  // namespace

void rms_norm_transport_cpu(const at::Tensor& x, const std::optional<at::Tensor>& norm_weight,
                            const at::Tensor& weight, const at::Tensor& bias,
                            const std::optional<at::Tensor>& strength, double scalar_strength,
                            const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                            const std::optional<at::Tensor>& map_index, double eps, double weight_offset,
                            bool cast_before_scale, const at::Tensor& out) {
  check_out(x, out, "act_fast_cpu::rms_norm_transport");
  if (x.numel() == 0) return;
  const TransportArgs a =
      prepare_transport(weight, bias, strength, scalar_strength, lo, hi, map_index, x.dim() >= 2 ? x.size(0) : 1);
  at::Tensor x2 = x.reshape({-1, a.C});
  TORCH_CHECK(x2.stride(1) == 1 || a.C == 1,
              "act_fast_cpu::rms_norm_transport: x must have unit channel stride (got strides ", x.strides(), ")");
  // norm_weight + offset in float32, computed by the same tensor op as the reference
  at::Tensor scale;
  if (norm_weight.has_value() && norm_weight->defined()) {
    scale = norm_weight->to(at::kFloat).add(weight_offset).contiguous();
  }
  const int64_t rpb = rows_per_batch(x, x2.size(0));
  ACT_FAST_DISPATCH_FLOATS(x.scalar_type(), "rms_norm_transport", [&] {
    const auto run = [&](auto support) {
      constexpr bool kSupport = decltype(support)::value;
      if (!scale.defined()) {
        rms_kernel<kSupport, false, false, T>(x2, out, scale, eps, a, rpb);
      } else if (cast_before_scale) {
        rms_kernel<kSupport, true, true, T>(x2, out, scale, eps, a, rpb);
      } else {
        rms_kernel<kSupport, true, false, T>(x2, out, scale, eps, a, rpb);
      }
    };
    if (a.has_support) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
  });
}

void layer_norm_transport_cpu(const at::Tensor& x, const std::optional<at::Tensor>& norm_weight,
                              const std::optional<at::Tensor>& norm_bias, const at::Tensor& weight,
                              const at::Tensor& bias, const std::optional<at::Tensor>& strength,
                              double scalar_strength, const std::optional<at::Tensor>& lo,
                              const std::optional<at::Tensor>& hi, const std::optional<at::Tensor>& map_index,
                              double eps, const at::Tensor& out) {
  check_out(x, out, "act_fast_cpu::layer_norm_transport");
  if (x.numel() == 0) return;
  const TransportArgs a =
      prepare_transport(weight, bias, strength, scalar_strength, lo, hi, map_index, x.dim() >= 2 ? x.size(0) : 1);
  const at::Tensor x2 = x.reshape({-1, a.C});
  // As the reference: the module's own computation when the affine parameters have x's dtype,
  // otherwise everything in float32 and one rounding at the end.
  const auto differs = [&](const std::optional<at::Tensor>& p) {
    return p.has_value() && p->defined() && p->scalar_type() != x.scalar_type();
  };
  const bool in_float = differs(norm_weight) || differs(norm_bias);
  const auto cast = [&](const std::optional<at::Tensor>& p) -> std::optional<at::Tensor> {
    if (!p.has_value() || !p->defined()) return std::nullopt;
    return in_float ? p->to(at::kFloat) : *p;
  };
  const std::optional<at::Tensor> nw = cast(norm_weight), nb = cast(norm_bias);
  const int64_t rpb = rows_per_batch(x, x2.size(0));
  ACT_FAST_DISPATCH_FLOATS(x.scalar_type(), "layer_norm_transport", [&] {
    if (a.has_support) {
      layer_kernel<true, T>(x2, out, nw, nb, in_float, eps, a, rpb);
    } else {
      layer_kernel<false, T>(x2, out, nw, nb, in_float, eps, a, rpb);
    }
  });
}

}  // namespace act_fast_cpu
