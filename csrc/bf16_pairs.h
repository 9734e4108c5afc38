// bfloat16 rows in "lane pairs": a faster load / store of kStep bfloat16 values for the
// element-wise transport of channels-last rows (AVX2 and AVX512 builds).
//
// kStep bfloat16 values are kVec 32-bit words; each word holds an even channel in its low half and
// the following odd channel in its high half. Loading them as (word << 16, word & 0xFFFF0000) gives
// the even and the odd channels as float32 without any shuffle, and a store puts them back with one
// shift and one blend; the map values are deinterleaved to the same (even, odd) order once per chunk
// and shared by up to kRowGroup rows. The rounding to bfloat16 is torch's (nearest even, in integer
// arithmetic on the float's bits: (bits + 0x7FFF + lsb) >> 16); a NaN in either vector sends the
// store to torch's own conversion (NaN becomes 0xFFFF there), so results are bit-identical to
// at::vec::convert_from_float<BFloat16>, which store2 uses.
//
// Why: on AVX2 torch's conversion (extract, zero-extend, shift on load; mask, blend, pack and a
// cross-lane permute on store) cost about a third of the transport's time per element.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <type_traits>
#include <utility>

namespace act_fast_cpu {

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
constexpr bool kBf16Pairs = true;
#else
constexpr bool kBf16Pairs = false;
#endif

// The n = kStep floats at p as (even channels, odd channels).
inline void load_float_pairs(const float* p, at::vec::Vectorized<float>& even, at::vec::Vectorized<float>& odd) {
  std::tie(even, odd) = at::vec::deinterleave2(at::vec::Vectorized<float>::loadu(p),
                                               at::vec::Vectorized<float>::loadu(p + at::vec::Vectorized<float>::size()));
}

#if defined(CPU_CAPABILITY_AVX512)

inline void load_bf16_pairs(const at::BFloat16* p, at::vec::Vectorized<float>& even, at::vec::Vectorized<float>& odd) {
  const __m512i w = _mm512_loadu_si512(reinterpret_cast<const void*>(p));
  even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  odd = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u))));
}

// (bits + 0x7FFF + lsb): the rounded value in the high half of each word.
inline __m512i bf16_rounded_words(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  return _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), lsb);
}

inline bool store_bf16_pairs_fast(at::BFloat16* p, const at::vec::Vectorized<float>& even,
                                  const at::vec::Vectorized<float>& odd) {
  const __m512 e = even, o = odd;
  if (_mm512_cmp_ps_mask(e, o, _CMP_UNORD_Q) != 0) return false;
  const __m512i words = _mm512_mask_blend_epi16(0xAAAAAAAAu, _mm512_srli_epi32(bf16_rounded_words(e), 16),
                                                bf16_rounded_words(o));
  _mm512_storeu_si512(reinterpret_cast<void*>(p), words);
  return true;
}

#elif defined(CPU_CAPABILITY_AVX2)

inline void load_bf16_pairs(const at::BFloat16* p, at::vec::Vectorized<float>& even, at::vec::Vectorized<float>& odd) {
  const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  even = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  odd = _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(static_cast<int32_t>(0xFFFF0000u))));
}

inline __m256i bf16_rounded_words(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  return _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7FFF)), lsb);
}

inline bool store_bf16_pairs_fast(at::BFloat16* p, const at::vec::Vectorized<float>& even,
                                  const at::vec::Vectorized<float>& odd) {
  const __m256 e = even, o = odd;
  const __m256 nan = _mm256_cmp_ps(e, o, _CMP_UNORD_Q);
  if (!_mm256_testz_ps(nan, nan)) return false;
  const __m256i words = _mm256_blend_epi16(_mm256_srli_epi32(bf16_rounded_words(e), 16), bf16_rounded_words(o), 0xAA);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), words);
  return true;
}

#else

inline void load_bf16_pairs(const at::BFloat16*, at::vec::Vectorized<float>&, at::vec::Vectorized<float>&) {}
inline bool store_bf16_pairs_fast(at::BFloat16*, const at::vec::Vectorized<float>&, const at::vec::Vectorized<float>&) {
  return false;
}

#endif

// Stores kStep channels held as (even, odd) at p, rounded to nearest even.
inline void store_bf16_pairs(at::BFloat16* p, const at::vec::Vectorized<float>& even, const at::vec::Vectorized<float>& odd) {
  if (store_bf16_pairs_fast(p, even, odd)) return;
  const auto natural = at::vec::interleave2(even, odd);
  at::vec::convert_from_float<at::BFloat16>(natural.first, natural.second).store(p);
}

}  // namespace act_fast_cpu
