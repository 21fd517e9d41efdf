#pragma once
#include "common.h"

namespace pydebias {

// 16-bit floats (IEEE half or bfloat16) -> float32, exactly, every bit pattern included
// (subnormals, +-inf, NaN payloads). Branch-free, so the compiler vectorises it.
void widen_row(const uint16_t* in, Elem elem, float* out, int64_t n);

// The same over n elements with OpenMP (for large row blocks).
void widen(const uint16_t* in, Elem elem, float* out, int64_t n);

#if defined(__x86_64__) && defined(__GNUC__)
// In registers, for kernels that read 16-bit rows raw: SRC 1 = float16 (the hardware
// conversion: exact, but a signalling NaN comes back quiet, which a compare or a sum
// cannot tell apart), SRC 2 = bfloat16 (a shift, exact). 16 lanes with AVX-512, 8 with
// AVX2 + F16C.
template <int SRC>
__attribute__((target("avx512f"))) inline __m512 widen16_regs(__m256i h) {
    if constexpr (SRC == 1) return _mm512_cvtph_ps(h);
    else return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <int SRC>
__attribute__((target("avx2,f16c"))) inline __m256 widen8_regs(__m128i h) {
    if constexpr (SRC == 1) return _mm256_cvtph_ps(h);
    else return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
#endif

}  // namespace pydebias
