// Widening of 16-bit floats to float32. torch and numpy convert float16 on the CPU at
// roughly 0.3-0.5 GB/s here (measured: 0.26-0.45 s for 100M elements), slower than
// reading the data, which made every float16 memmap pass conversion-bound.
#include "widen.h"

#include <algorithm>
#include <cstdlib>

namespace pydebias {

namespace {

inline float as_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline uint32_t as_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

// Exponent and mantissa moved into float position read as a float 2^-112 times too
// small (for subnormal halves too: the multiply renormalises them); all-ones
// exponents (inf, NaN) are patched to the float all-ones exponent.
PYDEBIAS_CLONES
void half_row(const uint16_t* __restrict in, float* __restrict out, int64_t n) {
    const float scale = as_float(0x77800000u);  // 2^112
    for (int64_t i = 0; i < n; ++i) {
        const uint32_t h = in[i];
        const uint32_t em = h & 0x7fffu;
        const uint32_t sign = (h & 0x8000u) << 16;
        const uint32_t finite = as_bits(as_float(em << 13) * scale);
        const uint32_t special = 0x7f800000u | (em << 13);
        out[i] = as_float(sign | (em >= 0x7c00u ? special : finite));
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define PYDEBIAS_F16C 1
// The hardware conversion (vcvtph2ps) is exact for every finite and infinite half but
// quiets signalling NaNs; NaN lanes (rare) are patched to the bit-moved pattern of
// half_row, so the result is that of half_row for every input. half_row as compiled
// (target_clones) ran 0.58 ns per element on 2 threads here, in cache; this 0.057 ns.
__attribute__((target("avx512f"))) void half_row_avx512(const uint16_t* __restrict in,
                                                        float* __restrict out, int64_t n) {
    const __m512i low15 = _mm512_set1_epi32(0x7fff), inf = _mm512_set1_epi32(0x7c00);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i));
        __m512 f = _mm512_cvtph_ps(h);
        const __m512i h32 = _mm512_cvtepu16_epi32(h);
        const __m512i em = _mm512_and_si512(h32, low15);
        const __mmask16 nan = _mm512_cmpgt_epu32_mask(em, inf);
        if (nan) {
            const __m512i bits = _mm512_or_si512(
                _mm512_slli_epi32(_mm512_andnot_si512(low15, h32), 16),
                _mm512_or_si512(_mm512_set1_epi32(0x7f800000), _mm512_slli_epi32(em, 13)));
            f = _mm512_mask_mov_ps(f, nan, _mm512_castsi512_ps(bits));
        }
        _mm512_storeu_ps(out + i, f);
    }
    if (i < n) half_row(in + i, out + i, n - i);
}

__attribute__((target("avx2,f16c"))) void half_row_f16c(const uint16_t* __restrict in,
                                                         float* __restrict out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
        // NaN lanes: redo the eight with half_row (rare)
        const __m128i em = _mm_and_si128(h, _mm_set1_epi16(0x7fff));
        if (_mm_movemask_epi8(_mm_cmpgt_epi16(em, _mm_set1_epi16(0x7c00)))) half_row(in + i, out + i, 8);
    }
    if (i < n) half_row(in + i, out + i, n - i);
}

// Features read once (called per row): tests set PYDEBIAS_NO_AVX512 in a subprocess.
void half_row_fast(const uint16_t* in, float* out, int64_t n) {
    static const int kind = cpu_has_avx512() ? 2 : cpu_has_f16c() ? 1 : 0;
    if (kind == 2) half_row_avx512(in, out, n);
    else if (kind == 1) half_row_f16c(in, out, n);
    else half_row(in, out, n);
}
#endif

PYDEBIAS_CLONES
void bf16_row(const uint16_t* __restrict in, float* __restrict out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = as_float(static_cast<uint32_t>(in[i]) << 16);
}

}  // namespace

void widen_row(const uint16_t* in, Elem elem, float* out, int64_t n) {
    if (elem == Elem::F16)
#ifdef PYDEBIAS_F16C
        half_row_fast(in, out, n);
#else
        half_row(in, out, n);
#endif
    else if (elem == Elem::BF16)
        bf16_row(in, out, n);
    else
        throw KernelError("widen: expects float16 or bfloat16 input");
}

void widen(const uint16_t* in, Elem elem, float* out, int64_t n) {
    if (elem != Elem::F16 && elem != Elem::BF16) throw KernelError("widen: expects float16 or bfloat16 input");
    const int64_t block = 1 << 16;
    const int64_t nb = (n + block - 1) / block;
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t b = 0; b < nb; ++b) {
        const int64_t s = b * block;
        widen_row(in + s, elem, out + s, std::min(block, n - s));
    }
}

}  // namespace pydebias
