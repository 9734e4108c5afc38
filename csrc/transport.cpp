// act_fast_cpu::affine_transport: the affine transport map on channels-last rows and on conv
// planes, bit-identical to act_fast.ops.reference.affine_transport_ref.
//
// Rows ([..., C] viewed as [R, C], any row stride; a channel stride other than 1 is copied to
// contiguous first): one read of x, one write of out, vectorized along the channels.
//
// Planes ([B, C, *spatial] viewed as [B·C, HW] with contiguous planes; the Python side sends other
// layouts to the reference): blocks of planes are converted to a float32 scratch and reduced with
// at::mean (the reference's own reduction, so the plane means are bit-identical), then each plane
// of the block, still in cache, is written: x + δ (pooled) or the per-position map, kept where the
// plane's mean lies inside the support.
#include <ATen/ATen.h>

#include "common.h"

#include <cmath>

namespace act_fast_cpu {

TransportArgs prepare_transport(const at::Tensor& weight, const at::Tensor& bias,
                                const std::optional<at::Tensor>& strength, double scalar_strength,
                                const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                                const std::optional<at::Tensor>& map_index, int64_t batch_rows) {
  TransportArgs a;
  a.C = weight.size(-1);
  const bool has_index = map_index.has_value() && map_index->defined();
  if (has_index && map_index->dim() == 2) {
    a.chain = true;
    a.S = map_index->size(1);
    TORCH_CHECK_VALUE(a.S >= 1 && a.S <= kMaxChain, "a chain map_index [B, S] composes 1 to ", kMaxChain,
                      " maps per row, got S = ", a.S);
  }
  // Per-row buffers must have one entry per batch row (never fewer: the kernels would read past them).
  if (has_index && map_index->dim() > 0) {
    TORCH_CHECK_VALUE(map_index->dim() <= 2 && map_index->size(0) == batch_rows, "per-row map_index must have ",
                      batch_rows, " rows (one per batch row of x), got shape ", map_index->sizes());
  }
  if (strength.has_value() && strength->defined() && strength->dim() > 0) {
    const bool per_map = strength->dim() == 2;
    TORCH_CHECK_VALUE(strength->dim() <= 2 && strength->size(0) == batch_rows && (!per_map || (a.chain && strength->size(1) == a.S)),
                      "per-row strength must have shape [", batch_rows, "]", a.chain ? " or [B, S] like map_index" : "",
                      " (one entry per batch row of x), got ", strength->sizes());
    a.lam_per_map = per_map;
  }
  // float32 contiguous tensors (the steering buffers are) are used as they are: no view or copy
  // per call (these conversions were ~1.5 µs of a decode call)
  const auto as_float = [](const at::Tensor& t) {
    return t.scalar_type() == at::kFloat && t.is_contiguous() ? t : t.to(at::kFloat).contiguous();
  };
  a.w = as_float(weight);
  a.b = as_float(bias);
  a.has_support = lo.has_value() && lo->defined();
  if (a.has_support) {
    TORCH_CHECK_VALUE(hi.has_value() && hi->defined(), "a support needs both lo and hi");
    a.lo = as_float(*lo);
    a.hi = as_float(*hi);
  }
  // Every map tensor holds the same K maps of C channels (a smaller one would be read past its end).
  for (const at::Tensor* t : {&a.b, &a.lo, &a.hi}) {
    TORCH_CHECK_VALUE(!t->defined() || t->numel() == a.w.numel(), "the map tensors must all hold weight's ",
                      a.w.numel() / a.C, " maps of ", a.C, " channels, got shape ", t->sizes());
  }
  if (strength.has_value() && strength->defined()) {
    a.lam = as_float(*strength);
  } else {
    a.lam_scalar = static_cast<float>(scalar_strength);
  }
  if (map_index.has_value() && map_index->defined()) {
    const at::Tensor idx = map_index->to(at::kLong).reshape({-1}).contiguous();
    const int64_t K = a.w.numel() / a.C;
    const int64_t* p = idx.data_ptr<int64_t>();
    a.map_rows.assign(p, p + idx.numel());
    for (size_t i = 0; i < a.map_rows.size(); ++i) {
      TORCH_CHECK_INDEX(a.map_rows[i] >= 0 && a.map_rows[i] < K, "map_index[", i, "] = ", a.map_rows[i],
                        " is out of range for ", K, " maps (expected values in [0, ", K, "))");
    }
  }
  a.wp = a.w.data_ptr<float>();
  a.bp = a.b.data_ptr<float>();
  if (a.has_support) {
    a.lop = a.lo.data_ptr<float>();
    a.hip = a.hi.data_ptr<float>();
  }
  if (a.lam.defined()) {
    a.lamp = a.lam.data_ptr<float>();
    a.lam_count = a.lam.numel();
  }
  return a;
}

namespace {

template <bool kSupport, typename T>
void rows_kernel(const at::Tensor& x2, const at::Tensor& out, const TransportArgs& a, int64_t rpb) {
  const int64_t R = x2.size(0), C = x2.size(1), sr = x2.stride(0);
  const T* xp = x2.data_ptr<T>();
  T* yp = out.data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / C);
  at::parallel_for(0, R, grain, [&](int64_t r0, int64_t r1) {
    transport_row_range<kSupport>(RowLoader<T>{xp + r0 * sr, sr, r0}, yp + r0 * C, C, r0, r1, a, rpb);
  });
}

// Writes y = x + δ over n positions.
template <typename T>
inline void add_shift(const T* x, T* y, int64_t n, float delta) {
  const Vec d(delta);
  for (int64_t i = 0; i < n; i += kStep) {
    const int64_t k = std::min(kStep, n - i);
    Vec a, b;
    load2(x + i, k, a, b);
    store2(y + i, k, a + d, b + d);
  }
}

// Writes y = x + λ (w x + b − x) over n positions, one (w, b) for the whole plane.
template <typename T>
inline void plane_affine(const T* x, T* y, int64_t n, float w, float bias, float lam) {
  const Vec vw(w), vb(bias), vl(lam), none(0.f);
  for (int64_t i = 0; i < n; i += kStep) {
    const int64_t k = std::min(kStep, n - i);
    Vec a, b;
    load2(x + i, k, a, b);
    store2(y + i, k, transport_vec<false>(a, vw, vb, vl, none, none), transport_vec<false>(b, vw, vb, vl, none, none));
  }
}

// Writes y = x (through float32, as the reference's where(inside, y, x).to(dtype)).
template <typename T>
inline void plane_copy(const T* x, T* y, int64_t n) {
  for (int64_t i = 0; i < n; i += kStep) {
    const int64_t k = std::min(kStep, n - i);
    Vec a, b;
    load2(x + i, k, a, b);
    store2(y + i, k, a, b);
  }
}

template <typename T>
void planes_kernel(const at::Tensor& x3, const at::Tensor& out, const TransportArgs& a, bool pool) {
  const int64_t B = x3.size(0), C = x3.size(1), HW = x3.size(2);
  const int64_t sb = x3.stride(0), sc = x3.stride(1);
  const T* xp = x3.data_ptr<T>();
  T* yp = out.data_ptr<T>();
  const int64_t block = std::max<int64_t>(1, kBlockElements / HW);
  for_each_block(B * C, block, [&](int64_t p0, int64_t p1) {
    const int64_t n = p1 - p0;
    float* sp = scratch(n * HW + n);
    for (int64_t p = p0; p < p1; ++p) {
      const T* src = xp + (p / C) * sb + (p % C) * sc;
      float* dst = sp + (p - p0) * HW;
      for (int64_t i = 0; i < HW; i += kStep) {
        const int64_t k = std::min(kStep, HW - i);
        Vec va, vb;
        load2(src + i, k, va, vb);
        store2(dst + i, k, va, vb);
      }
    }
    float* mp = sp + n * HW;
    at::Tensor means = at::from_blob(mp, {n}, at::kFloat);
    at::mean_out(means, at::from_blob(sp, {n, HW}, at::kFloat), {1}, false);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t bi = p / C, ci = p % C;
      const T* src = xp + bi * sb + ci * sc;
      T* dst = yp + p * HW;
      const MapRow m = a.map_for(bi);
      const float lam = a.lam_for(bi), mean = mp[p - p0], w = m.w[ci], bias = m.b[ci];
      const bool inside = !a.has_support || (mean > m.lo[ci] && mean < m.hi[ci]);
      if (!inside) {
        plane_copy(src, dst, HW);
      } else if (pool) {
        // λ((w − 1) m + b), each operation rounded to float32 as the reference's tensors are
        const float delta = lam * (((w - 1.0f) * mean) + bias);
        add_shift(src, dst, HW, delta);
      } else {
        plane_affine(src, dst, HW, w, bias, lam);
      }
    }
  });
}

}  // namespace

void affine_transport_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                          const std::optional<at::Tensor>& strength, double scalar_strength,
                          const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                          const std::optional<at::Tensor>& map_index, int64_t channel_dim, bool pool_spatial,
                          const at::Tensor& out) {
  TORCH_CHECK(out.is_contiguous() && out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type(),
              "act_fast_cpu::affine_transport: out must be a contiguous tensor shaped and typed like x");
  if (x.numel() == 0) return;
  const TransportArgs a =
      prepare_transport(weight, bias, strength, scalar_strength, lo, hi, map_index, x.dim() >= 2 ? x.size(0) : 1);
  const int64_t cd = channel_dim < 0 ? channel_dim + x.dim() : channel_dim;
  if (cd == x.dim() - 1 || x.dim() <= 2) {
    at::Tensor x2 = x.reshape({-1, a.C});
    if (x2.stride(1) != 1 && a.C > 1) x2 = x2.contiguous();
    const int64_t rpb = rows_per_batch(x, x2.size(0));
    ACT_FAST_DISPATCH_FLOATS(x.scalar_type(), "affine_transport", [&] {
      if (a.has_support) {
        rows_kernel<true, T>(x2, out, a, rpb);
      } else {
        rows_kernel<false, T>(x2, out, a, rpb);
      }
    });
    return;
  }
  TORCH_CHECK_VALUE(!a.chain, "act_fast_cpu::affine_transport: a chain of maps ([B, S] map_index) takes channels-last input only");
  const at::Tensor x3 = x.reshape({x.size(0), x.size(1), -1});
  TORCH_CHECK(x3.stride(2) == 1 || x3.size(2) == 1,
              "act_fast_cpu::affine_transport: conv planes must be contiguous (got strides ", x.strides(), ")");
  ACT_FAST_DISPATCH_FLOATS(x.scalar_type(), "affine_transport", [&] { planes_kernel<T>(x3, out, a, pool_spatial); });
}

}  // namespace act_fast_cpu
