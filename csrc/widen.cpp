// Widening of 16-bit floats to float32. torch and numpy convert float16 on the CPU at
// roughly 0.3-0.5 GB/s here (measured: 0.26-0.45 s for 100M elements), slower than
// reading the data, which made every float16 memmap pass conversion-bound.
#include "widen.h"

#include <algorithm>

#ifdef _OPENMP
#include <omp.h>
#endif

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

PYDEBIAS_CLONES
void bf16_row(const uint16_t* __restrict in, float* __restrict out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = as_float(static_cast<uint32_t>(in[i]) << 16);
}

}  // namespace

void widen_row(const uint16_t* in, Elem elem, float* out, int64_t n) {
    if (elem == Elem::F16)
        half_row(in, out, n);
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
