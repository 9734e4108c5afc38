// Shared pieces of the act_fast CPU kernels: vector loads and stores that convert to and from
// float32, rounding to the input dtype, the per-element affine map, and the map / strength
// arguments of the transport ops prepared once per call.
//
// Every kernel computes in float32 (float64 input never reaches these kernels: the Python side
// runs the pure-torch reference for it) with the reference's operations in the reference's order,
// one rounding per operation. The library is compiled with -ffp-contract=off, so no multiply-add
// is fused and results are bit-identical to act_fast/ops/reference.py.
#pragma once

// The tensor type only: a file that calls ATen ops includes <ATen/ATen.h> itself (it costs ~5 s of
// compile time per file).
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

// For the per-element pieces of the kernels' inner loops: with many kernel instantiations in one
// file the compiler's inlining budget runs out and leaves some of them as calls, which pass the
// vectors through memory (a chain of maps cost twice what one map does then).
#define ACT_FAST_INLINE inline __attribute__((always_inline))

namespace act_fast_cpu {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kVec = Vec::size();
// Elements per loop step: two float vectors (one Vectorized<BFloat16> / <Half>).
constexpr int64_t kStep = 2 * kVec;
// Elements of one block of rows (or planes) that a thread reduces and then writes while the block
// is still in its L2 cache.
constexpr int64_t kBlockElements = 65536;

// This thread's float32 work buffer of at least n values (kept between calls: no allocation per
// block).
inline float* scratch(int64_t n) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(n);
  return buffer.data();
}

// Loads n (1..kStep) elements starting at p as two float vectors; lanes past n are zero.
template <typename T>
ACT_FAST_INLINE void load2(const T* p, int64_t n, Vec& a, Vec& b) {
  if constexpr (std::is_same_v<T, float>) {
    if (n == kStep) {
      a = Vec::loadu(p);
      b = Vec::loadu(p + kVec);
    } else {
      a = Vec::loadu(p, std::min(n, kVec));
      b = n > kVec ? Vec::loadu(p + kVec, n - kVec) : Vec(0.f);
    }
  } else if (n == kStep) {
    at::vec::load_to_float<T>(p, a, b);
  } else {
    alignas(64) T buf[kStep];
    std::memset(static_cast<void*>(buf), 0, sizeof(buf));
    std::memcpy(static_cast<void*>(buf), p, n * sizeof(T));
    at::vec::load_to_float<T>(buf, a, b);
  }
}

// Stores the first n (1..kStep) lanes of (a, b) at p, rounded to nearest even into T.
template <typename T>
ACT_FAST_INLINE void store2(T* p, int64_t n, const Vec& a, const Vec& b) {
  if constexpr (std::is_same_v<T, float>) {
    if (n == kStep) {
      a.store(p);
      b.store(p + kVec);
    } else {
      a.store(p, std::min(n, kVec));
      if (n > kVec) b.store(p + kVec, n - kVec);
    }
  } else {
    const auto v = at::vec::convert_from_float<T>(a, b);
    if (n == kStep) {
      v.store(p);
    } else {
      alignas(64) T buf[kStep];
      v.store(buf);
      std::memcpy(static_cast<void*>(p), buf, n * sizeof(T));
    }
  }
}

// v rounded to the nearest bfloat16 (ties to even) and back to float32, in integer arithmetic on
// the float's bits: c10::BFloat16's rounding, a few instructions instead of a pack and an unpack.
// NaN stays NaN (the sum would carry some NaN payloads into infinity).
ACT_FAST_INLINE Vec round_bf16(const Vec& v) {
  using IVec = at::vec::Vectorized<int32_t>;
  const IVec bits = at::vec::cast<int32_t>(v);
  const IVec lsb = (bits >> IVec(16)) & IVec(1);
  const IVec rounded = (bits + IVec(0x7FFF) + lsb) & IVec(static_cast<int32_t>(0xFFFF0000u));
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), at::vec::cast<float>(rounded), v);
#else
  return Vec::blendv(at::vec::cast<float>(rounded), v, v.isnan());
#endif
}

// (a, b) rounded to T (nearest even) and back: the value a module returning T hands on.
template <typename T>
ACT_FAST_INLINE void round_to(Vec& a, Vec& b) {
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    a = round_bf16(a);
    b = round_bf16(b);
  } else if constexpr (!std::is_same_v<T, float>) {
    std::tie(a, b) = at::vec::convert_to_float<T>(at::vec::convert_from_float<T>(a, b));
  }
}

}  // namespace act_fast_cpu

#include "bf16_pairs.h"

namespace act_fast_cpu {

// One map row: per-channel float32 weight, bias and (when lo != nullptr) support bounds.
struct MapRow {
  const float* w;
  const float* b;
  const float* lo;
  const float* hi;
};

// y where lo < x < hi (strict; NaN compares false), else x: Vec::blendv(x, y, (x > lo) & (x < hi)).
// On AVX512 as mask operations, three instructions where at::vec's turn each comparison's mask
// into a vector and back (seven); the same comparisons (_CMP_GT_OQ, _CMP_LT_OQ).
ACT_FAST_INLINE Vec keep_inside(const Vec& x, const Vec& y, const Vec& lo, const Vec& hi) {
#if defined(CPU_CAPABILITY_AVX512)
  const __mmask16 inside = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(x, lo, _CMP_GT_OQ), x, hi, _CMP_LT_OQ);
  return _mm512_mask_blend_ps(inside, x, y);
#else
  return Vec::blendv(x, y, (x > lo) & (x < hi));
#endif
}

// y = x + λ (w x + b − x), kept only where lo < x < hi (strict) when there is a support.
template <bool kSupport>
ACT_FAST_INLINE Vec transport_vec(const Vec& x, const Vec& w, const Vec& b, const Vec& lam, const Vec& lo, const Vec& hi) {
  const Vec y = x + lam * ((w * x + b) - x);
  if constexpr (kSupport) {
    return keep_inside(x, y, lo, hi);
  } else {
    return y;
  }
}

// The map values of n channels (n ≤ kStep) at channel offset c, as two float vectors each.
template <bool kSupport>
struct MapChunk {
  Vec wa, wb, ba, bb, la, lb, ha, hb;

  ACT_FAST_INLINE MapChunk(const MapRow& m, int64_t c, int64_t n) {
    load2(m.w + c, n, wa, wb);
    load2(m.b + c, n, ba, bb);
    if constexpr (kSupport) {
      load2(m.lo + c, n, la, lb);
      load2(m.hi + c, n, ha, hb);
    }
  }

  // kStep channels at offset c as (even channels, odd channels): the order of load_bf16_pairs.
  struct Pairs {};
  ACT_FAST_INLINE MapChunk(const MapRow& m, int64_t c, Pairs) {
    load_float_pairs(m.w + c, wa, wb);
    load_float_pairs(m.b + c, ba, bb);
    if constexpr (kSupport) {
      load_float_pairs(m.lo + c, la, lb);
      load_float_pairs(m.hi + c, ha, hb);
    }
  }

  // Transports the channels held in (a, b), in place.
  ACT_FAST_INLINE void apply(Vec& a, Vec& b, const Vec& lam) const {
    a = transport_vec<kSupport>(a, wa, ba, lam, la, ha);
    b = transport_vec<kSupport>(b, wb, bb, lam, lb, hb);
  }
};

// Maximum rows transported together: each map chunk is loaded once for all of them.
constexpr int64_t kRowGroup = 4;

template <typename T>
struct RowLoader;

// Whether transport_group moves full chunks of bfloat16 rows in lane pairs (bf16_pairs.h).
template <typename T, typename Load>
constexpr bool kUsePairs = kBf16Pairs && std::is_same_v<T, at::BFloat16> && std::is_same_v<Load, RowLoader<at::BFloat16>>;

// Rows searched together for rows that apply the same maps (see for_each_row_group).
constexpr int64_t kGroupWindow = 64;

// Calls run(rows, keys, n) on groups of n ≤ kRowGroup rows of [r0, r1) whose key(r) are equal,
// every row once; keys[i] is rows[i]'s key (computed once per row). Rows that apply the same maps need not be neighbours (a decode batch steered by a few map
// sets interleaves them), so each window of kGroupWindow rows is searched: a group then loads each
// map chunk from memory once instead of once per row. The order rows are written in changes
// nothing: each row's arithmetic is its own.
template <typename Key, typename Run>
inline void for_each_row_group(int64_t r0, int64_t r1, const Key& key, const Run& run) {
  using K = decltype(key(r0));
  K keys[kGroupWindow];
  for (int64_t w0 = r0; w0 < r1; w0 += kGroupWindow) {
    const int64_t w = std::min(r1 - w0, kGroupWindow);
    bool done[kGroupWindow] = {};
    for (int64_t j = 0; j < w; ++j) keys[j] = key(w0 + j);
    for (int64_t i = 0; i < w; ++i) {
      if (done[i]) continue;
      int64_t rows[kRowGroup];
      const K* row_keys[kRowGroup];
      int64_t n = 0;
      for (int64_t j = i; j < w && n < kRowGroup; ++j) {
        if (!done[j] && keys[j] == keys[i]) {
          done[j] = true;
          row_keys[n] = &keys[j];
          rows[n++] = w0 + j;
        }
      }
      run(rows, row_keys, n);
    }
  }
}

// Most maps one row composes (a [B, S] map_index, S <= kMaxChain): act_fast.ops.reference.MAX_CHAIN.
constexpr int64_t kMaxChain = 4;

// The map and strength arguments of a transport op, as float32 host arrays (the tensors own the
// memory; the pointers are read per row).
struct TransportArgs {
  at::Tensor w, b, lo, hi;         // [K, C] float32 contiguous (K = 1 without map_index)
  at::Tensor lam;                  // [B], [B, S] or [1] float32, or undefined: lam_scalar
  std::vector<int64_t> map_rows;   // map row per batch row ([B]) or per (row, chain position) ([B·S]);
                                   // one entry for a 0-d index; empty: row 0
  float lam_scalar = 0.f;
  int64_t C = 0;
  int64_t S = 1;                   // maps per row: the chain length of a [B, S] map_index, else 1
  bool chain = false;              // a [B, S] map_index
  bool lam_per_map = false;        // a [B, S] strength
  bool has_support = false;
  const float *wp = nullptr, *bp = nullptr, *lop = nullptr, *hip = nullptr, *lamp = nullptr;
  int64_t lam_count = 0;

  // Map s (chain position; 0 without a chain) of batch row `batch`.
  MapRow map_for(int64_t batch, int64_t s = 0) const {
    const int64_t k = map_rows.empty() ? 0 : map_rows[map_rows.size() == 1 ? 0 : batch * S + s];
    const int64_t off = k * C;
    return MapRow{wp + off, bp + off, has_support ? lop + off : nullptr, has_support ? hip + off : nullptr};
  }

  float lam_for(int64_t batch, int64_t s = 0) const {
    if (lamp == nullptr) return lam_scalar;
    if (lam_count == 1) return lamp[0];
    return lam_per_map ? lamp[batch * S + s] : lamp[batch];
  }
};

// batch_rows: x.size(0) (the rows a per-row λ or map_index must have), or 1 for 1-d x. Refuses
// per-row buffers of any other length (a kernel would read past a shorter one).
TransportArgs prepare_transport(const at::Tensor& weight, const at::Tensor& bias,
                                const std::optional<at::Tensor>& strength, double scalar_strength,
                                const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                                const std::optional<at::Tensor>& map_index, int64_t batch_rows);

// Transports kRows rows rows[0 .. kRows − 1] (any rows of the range that starts at r0) that share
// one chain of kMaps maps m: y = T_kMaps(… T_1(x)) per element, in registers, each support tested
// on its own input; one map is a chain of one. load(r, c, k, a, b) puts channels [c, c + k) of row
// r, in float32, into (a, b); row r is written at y + (r − r0)·C with strengths
// lam[i][0 .. kMaps − 1] for rows[i]. kMaps = 0 copies (every map of a chain at λ = 0).
//
// Per chunk of kStep channels the rows are loaded, then transported map by map, each map's chunk
// loaded once for all of them: the rows' values stay in registers (kRows is a compile-time count
// for that) and are independent chains of arithmetic the core overlaps. bfloat16 rows move in
// lane pairs (bf16_pairs.h) where a whole chunk can. The norms' row loaders are always_inline: not
// inlined here, a chain of 2 cost 25 % more than one map in the fused RMSNorm.
template <bool kSupport, int kMaps, int kRows, typename T, typename Load>
inline void transport_group(const Load& load, const int64_t* rows, T* y, int64_t r0, int64_t C, const MapRow* m,
                            const float (*lam)[kMaxChain]) {
  Vec vlam[kRows][kMaps > 0 ? kMaps : 1];
  for (int i = 0; i < kRows; ++i) {
    for (int s = 0; s < kMaps; ++s) vlam[i][s] = Vec(lam[i][s]);
  }
  for (int64_t c = 0; c < C; c += kStep) {
    const int64_t k = std::min(kStep, C - c);
    Vec a[kRows], b[kRows];
    if constexpr (kUsePairs<T, Load>) {
      if (k == kStep) {
        for (int i = 0; i < kRows; ++i) load.pairs(rows[i], c, a[i], b[i]);
        for (int s = 0; s < kMaps; ++s) {
          const MapChunk<kSupport> chunk(m[s], c, typename MapChunk<kSupport>::Pairs{});
          for (int i = 0; i < kRows; ++i) chunk.apply(a[i], b[i], vlam[i][s]);
        }
        for (int i = 0; i < kRows; ++i) store_bf16_pairs(y + (rows[i] - r0) * C + c, a[i], b[i]);
        continue;
      }
    }
    for (int i = 0; i < kRows; ++i) load(rows[i], c, k, a[i], b[i]);
    for (int s = 0; s < kMaps; ++s) {
      const MapChunk<kSupport> chunk(m[s], c, k);
      for (int i = 0; i < kRows; ++i) chunk.apply(a[i], b[i], vlam[i][s]);
    }
    for (int i = 0; i < kRows; ++i) store2(y + (rows[i] - r0) * C + c, k, a[i], b[i]);
  }
}

// transport_group for n = 1 .. kRowGroup rows.
template <bool kSupport, int kMaps, typename T, typename Load>
inline void transport_group(const Load& load, const int64_t* rows, int64_t n, T* y, int64_t r0, int64_t C,
                            const MapRow* m, const float (*lam)[kMaxChain]) {
  static_assert(kRowGroup == 4, "one case per group size");
  switch (n) {
    case 1: return transport_group<kSupport, kMaps, 1>(load, rows, y, r0, C, m, lam);
    case 2: return transport_group<kSupport, kMaps, 2>(load, rows, y, r0, C, m, lam);
    case 3: return transport_group<kSupport, kMaps, 3>(load, rows, y, r0, C, m, lam);
    default: return transport_group<kSupport, kMaps, 4>(load, rows, y, r0, C, m, lam);
  }
}

// The maps a row of a chain applies: those of its chain whose λ is not 0 (a map at λ = 0 is
// dropped, exactly the identity as in the reference), in order, and their chain positions.
struct ActiveChain {
  int count = 0;
  MapRow m[kMaxChain];
  int pos[kMaxChain];

  // Same maps in the same order (the strengths may differ: each row keeps its own).
  bool operator==(const ActiveChain& o) const {
    if (count != o.count) return false;
    for (int s = 0; s < count; ++s) {
      if (m[s].w != o.m[s].w) return false;
    }
    return true;
  }
};

// transport_row_range for a chain of a.S maps per row: each group of rows that apply the same
// active maps runs the chain of its A ≤ a.S maps.
template <bool kSupport, typename T, typename Load>
inline void transport_chain_range(const Load& load, T* y, int64_t C, int64_t r0, int64_t r1, const TransportArgs& a,
                                  int64_t rows_per_batch) {
  const auto active = [&](int64_t r) {
    const int64_t batch = r / rows_per_batch;
    ActiveChain chain;
    for (int64_t s = 0; s < a.S; ++s) {
      if (a.lam_for(batch, s) == 0.f) continue;
      chain.m[chain.count] = a.map_for(batch, s);
      chain.pos[chain.count++] = static_cast<int>(s);
    }
    return chain;
  };
  for_each_row_group(r0, r1, active, [&](const int64_t* rows, const ActiveChain* const* chains, int64_t n) {
    const ActiveChain& first = *chains[0];
    float lam[kRowGroup][kMaxChain];
    for (int64_t i = 0; i < n; ++i) {
      for (int s = 0; s < chains[i]->count; ++s) lam[i][s] = a.lam_for(rows[i] / rows_per_batch, chains[i]->pos[s]);
    }
    switch (first.count) {
      case 0: transport_group<kSupport, 0>(load, rows, n, y, r0, C, first.m, lam); break;
      case 1: transport_group<kSupport, 1>(load, rows, n, y, r0, C, first.m, lam); break;
      case 2: transport_group<kSupport, 2>(load, rows, n, y, r0, C, first.m, lam); break;
      case 3: transport_group<kSupport, 3>(load, rows, n, y, r0, C, first.m, lam); break;
      default: transport_group<kSupport, 4>(load, rows, n, y, r0, C, first.m, lam); break;
    }
  });
}

// Transports rows [r0, r1) given by load(r, c, k, a, b) (see transport_group) into y, where row r
// goes to y + (r − r0)·C. Rows that use the same map (chain) are transported together
// (for_each_row_group).
template <bool kSupport, typename T, typename Load>
inline void transport_row_range(const Load& load, T* y, int64_t C, int64_t r0, int64_t r1, const TransportArgs& a,
                                int64_t rows_per_batch) {
  if (a.chain) return transport_chain_range<kSupport>(load, y, C, r0, r1, a, rows_per_batch);
  // one map per row, applied at every λ (0 included: the reference's x + 0·(w x + b − x) is NaN
  // for x = ±inf, unlike a chain's dropped map)
  const auto map_of = [&](int64_t r) { return a.map_for(r / rows_per_batch).w; };
  for_each_row_group(r0, r1, map_of, [&](const int64_t* rows, auto, int64_t n) {
    const MapRow m = a.map_for(rows[0] / rows_per_batch);
    float lam[kRowGroup][kMaxChain];
    for (int64_t i = 0; i < n; ++i) lam[i][0] = a.lam_for(rows[i] / rows_per_batch);
    transport_group<kSupport, 1>(load, rows, n, y, r0, C, &m, lam);
  });
}

// A loader for transport_group: channels of row r of a [R, C] array with row stride sx, whose row
// `first` is at x.
template <typename T>
struct RowLoader {
  const T* x;
  int64_t sx, first;
  void operator()(int64_t r, int64_t c, int64_t k, Vec& a, Vec& b) const { load2(x + (r - first) * sx + c, k, a, b); }
  // kStep channels as (even, odd) (bf16_pairs.h; bfloat16 only).
  void pairs(int64_t r, int64_t c, Vec& a, Vec& b) const { load_bf16_pairs(x + (r - first) * sx + c, a, b); }
};

// Rows of the [R, C] view of x that belong to one batch row x[b] (per-row λ and maps).
inline int64_t rows_per_batch(const at::Tensor& x, int64_t R) {
  return x.dim() >= 2 ? std::max<int64_t>(1, R / x.size(0)) : 1;
}

// Calls fn(begin, end) on consecutive blocks covering [0, total) rows, in parallel, each block
// `block` rows or, for the last one, up to 2·block − 1.
//
// Why every block has at least two rows when total ≥ 2: an ATen reduction of a single row
// (output of one element) of ≥ GRAIN_SIZE values splits the row across threads when it runs
// outside an OpenMP region (two-pass reduction), while the reference reduces each row of a
// multi-row tensor whole. With two rows or more, ATen splits only across rows, so every row is
// summed in the same order as in the reference. A single row (total == 1) is reduced as the
// reference reduces its single row.
template <typename F>
inline void for_each_block(int64_t total, int64_t block, const F& fn) {
  if (total == 1) {
    fn(0, 1);
    return;
  }
  block = std::max<int64_t>(2, std::min(block, total));
  const int64_t num_blocks = total / block;
  at::parallel_for(0, num_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) {
      fn(i * block, i + 1 == num_blocks ? total : (i + 1) * block);
    }
  });
}

// Dispatches a kernel templated on the storage type T of x (float32, bfloat16, float16).
#define ACT_FAST_DISPATCH_FLOATS(dtype, name, ...)                                                  \
  [&] {                                                                                           \
    switch (dtype) {                                                                              \
      case at::kFloat: { using T = float; return __VA_ARGS__(); }                                 \
      case at::kBFloat16: { using T = at::BFloat16; return __VA_ARGS__(); }                       \
      case at::kHalf: { using T = at::Half; return __VA_ARGS__(); }                               \
      default:                                                                                    \
        TORCH_CHECK(false, name, ": the CPU kernels take float32, bfloat16 or float16 input, got ", \
                    dtype, " (float64 runs the pure-torch reference)");                           \
    }                                                                                             \
  }()

}  // namespace act_fast_cpu
