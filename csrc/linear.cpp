// Fused predict for small heads: widen a row into L1, take its C dot products, keep the
// arg-max; rows are split across threads in fixed blocks.
#include "linear.h"
#include "widen.h"

#include <cstdlib>
#include <cstring>
#include <vector>

namespace pydebias {

namespace {

// 64 partial sums, i.e. four independent vector accumulators with AVX-512 (eight with
// AVX2): a single accumulator waits out the FMA latency at every step (measured, the
// generic path on 500,000 x 1,024 float16 rows in memory, 2 classes: 91 -> 71 ms).
constexpr int64_t LANES = 64;

PYDEBIAS_CLONES
float dot(const float* __restrict a, const float* __restrict w, int64_t m) {
    float acc[LANES] = {0.0f};
    int64_t k = 0;
    for (; k + LANES <= m; k += LANES) {
#pragma omp simd
        for (int64_t j = 0; j < LANES; ++j) acc[j] += a[k + j] * w[k + j];
    }
    float s = 0.0f;
    for (; k < m; ++k) s += a[k] * w[k];
    for (int64_t j = 0; j < LANES; ++j) s += acc[j];
    return s;
}

// The class of the largest logit: ties to the lowest class, the first NaN wins (torch).
inline int64_t argmax_logits(const float* z, int64_t C) {
    int64_t best = 0;
    float top = z[0];
    for (int64_t c = 1; c < C; ++c)
        if (z[c] > top || (z[c] != z[c] && top == top)) {
            top = z[c];
            best = c;
        }
    return best;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define PYDEBIAS_ARGMAX16 1
// Up to four classes on 16-bit rows with AVX-512: each 16-bit vector is converted in
// registers (exact; float16 by the hardware, bfloat16 by a shift) and goes straight into
// two FMA chains per class, so a row is read once and never stored widened (measured,
// 2,000,000 x 1,024 float16 memmap, 2 classes: 0.26-0.29 s -> 0.09-0.14 s).
template <int C, int SRC>
__attribute__((target("avx512f"))) void argmax16_avx512(const uint16_t* x, int64_t n, int64_t m,
                                                         const float* w, const float* b, int64_t* out) {
#pragma omp parallel for schedule(static, 256)
    for (int64_t i = 0; i < n; ++i) {
        const uint16_t* row = x + i * m;
        __m512 acc[C][2];
        for (int c = 0; c < C; ++c) acc[c][0] = acc[c][1] = _mm512_setzero_ps();
        int64_t k = 0;
        for (; k + 32 <= m; k += 32) {
            const __m512 v0 = widen16_regs<SRC>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k)));
            const __m512 v1 = widen16_regs<SRC>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k + 16)));
            for (int c = 0; c < C; ++c) {
                acc[c][0] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(w + c * m + k), acc[c][0]);
                acc[c][1] = _mm512_fmadd_ps(v1, _mm512_loadu_ps(w + c * m + k + 16), acc[c][1]);
            }
        }
        for (; k < m; k += 16) {  // at most two steps, the last under a lane mask
            const int left = static_cast<int>(m - k < 16 ? m - k : 16);
            const __mmask16 lanes = static_cast<__mmask16>(left == 16 ? 0xffff : (1u << left) - 1);
            alignas(32) uint16_t tail[16] = {0};
            std::memcpy(tail, row + k, sizeof(uint16_t) * left);  // no read past the row
            const __m512 v = widen16_regs<SRC>(_mm256_load_si256(reinterpret_cast<const __m256i*>(tail)));
            for (int c = 0; c < C; ++c)
                acc[c][0] = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(lanes, w + c * m + k), acc[c][0]);
        }
        float z[C];
        for (int c = 0; c < C; ++c) z[c] = _mm512_reduce_add_ps(_mm512_add_ps(acc[c][0], acc[c][1])) + b[c];
        out[i] = argmax_logits(z, C);
    }
}

// The same with AVX2 + F16C + FMA (CPUs without AVX-512): eight lanes, four FMA chains
// per class; the generic path widened each row into L1 and read it back (measured, the
// 2,000,000 x 1,024 float16 memmap with AVX-512 hidden: see docs/performance.md).
__attribute__((target("avx2,f16c,fma"))) inline float hsum8(__m256 v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

template <int C, int SRC>
__attribute__((target("avx2,f16c,fma"))) void argmax16_avx2(const uint16_t* x, int64_t n, int64_t m,
                                                             const float* w, const float* b, int64_t* out) {
#pragma omp parallel for schedule(static, 256)
    for (int64_t i = 0; i < n; ++i) {
        const uint16_t* row = x + i * m;
        __m256 acc[C][4];
        for (int c = 0; c < C; ++c) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = _mm256_setzero_ps();
        int64_t k = 0;
        for (; k + 32 <= m; k += 32) {
            __m256 v[4];
            for (int u = 0; u < 4; ++u)
                v[u] = widen8_regs<SRC>(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k + 8 * u)));
            for (int c = 0; c < C; ++c)
                for (int u = 0; u < 4; ++u)
                    acc[c][u] = _mm256_fmadd_ps(v[u], _mm256_loadu_ps(w + c * m + k + 8 * u), acc[c][u]);
        }
        for (; k < m; k += 8) {  // at most four steps, the last with zeros past the row
            const int left = static_cast<int>(m - k < 8 ? m - k : 8);
            alignas(16) uint16_t tail[8] = {0};
            alignas(32) float wt[8] = {0.0f};
            std::memcpy(tail, row + k, sizeof(uint16_t) * left);  // no read past the row
            const __m256 vt = widen8_regs<SRC>(_mm_load_si128(reinterpret_cast<const __m128i*>(tail)));
            for (int c = 0; c < C; ++c) {
                std::memcpy(wt, w + c * m + k, sizeof(float) * left);  // nor past the weights
                acc[c][0] = _mm256_fmadd_ps(vt, _mm256_load_ps(wt), acc[c][0]);
            }
        }
        float z[C];
        for (int c = 0; c < C; ++c)
            z[c] = hsum8(_mm256_add_ps(_mm256_add_ps(acc[c][0], acc[c][1]), _mm256_add_ps(acc[c][2], acc[c][3])))
                   + b[c];
        out[i] = argmax_logits(z, C);
    }
}

template <int SRC>
bool argmax16(const uint16_t* x, int64_t n, int64_t m, const float* w, const float* b, int64_t C,
              int64_t* out, bool avx512) {
    switch (C * 2 + (avx512 ? 1 : 0)) {
        case 3: argmax16_avx512<1, SRC>(x, n, m, w, b, out); return true;
        case 5: argmax16_avx512<2, SRC>(x, n, m, w, b, out); return true;
        case 7: argmax16_avx512<3, SRC>(x, n, m, w, b, out); return true;
        case 9: argmax16_avx512<4, SRC>(x, n, m, w, b, out); return true;
        case 2: argmax16_avx2<1, SRC>(x, n, m, w, b, out); return true;
        case 4: argmax16_avx2<2, SRC>(x, n, m, w, b, out); return true;
        case 6: argmax16_avx2<3, SRC>(x, n, m, w, b, out); return true;
        case 8: argmax16_avx2<4, SRC>(x, n, m, w, b, out); return true;
        default: return false;
    }
}
#endif

}  // namespace

void linear_argmax(const void* x, Elem elem, int64_t n, int64_t m, const float* w, const float* b,
                   int64_t C, int64_t* out) {
    if (elem == Elem::F64) throw KernelError("linear_argmax: expects float32, float16 or bfloat16 rows");
    if (C < 1) throw KernelError("weight: the head has no classes");
#ifdef PYDEBIAS_ARGMAX16
    static const bool avx512 = cpu_has_avx512();  // read once: tests set the variable in a subprocess
    static const bool avx2 = cpu_has_f16c() && __builtin_cpu_supports("fma");
    if ((avx512 || avx2) && elem != Elem::F32) {
        const uint16_t* h = static_cast<const uint16_t*>(x);
        if (elem == Elem::F16 ? argmax16<1>(h, n, m, w, b, C, out, avx512)
                              : argmax16<2>(h, n, m, w, b, C, out, avx512))
            return;
    }
#endif
#pragma omp parallel
    {
        std::vector<float> row(elem == Elem::F32 ? 0 : m), logit;
#pragma omp for schedule(static, 256)
        for (int64_t i = 0; i < n; ++i) {
            const float* r;
            if (elem == Elem::F32) {
                r = static_cast<const float*>(x) + i * m;
            } else {
                widen_row(static_cast<const uint16_t*>(x) + i * m, elem, row.data(), m);
                r = row.data();
            }
            logit.resize(C);
            for (int64_t c = 0; c < C; ++c) logit[c] = dot(r, w + c * m, m) + b[c];
            out[i] = argmax_logits(logit.data(), C);
        }
    }
}

}  // namespace pydebias
