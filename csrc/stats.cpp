// act_fast_cpu::stats_update: folds x [rows, C] into the streaming statistics state of
// act_fast.ops.stats_reference (stats_update_ref): Chan-merged float64 moments, exact min / max,
// NaN / +Inf / -Inf counts and the centred log-bucket histogram (int32 pending counts).
//
// One read of x. The channels are split into blocks of kCols; at::parallel_for hands whole blocks
// to threads, so each thread owns its channels' histogram rows and master entries (no atomics).
// A block walks all kept rows in tiles of kTileRows (rows kept by row_mask only, found from the
// mask per tile, no index list), the next rows prefetched into L2:
//
// - pass 1, per row of the tile, vectorized along the channels: the finite mask, Σx (float64),
//   min and max of the finite values (float32, exact), and the histogram bucket of d = x − c (one
//   float32 subtraction, the key from d's bits with the channel's exponent offset: the integer
//   steps of bucket_index_ref, so the bucket is the reference's bit for bit), stored as an int32
//   index; after the tile, one scalar increment per value into the block's pending rows, in row
//   order (consecutive increments hit different channels' rows, so they do not wait on each
//   other). A non-finite value is bucketed as d = +inf (the overflow bucket) and taken back out
//   after the tile, when it is counted (only a tile that has one is scanned for them).
// - pass 2, over the same rows still in L1: Σe and Σe² of e = x − m, m = Σx / n, in float64: the
//   corrected two-pass tile moments.
// - then per channel: the tile's (n, mean = m + Σe / n, M2 = Σe² − (Σe)² / n) is Chan-merged into
//   the float64 master state (never Σx² − n·mean²), min / max and the counts added.
//
// Why the tile sums are float64 and not float32 (as the GPU kernel's): float32 squares of e
// underflow to 0 for channels of scale below ~1e-19 (all-MiniLM-L6-v2 has post-LayerNorm channels
// at 1e-32: 96 % of their variance lost) and overflow above ~1e19, and float32 sums leave the
// moments 1e-7 relative from the reference where merges of the same rows split differently should
// agree to 1e-12. On a CPU the float64 adds cost about a tenth of the update (the histogram
// increments dominate).
#include "common.h"

#include <cmath>
#include <limits>
#include <tuple>
#include <utility>

namespace act_fast_cpu {

namespace {

using IVec = at::vec::Vectorized<int32_t>;
static_assert(IVec::size() == kVec, "int32 and float vectors must have the same lanes");

// Channels of one block: one thread owns their histogram rows. 64 float32 values are 4 cache lines
// of a row; the block's hot buckets stay in L1/L2 while it walks the rows.
constexpr int64_t kCols = 64;
constexpr int64_t kNV = kCols / kVec;  // float vectors per row of a block
static_assert(kNV == 1 || kNV % 2 == 0, "a block holds one vector or whole load steps");
// Rows of a tile: re-read from L1 by pass 2; the float32 sums of a tile stay short.
constexpr int64_t kTileRows = 64;
// How many rows ahead of the current one the loads are prefetched.
constexpr int64_t kPrefetchRows = 8;

// Everything a block needs: input, calibration, histogram layout and master state.
struct StatsArgs {
  int64_t R = 0, C = 0, sr = 0;  // rows, channels, row stride of x (elements)
  const bool* mask = nullptr;    // [R] rows kept, or nullptr: all
  const float* centre = nullptr;
  std::vector<int32_t> key_base;  // [C] (E_lo + k + 127) << m, int32 as in the reference
  int32_t shift = 0, K = 0, zero = 0, B = 0;
  int64_t* count = nullptr;
  double* mean = nullptr;
  double* m2 = nullptr;
  double* vmin = nullptr;
  double* vmax = nullptr;
  int64_t* nan = nullptr;
  int64_t* pos_inf = nullptr;
  int64_t* neg_inf = nullptr;
  int32_t* hist = nullptr;  // [C, B]
};

// Fills rows[0, n) with the next kept rows from *cursor (at most `room`); returns n.
inline int64_t next_rows(const StatsArgs& a, int64_t* cursor, int64_t* rows, int64_t room) {
  int64_t n = 0, r = *cursor;
  if (a.mask == nullptr) {
    for (; r < a.R && n < room; ++r) rows[n++] = r;
  } else {
    for (; r < a.R && n < room; ++r) {
      if (a.mask[r]) rows[n++] = r;
    }
  }
  *cursor = r;
  return n;
}

template <typename T>
inline void prefetch_row(const T* p, int64_t w) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < w * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(c + b, 0, 2);
}

// Loads the kNV float vectors of one row of the block (lanes ≥ w are zero).
template <typename T>
inline void load_row(const T* p, int64_t w, Vec* v) {
  if constexpr (kNV == 1) {
    Vec unused;
    load2(p, std::min(w, kVec), v[0], unused);
  } else {
    for (int64_t s = 0; s < kNV / 2; ++s) {
      const int64_t k = w - s * kStep;
      if (k <= 0) {
        v[2 * s] = Vec(0.f);
        v[2 * s + 1] = Vec(0.f);
      } else {
        load2(p + s * kStep, std::min(k, kStep), v[2 * s], v[2 * s + 1]);
      }
    }
  }
}

using VecD = at::vec::Vectorized<double>;
constexpr int64_t kVecD = VecD::size();
static_assert(2 * kVecD == kVec, "a float vector converts to two double vectors");

// The lanes of v as two float64 vectors (exact).
inline void to_double(const Vec& v, VecD& lo, VecD& hi) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 f = v;
  lo = _mm512_cvtps_pd(_mm512_castps512_ps256(f));
  hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1)));
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256 f = v;
  lo = _mm256_cvtps_pd(_mm256_castps256_ps128(f));
  hi = _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1));
#else
  alignas(64) float f[kVec];
  alignas(64) double d[kVec];
  v.store(f);
  for (int64_t i = 0; i < kVec; ++i) d[i] = f[i];
  lo = VecD::loadu(d);
  hi = VecD::loadu(d + kVecD);
#endif
}

// Per-channel accumulators of one tile: Σx in float64 (lane 2v, 2v + 1 = float vector v's
// halves), min / max and the all-finite flags in float32.
struct TileSums {
  VecD sum[2 * kNV];
  Vec lo[kNV], hi[kNV], ok[kNV];

  TileSums() {
    const Vec inf(std::numeric_limits<float>::infinity());
    const Vec all = Vec(0.f) == Vec(0.f);  // every bit set
    for (int64_t v = 0; v < kNV; ++v) {
      sum[2 * v] = VecD(0.0);
      sum[2 * v + 1] = VecD(0.0);
      lo[v] = inf;
      hi[v] = -inf;
      ok[v] = all;
    }
  }
};

// The histogram side of a block: pass 1 over one row (finite mask, Σx, min, max and the row's
// bucket indices), and the increments.
struct BucketRow {
  Vec centre[kNV];
  IVec base[kNV], offset[kNV];  // key base, channel's row start + zero bucket
  IVec mag_mask, shift, lo, hi, sign_shift;
  int32_t* hist;              // the block's first histogram row
  const int32_t* key_base;    // the block's first channel's key base
  int64_t w;                  // channels in the block
  int32_t shift_bits, K, zero;

  BucketRow(const StatsArgs& a, int64_t j0, int64_t w_)
      : hist(a.hist + j0 * a.B), key_base(a.key_base.data() + j0), w(w_), shift_bits(a.shift), K(a.K), zero(a.zero) {
    alignas(64) float c[kCols] = {};
    alignas(64) int32_t kb[kCols] = {}, off[kCols];
    std::memcpy(c, a.centre + j0, w * sizeof(float));
    std::memcpy(kb, a.key_base.data() + j0, w * sizeof(int32_t));
    for (int64_t j = 0; j < kCols; ++j) off[j] = static_cast<int32_t>(j * a.B) + a.zero;
    for (int64_t v = 0; v < kNV; ++v) {
      centre[v] = Vec::loadu(c + v * kVec);
      base[v] = IVec::loadu(kb + v * kVec);
      offset[v] = IVec::loadu(off + v * kVec);
    }
    mag_mask = IVec(0x7FFFFFFF);
    shift = IVec(a.shift);
    lo = IVec(-1);
    hi = IVec(a.K);
    sign_shift = IVec(31);
  }

  // The bucket pass 1 gives a non-finite value of channel j0 + j (d = +inf), as the vector code
  // computes it: the overflow bucket for any offset in HistogramParams.exp_offset_range.
  int32_t of_inf(int64_t j) const {
    const int32_t magnitude = 0x7F800000 >> shift_bits;
    const int32_t key = static_cast<int32_t>(static_cast<uint32_t>(magnitude) - static_cast<uint32_t>(key_base[j]));
    return zero + std::clamp(key, -1, K) + 1;
  }

  // Pass 1 over one row: accumulates into t, writes the row's kCols bucket indices (relative to
  // the block's first histogram row) to idx.
  void operator()(const Vec* x, TileSums& t, int32_t* idx) const {
    const Vec inf(std::numeric_limits<float>::infinity());
    for (int64_t v = 0; v < kNV; ++v) {
      const Vec fin = x[v].abs() < inf;
      t.ok[v] = t.ok[v] & fin;
      VecD s0, s1;
      to_double(x[v] & fin, s0, s1);
      t.sum[2 * v] = t.sum[2 * v] + s0;
      t.sum[2 * v + 1] = t.sum[2 * v + 1] + s1;
      t.lo[v] = at::vec::minimum(t.lo[v], Vec::blendv(inf, x[v], fin));
      t.hi[v] = at::vec::maximum(t.hi[v], Vec::blendv(-inf, x[v], fin));
      // bucket_index_ref: d = fl32(x) − c; key = ((bits & 0x7FFFFFFF) >> (23 − m)) − base,
      // clamped to [−1, K], + 1; bucket = zero ± key by d's sign (non-finite: d = +inf)
      const Vec d = Vec::blendv(inf, x[v] - centre[v], fin);
      const IVec bits = at::vec::cast<int32_t>(d);
      const IVec key = at::vec::clamp(((bits & mag_mask) >> shift) - base[v], lo, hi) + IVec(1);
      const IVec sign = bits >> sign_shift;  // 0 or −1
      (offset[v] + ((key ^ sign) - sign)).store(idx + v * kVec);
    }
  }

  // The increments of n rows of indices (kCols per row, the first w of each are channels).
  void scatter(const int32_t* idx, int64_t n) const {
    if (w == kCols) {
      for (int64_t i = 0; i < n * kCols; ++i) ++hist[idx[i]];
    } else {
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < w; ++j) ++hist[idx[i * kCols + j]];
      }
    }
  }
};

template <typename T>
void stats_block(const StatsArgs& a, const T* xp, int64_t j0) {
  const int64_t w = std::min(kCols, a.C - j0);
  const T* x0 = xp + j0;
  const BucketRow bucket(a, j0, w);
  const Vec inf(std::numeric_limits<float>::infinity());
  // rows of the current tile, then those of the next (prefetched while this one runs)
  int64_t rows[2 * kTileRows];
  alignas(64) int32_t idx[kTileRows * kCols];  // the tile's bucket indices, counted after pass 1
  int64_t cursor = 0;
  int64_t n = next_rows(a, &cursor, rows, kTileRows);
  Vec x[kNV];
  while (n > 0) {
    const int64_t n_next = next_rows(a, &cursor, rows + n, kTileRows);
    // pass 1
    TileSums t;
    for (int64_t i = 0; i < n; ++i) {
      if (i + kPrefetchRows < n + n_next) prefetch_row(x0 + rows[i + kPrefetchRows] * a.sr, w);
      load_row(x0 + rows[i] * a.sr, w, x);
      bucket(x, t, idx + i * kCols);
    }
    bucket.scatter(idx, n);
    bool bad = false;
    for (int64_t v = 0; v < kNV; ++v) bad |= t.ok[v].zero_mask() != 0;
    // per channel counts of the tile; non-finite values counted and taken out of the histogram
    alignas(64) float finite[kCols];
    int64_t nan[kCols] = {}, pinf[kCols] = {}, ninf[kCols] = {};
    if (bad) {
      alignas(64) float row[kCols];
      for (int64_t i = 0; i < n; ++i) {
        load_row(x0 + rows[i] * a.sr, w, x);
        for (int64_t v = 0; v < kNV; ++v) x[v].store(row + v * kVec);
        for (int64_t j = 0; j < w; ++j) {
          nan[j] += std::isnan(row[j]);
          pinf[j] += row[j] == std::numeric_limits<float>::infinity();
          ninf[j] += row[j] == -std::numeric_limits<float>::infinity();
        }
      }
      for (int64_t j = 0; j < kCols; ++j) {
        const int64_t bad_j = j < w ? nan[j] + pinf[j] + ninf[j] : 0;
        if (bad_j) a.hist[(j0 + j) * a.B + bucket.of_inf(j)] -= static_cast<int32_t>(bad_j);
        finite[j] = static_cast<float>(n - bad_j);
      }
    } else {
      std::fill(finite, finite + kCols, static_cast<float>(n));
    }
    // pass 2: Σe, Σe² of e = x − m, m = Σx / n (float64)
    alignas(64) double m[kCols], e1[kCols], e2[kCols];
    for (int64_t v = 0; v < 2 * kNV; ++v) t.sum[v].store(m + v * kVecD);
    for (int64_t j = 0; j < kCols; ++j) m[j] = finite[j] > 0 ? m[j] / finite[j] : 0.0;
    {
      VecD vm[2 * kNV], s1[2 * kNV], s2[2 * kNV];
      for (int64_t v = 0; v < 2 * kNV; ++v) {
        vm[v] = VecD::loadu(m + v * kVecD);
        s1[v] = VecD(0.0);
        s2[v] = VecD(0.0);
      }
      const VecD infd(std::numeric_limits<double>::infinity());
      for (int64_t i = 0; i < n; ++i) {
        load_row(x0 + rows[i] * a.sr, w, x);
        for (int64_t v = 0; v < kNV; ++v) {
          VecD xd[2];
          to_double(x[v], xd[0], xd[1]);
          for (int64_t h = 0; h < 2; ++h) {
            VecD e = xd[h] - vm[2 * v + h];
            if (bad) e = e & (xd[h].abs() < infd);
            s1[2 * v + h] = s1[2 * v + h] + e;
            s2[2 * v + h] = s2[2 * v + h] + e * e;
          }
        }
      }
      for (int64_t v = 0; v < 2 * kNV; ++v) {
        s1[v].store(e1 + v * kVecD);
        s2[v].store(e2 + v * kVecD);
      }
    }
    // merge into the master state, per channel
    alignas(64) float flo[kCols], fhi[kCols];
    for (int64_t v = 0; v < kNV; ++v) {
      t.lo[v].store(flo + v * kVec);
      t.hi[v].store(fhi + v * kVec);
    }
    for (int64_t j = 0; j < w; ++j) {
      const int64_t c = j0 + j;
      const int64_t nb = static_cast<int64_t>(finite[j]);
      if (nb > 0) {
        const double nbf = static_cast<double>(nb);
        const double mean_b = m[j] + e1[j] / nbf;
        const double m2_b = std::max(0.0, e2[j] - e1[j] * e1[j] / nbf);
        // chan_merge of stats_reference, in its order of operations
        const double na = static_cast<double>(a.count[c]), nf = na + nbf;
        const double delta = mean_b - a.mean[c];
        a.mean[c] = a.mean[c] + delta * (nbf / nf);
        a.m2[c] = a.m2[c] + m2_b + delta * delta * (na * nbf / nf);
        a.count[c] += nb;
        a.vmin[c] = std::min(a.vmin[c], static_cast<double>(flo[j]));
        a.vmax[c] = std::max(a.vmax[c], static_cast<double>(fhi[j]));
      }
      a.nan[c] += nan[j];
      a.pos_inf[c] += pinf[j];
      a.neg_inf[c] += ninf[j];
    }
    // the next tile's rows move to the front
    std::copy(rows + n, rows + n + n_next, rows);
    n = n_next;
  }
}

void check_state(const at::Tensor& t, at::ScalarType dtype, int64_t C, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous() && t.dim() == 1 && t.size(0) == C,
              "act_fast_cpu::stats_update: ", name, " must be a contiguous CPU ", dtype, " tensor [", C, "], got ",
              t.scalar_type(), " ", t.sizes());
}

}  // namespace

void stats_update_cpu(const at::Tensor& x, const std::optional<at::Tensor>& row_mask, const at::Tensor& count,
                      const at::Tensor& mean, const at::Tensor& m2, const at::Tensor& vmin, const at::Tensor& vmax,
                      const at::Tensor& nan, const at::Tensor& pos_inf, const at::Tensor& neg_inf,
                      const at::Tensor& hist, const at::Tensor& centre, const at::Tensor& exp_offset,
                      int64_t mantissa_bits, int64_t exp_min, int64_t exp_max) {
  TORCH_CHECK(x.dim() == 2, "act_fast_cpu::stats_update: x must be [rows, C], got shape ", x.sizes());
  const int64_t R = x.size(0), C = x.size(1);
  TORCH_CHECK(x.stride(1) == 1 || C == 1, "act_fast_cpu::stats_update: x must have unit channel stride (got strides ",
              x.strides(), ")");
  TORCH_CHECK(mantissa_bits >= 0 && mantissa_bits <= 23 && -126 <= exp_min && exp_min < exp_max && exp_max <= 127,
              "act_fast_cpu::stats_update: impossible histogram parameters (", mantissa_bits, ", ", exp_min, ", ",
              exp_max, ")");
  const int64_t K = (exp_max - exp_min) << mantissa_bits, B = 2 * K + 3;
  TORCH_CHECK(B * kCols < std::numeric_limits<int32_t>::max(), "act_fast_cpu::stats_update: ", B,
              " buckets per channel is more than this kernel indexes (", std::numeric_limits<int32_t>::max() / kCols,
              ")");
  check_state(count, at::kLong, C, "count");
  check_state(nan, at::kLong, C, "nan");
  check_state(pos_inf, at::kLong, C, "pos_inf");
  check_state(neg_inf, at::kLong, C, "neg_inf");
  check_state(mean, at::kDouble, C, "mean");
  check_state(m2, at::kDouble, C, "m2");
  check_state(vmin, at::kDouble, C, "vmin");
  check_state(vmax, at::kDouble, C, "vmax");
  check_state(centre, at::kFloat, C, "centre");
  check_state(exp_offset, at::kInt, C, "exp_offset");
  TORCH_CHECK(hist.scalar_type() == at::kInt && hist.is_contiguous() && hist.dim() == 2 && hist.size(0) == C &&
                  hist.size(1) == B,
              "act_fast_cpu::stats_update: hist must be a contiguous int32 tensor [", C, ", ", B, "], got ",
              hist.scalar_type(), " ", hist.sizes());
  at::Tensor mask;
  if (row_mask.has_value() && row_mask->defined()) {
    mask = row_mask->to(at::kBool).contiguous();
    TORCH_CHECK(mask.dim() == 1 && mask.size(0) == R, "act_fast_cpu::stats_update: row_mask must be [", R, "], got ",
                mask.sizes());
  }
  if (R == 0 || C == 0) return;

  StatsArgs a;
  a.R = R;
  a.C = C;
  a.sr = x.stride(0);
  a.mask = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  a.centre = centre.data_ptr<float>();
  a.shift = static_cast<int32_t>(23 - mantissa_bits);
  a.K = static_cast<int32_t>(K);
  a.zero = static_cast<int32_t>(K + 1);
  a.B = static_cast<int32_t>(B);
  a.key_base.resize(C);
  const int32_t* k = exp_offset.data_ptr<int32_t>();
  for (int64_t c = 0; c < C; ++c) {
    // int32 wrap-around as the reference's int32 tensor arithmetic
    const uint32_t e = static_cast<uint32_t>(static_cast<int32_t>(exp_min + 127) + k[c]);
    a.key_base[c] = static_cast<int32_t>(e << mantissa_bits);
  }
  a.count = count.data_ptr<int64_t>();
  a.mean = mean.data_ptr<double>();
  a.m2 = m2.data_ptr<double>();
  a.vmin = vmin.data_ptr<double>();
  a.vmax = vmax.data_ptr<double>();
  a.nan = nan.data_ptr<int64_t>();
  a.pos_inf = pos_inf.data_ptr<int64_t>();
  a.neg_inf = neg_inf.data_ptr<int64_t>();
  a.hist = hist.data_ptr<int32_t>();
  const int64_t blocks = (C + kCols - 1) / kCols;
  ACT_FAST_DISPATCH_FLOATS(x.scalar_type(), "stats_update", [&] {
    const T* xp = x.data_ptr<T>();
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) stats_block<T>(a, xp, b * kCols);
    });
  });
}

}  // namespace act_fast_cpu
