// grouped quantiles: exact per (group, column) order statistics without sorting whole columns.
//
// Sample-bracketed selection (see grouped_quantiles.h for the three phases). Memory
// access of the one full pass (phase 2): rows go in pieces of about n / 16 that the
// threads take dynamically (one parallel region), and each piece in blocks of 64 rows
// (128 KB at 512 float32 columns, in L2), the next block prefetched. Within a block the
// rows of one group go four at a time against that group's bracket and counter rows
// (2 bounds + 2-3 int32 counters per column, in L1/L2). With AVX-512 the compares write mask registers, the counters
// take masked adds and the values inside their bracket (about 3 % with the default
// samples) are compressed with their column numbers onto a short list, appended to the
// piece's sub-region of the caller's keep buffer in one loop (no branch per flag bit).
// A value that does not fit its piece's share spills to a per-thread list that the
// merge moves into the region's free space. The fused entry point
// (moments_quantile_collect) also adds each batch of four rows into the grouped moments
// while the rows are in L1 (with AVX-512, in the same column loop as the counting):
// one read of X for grouped moments and grouped quantiles.
#include "grouped_quantiles.h"
#include "grouped_moments.h"
#include "widen.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

namespace pydebias {

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(PYDEBIAS_NO_AVX512_BUILD)
#define PYDEBIAS_K2_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYDEBIAS_K2_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PYDEBIAS_K2_CLONES
#endif

int num_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int thread_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// The per-row counting loop, vectorised: for one row of one group at one level,
// a += v < lo, e += v == mass, and the keep flag !(v < lo) & !(v > hi) & !(v == mass)
// -- so a NaN is always kept, and found there. The count not above hi is not kept: it
// is a + e + the values kept (NaN included), which the merge has, so it costs no add
// per element; where a region overflowed its values are lost and the cell is a miss.
template <typename T>
inline __attribute__((always_inline)) void row_count_impl(
    const T* __restrict v, const T* __restrict lo, const T* __restrict hi,
    const T* __restrict mass, int32_t* __restrict a,
    int32_t* __restrict e, uint8_t* __restrict flag, int64_t m) {
    for (int64_t c = 0; c < m; ++c) {
        const T x = v[c];
        const bool below = x < lo[c], upto = !(x > hi[c]), at = x == mass[c];
        a[c] += below;
        e[c] += at;
        flag[c] = static_cast<uint8_t>(!below & upto & !at);
    }
}

PYDEBIAS_K2_CLONES
void row_count_f32(const float* v, const float* lo, const float* hi, const float* mass, int32_t* a,
                   int32_t* e, uint8_t* flag, int64_t m) {
    row_count_impl(v, lo, hi, mass, a, e, flag, m);
}

PYDEBIAS_K2_CLONES
void row_count_f64(const double* v, const double* lo, const double* hi, const double* mass,
                   int32_t* a, int32_t* e, uint8_t* flag, int64_t m) {
    row_count_impl(v, lo, hi, mass, a, e, flag, m);
}

inline void row_count(const float* v, const float* lo, const float* hi, const float* mass,
                      int32_t* a, int32_t* e, uint8_t* flag, int64_t m) {
    row_count_f32(v, lo, hi, mass, a, e, flag, m);
}
inline void row_count(const double* v, const double* lo, const double* hi, const double* mass,
                      int32_t* a, int32_t* e, uint8_t* flag, int64_t m) {
    row_count_f64(v, lo, hi, mass, a, e, flag, m);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define PYDEBIAS_QUANTILE_AVX2 1
// Eight columns of a row as floats: float rows (SRC 0), or raw float16 (1, F16C) /
// bfloat16 (2, a shift) rows converted in registers, exactly.
template <int SRC>
__attribute__((target("avx2,f16c"))) inline __m256 load8(const float* row, int64_t c) {
    if constexpr (SRC == 0) {
        return _mm256_loadu_ps(row + c);
    } else {
        return widen8_regs<SRC>(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(row) + c)));
    }
}

// Column c of a row as a float (see load8).
template <int SRC>
inline float load1(const float* row, int64_t c) {
    if constexpr (SRC == 0) {
        return row[c];
    } else {
        float v;
        widen_row(reinterpret_cast<const uint16_t*>(row) + c, SRC == 1 ? Elem::F16 : Elem::BF16, &v, 1);
        return v;
    }
}

// NR (1..4) rows of one group against one bracket row with AVX2: the counters are
// loaded and stored once per NR rows, and the keep test becomes one bit per column
// (movemask) in `bits` (row j at bits + j * mb), so the append loop scans 64 columns
// per word. Same semantics as row_count_impl. SRC: as load8 (16-bit rows read raw, not
// widened into a block first: one read of the rows instead of two).
template <int NR, bool MASS, int SRC = 0>
__attribute__((target("avx2,f16c"))) void rows_avx2(const float* const* x, const float* __restrict lo,
                                               const float* __restrict hi,
                                               const float* __restrict mass,
                                               int32_t* __restrict a,
                                               int32_t* __restrict e, uint8_t* __restrict bits,
                                               int64_t mb, int64_t m, const float* const* pf) {
    const float* xs[4];
    const float* ps[4];
    for (int j = 0; j < NR; ++j) {
        xs[j] = x[j];
        ps[j] = pf[j];
    }
    int64_t c = 0;
    for (; c + 8 <= m; c += 8) {
        if ((c & 15) == 0)  // next block's lines, spread as in step_avx512
            for (int j = 0; j < NR; ++j) _mm_prefetch(reinterpret_cast<const char*>(ps[j] + c), _MM_HINT_T0);
        const __m256 l = _mm256_loadu_ps(lo + c), h = _mm256_loadu_ps(hi + c),
                     w = _mm256_loadu_ps(mass + c);
        __m256i ca = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + c));
        __m256i ce = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e + c));
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) {
            const __m256 v = load8<SRC>(xs[j], c);
            const __m256 below = _mm256_cmp_ps(v, l, _CMP_LT_OQ);
            const __m256 upto = _mm256_cmp_ps(v, h, _CMP_NGT_UQ);  // v <= hi, or NaN
            ca = _mm256_sub_epi32(ca, _mm256_castps_si256(below));
            __m256 out = below;
            if (MASS) {  // rows with no point mass in any column skip this compare
                const __m256 at = _mm256_cmp_ps(v, w, _CMP_EQ_OQ);
                ce = _mm256_sub_epi32(ce, _mm256_castps_si256(at));
                out = _mm256_or_ps(out, at);
            }
            const __m256 keep = _mm256_andnot_ps(out, upto);
            bits[j * mb + (c >> 3)] = static_cast<uint8_t>(_mm256_movemask_ps(keep));
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(a + c), ca);
        if (MASS) _mm256_storeu_si256(reinterpret_cast<__m256i*>(e + c), ce);
    }
    if (c < m) {
        for (int j = 0; j < NR; ++j) bits[j * mb + (c >> 3)] = 0;
        for (; c < m; ++c)
            for (int j = 0; j < NR; ++j) {
                const float v = load1<SRC>(xs[j], c);
                const bool below = v < lo[c], upto = !(v > hi[c]), at = v == mass[c];
                a[c] += below;
                e[c] += at;
                bits[j * mb + (c >> 3)] |= static_cast<uint8_t>((!below & upto & !at) << (c & 7));
            }
    }
}

// The same with AVX-512 (16 columns a step): the compares write mask registers and the
// counters take masked adds. The values to keep are compressed (in registers) with
// their column numbers onto a list, (lcol, lval), so the caller appends them in one
// loop of known length: walking flag bits instead costs a mispredicted branch per kept
// value (measured: the append then took longer than all the counting). The last
// partial step runs under a lane mask. Returns the list length (at most NR * m; the
// list needs 16 entries of slack).
// grouped moments accumulators of one group for the fused pass (shift, s1, s2, mn, mx rows).
struct MomentRow {
    const double* shift;
    double *s1, *s2, *mn, *mx;
};

// Columns 8H..8H+7 of 16 floats, widened to double.
template <int H>
__attribute__((target("avx512f"))) inline __m512d widen_half(__m512 f) {
    if constexpr (H == 0) return _mm512_cvtps_pd(_mm512_castps512_ps256(f));
    else return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1)));
}

template <int H>
__attribute__((target("avx512f"))) inline void moments4_half(const __m512* v, __m512 l, __m512 h,
                                                             const MomentRow& mrow, int64_t c, __mmask8 k) {
    const int64_t cc = c + 8 * H;
    const __m512d s = _mm512_maskz_loadu_pd(k, mrow.shift + cc);
    const __m512d d0 = _mm512_sub_pd(widen_half<H>(v[0]), s), d1 = _mm512_sub_pd(widen_half<H>(v[1]), s),
                  d2 = _mm512_sub_pd(widen_half<H>(v[2]), s), d3 = _mm512_sub_pd(widen_half<H>(v[3]), s);
    const __m512d sum = _mm512_add_pd(_mm512_add_pd(d0, d1), _mm512_add_pd(d2, d3));
    const __m512d sq = _mm512_add_pd(_mm512_fmadd_pd(d0, d0, _mm512_mul_pd(d1, d1)),
                                     _mm512_fmadd_pd(d2, d2, _mm512_mul_pd(d3, d3)));
    _mm512_mask_storeu_pd(mrow.s1 + cc, k, _mm512_add_pd(_mm512_maskz_loadu_pd(k, mrow.s1 + cc), sum));
    _mm512_mask_storeu_pd(mrow.s2 + cc, k, _mm512_add_pd(_mm512_maskz_loadu_pd(k, mrow.s2 + cc), sq));
    // lo = l < lo ? l : lo is min_pd(l, lo); hi = h > hi ? h : hi is max_pd(h, hi)
    _mm512_mask_storeu_pd(mrow.mn + cc, k, _mm512_min_pd(widen_half<H>(l), _mm512_maskz_loadu_pd(k, mrow.mn + cc)));
    _mm512_mask_storeu_pd(mrow.mx + cc, k, _mm512_max_pd(widen_half<H>(h), _mm512_maskz_loadu_pd(k, mrow.mx + cc)));
}

// grouped moments on four rows' 16 columns already in registers: the sums of rows4_f32
// (grouped_moments.cpp) in its pairing, with the squares contracted as GCC contracts them
// in that function's AVX-512 clone (so both agree bit for bit there; elsewhere they agree
// to rounding, and the tests hold both to the float64 reference), and min/max of the
// floats with std::min/max's operand order (widening is monotone and exact).
__attribute__((target("avx512f"))) inline void moments4_avx512(const __m512* v, const MomentRow& mrow,
                                                               int64_t c, __mmask16 lanes) {
    // std::min(a, b) is (b < a ? b : a), i.e. min_ps(b, a); std::max(a, b) is max_ps(b, a)
    const __m512 l = _mm512_min_ps(_mm512_min_ps(v[3], v[2]), _mm512_min_ps(v[1], v[0]));
    const __m512 h = _mm512_max_ps(_mm512_max_ps(v[3], v[2]), _mm512_max_ps(v[1], v[0]));
    moments4_half<0>(v, l, h, mrow, c, static_cast<__mmask8>(lanes));
    if (lanes >> 8) moments4_half<1>(v, l, h, mrow, c, static_cast<__mmask8>(lanes >> 8));
}

// Sixteen columns of one row as floats. SRC 0: float32 rows; 1 and 2: raw float16 /
// bfloat16 rows, converted in registers (exact: the hardware conversion for float16, a
// shift for bfloat16; a NaN stays NaN), so a 16-bit row is read once, not widened
// into a float block and read again.
template <int SRC>
__attribute__((target("avx512f"))) inline __m512 load16(const float* row, int64_t c, __mmask16 lanes) {
    if constexpr (SRC == 0) {
        return _mm512_maskz_loadu_ps(lanes, row + c);
    } else {
        const uint16_t* h = reinterpret_cast<const uint16_t*>(row) + c;
        __m256i v;
        if (lanes == 0xffff) {
            v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(h));
        } else {  // the last partial step: no read past the row
            alignas(32) uint16_t tail[16] = {0};
            std::memcpy(tail, h, sizeof(uint16_t) * __builtin_popcount(lanes));
            v = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
        }
        return widen16_regs<SRC>(v);
    }
}

template <int NR, bool MASS, bool MOM = false, int SRC = 0>
__attribute__((target("avx512f"))) inline int64_t step_avx512(
    const float* const* xs, const float* __restrict lo, const float* __restrict hi,
    const float* __restrict mass, int32_t* __restrict a,
    int32_t* __restrict e, int32_t* __restrict lcol, float* __restrict lval, int64_t len,
    int64_t c, __mmask16 lanes, const float* const* pf, const MomentRow* mrow = nullptr) {
    // One line of each of NR rows of the next block per line of the batch consumed: the
    // requests for the next block stream out evenly while this one is computed.
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) _mm_prefetch(reinterpret_cast<const char*>(pf[j] + c), _MM_HINT_T0);
    const __m512i one = _mm512_set1_epi32(1);
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 l = _mm512_maskz_loadu_ps(lanes, lo + c), h = _mm512_maskz_loadu_ps(lanes, hi + c);
    __m512 w = _mm512_setzero_ps();
    if (MASS) w = _mm512_maskz_loadu_ps(lanes, mass + c);
    __m512i ca = _mm512_maskz_loadu_epi32(lanes, a + c);
    __m512i ce = _mm512_setzero_si512();
    if (MASS) ce = _mm512_maskz_loadu_epi32(lanes, e + c);
    const __m512i col = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(c)), iota);
    __m512 vs[NR];
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) vs[j] = load16<SRC>(xs[j], c, lanes);
    if constexpr (MOM) moments4_avx512(vs, *mrow, c, lanes);
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
        const __m512 v = vs[j];
        const __mmask16 below = _mm512_mask_cmp_ps_mask(lanes, v, l, _CMP_LT_OQ);
        const __mmask16 upto = _mm512_mask_cmp_ps_mask(lanes, v, h, _CMP_NGT_UQ);  // <= hi, or NaN
        ca = _mm512_mask_add_epi32(ca, below, ca, one);
        __mmask16 out = below;
        if (MASS) {
            const __mmask16 at = _mm512_mask_cmp_ps_mask(lanes, v, w, _CMP_EQ_OQ);
            ce = _mm512_mask_add_epi32(ce, at, ce, one);
            out = static_cast<__mmask16>(out | at);
        }
        const __mmask16 keep = static_cast<__mmask16>(upto & ~out);
        _mm512_storeu_ps(lval + len, _mm512_maskz_compress_ps(keep, v));
        _mm512_storeu_si512(lcol + len, _mm512_maskz_compress_epi32(keep, col));
        len += __builtin_popcount(keep);
    }
    _mm512_mask_storeu_epi32(a + c, lanes, ca);
    if (MASS) _mm512_mask_storeu_epi32(e + c, lanes, ce);
    return len;
}

template <int NR, bool MASS, bool MOM = false, int SRC = 0>
__attribute__((target("avx512f"))) int64_t rows_avx512(
    const float* const* x, const float* __restrict lo, const float* __restrict hi,
    const float* __restrict mass, int32_t* __restrict a,
    int32_t* __restrict e, int32_t* __restrict lcol, float* __restrict lval, int64_t m,
    const float* const* pf, const MomentRow* mrow = nullptr) {
    const float* xs[4];
    const float* ps[4];
    for (int j = 0; j < NR; ++j) {
        xs[j] = x[j];
        ps[j] = pf[j];
    }
    int64_t len = 0, c = 0;
    for (; c + 16 <= m; c += 16)
        len = step_avx512<NR, MASS, MOM, SRC>(xs, lo, hi, mass, a, e, lcol, lval, len, c,
                                         static_cast<__mmask16>(0xffff), ps, mrow);
    if (c < m)
        len = step_avx512<NR, MASS, MOM, SRC>(xs, lo, hi, mass, a, e, lcol, lval, len, c,
                                         static_cast<__mmask16>((1u << (m - c)) - 1), ps, mrow);
    return len;
}

// NR rows against one bracket row with AVX2 (flag bits in bb, row j at bb + j * mb).
template <bool MASS, int SRC = 0>
inline void rows_simd(int nr, const float* const* fr, const float* fl, const float* fh,
                      const float* fw, int32_t* ca, int32_t* ce, uint8_t* bb,
                      int64_t mb, int64_t m, const float* const* pf) {
    switch (nr) {
        case 4: rows_avx2<4, MASS, SRC>(fr, fl, fh, fw, ca, ce, bb, mb, m, pf); break;
        case 3: rows_avx2<3, MASS, SRC>(fr, fl, fh, fw, ca, ce, bb, mb, m, pf); break;
        case 2: rows_avx2<2, MASS, SRC>(fr, fl, fh, fw, ca, ce, bb, mb, m, pf); break;
        default: rows_avx2<1, MASS, SRC>(fr, fl, fh, fw, ca, ce, bb, mb, m, pf); break;
    }
}

// The same with AVX-512: the kept values come back as a list of (column, value).
template <bool MASS, int SRC = 0>
inline int64_t rows_simd512(int nr, const float* const* fr, const float* fl, const float* fh,
                            const float* fw, int32_t* ca, int32_t* ce, int32_t* lc,
                            float* lv, int64_t m, const float* const* pf) {
    switch (nr) {
        case 4: return rows_avx512<4, MASS, false, SRC>(fr, fl, fh, fw, ca, ce, lc, lv, m, pf);
        case 3: return rows_avx512<3, MASS, false, SRC>(fr, fl, fh, fw, ca, ce, lc, lv, m, pf);
        case 2: return rows_avx512<2, MASS, false, SRC>(fr, fl, fh, fw, ca, ce, lc, lv, m, pf);
        default: return rows_avx512<1, MASS, false, SRC>(fr, fl, fh, fw, ca, ce, lc, lv, m, pf);
    }
}
#endif

// Where one thread appends: per (q, g, c) write position and end, and a flag set when
// a value did not fit.
// A value that did not fit its piece's share goes to the thread's spill list; the
// merge after the pass moves it into the region's free space (overflow only when the
// region as a whole is full), so pieces can be handed out dynamically.
template <typename K>
struct Sink {
    int64_t* wp;
    const int64_t* end;
    K* keep;
    std::vector<std::pair<int64_t, K>>* spill;
    inline void put(int64_t i, K v) {
        const int64_t w = wp[i];
        if (w < end[i]) {
            keep[w] = v;
            wp[i] = w + 1;
            // Thousands of regions are written a few values at a time: ask for the
            // region's next line ahead, or each new line stalls on a read-for-ownership
            // miss.
            __builtin_prefetch(keep + w + 64 / sizeof(K), 1);
        } else {
            spill->emplace_back(i, v);
        }
    }
};

// Appends the flagged columns of one row: 64 flag bits per word, most words zero.
template <typename T>
inline void append_bits(const uint8_t* bits, int64_t m, const T* row, int64_t i0, Sink<T>& out, int src = 0) {
    for (int64_t b0 = 0; b0 * 8 < m; b0 += 8) {
        uint64_t w;
        std::memcpy(&w, bits + b0, 8);
        const int64_t left = m - b0 * 8;
        if (left < 64) w &= (uint64_t(1) << left) - 1;
        while (w) {
            const int64_t c = b0 * 8 + __builtin_ctzll(w);
            w &= w - 1;
#ifdef PYDEBIAS_QUANTILE_AVX2
            if (src) {  // a raw 16-bit row (only with T = float)
                out.put(i0 + c, static_cast<T>(src == 1 ? load1<1>(reinterpret_cast<const float*>(row), c)
                                                        : load1<2>(reinterpret_cast<const float*>(row), c)));
                continue;
            }
#endif
            out.put(i0 + c, row[c]);
        }
    }
}

// One piece's grouped moments accumulators (G x m, fused pass), or none (shift == nullptr).
struct MomentAcc {
    const double* shift = nullptr;
    std::vector<int64_t> count;
    std::vector<double> s1, s2, mn, mx;
};

// One piece's rows [r0, r1) of one call. Rows go in blocks (16-bit input widened to a
// float block first), bucketed by group so each group's rows run four at a time. With
// grouped moments accumulators (float compare type) each batch of four rows is first added into the
// moments, then counted while it is still in L1: one read of X for grouped moments and grouped quantiles.
template <typename T>
void collect_rows(const void* x, Elem elem, int64_t r0, int64_t r1, int64_t m, int64_t stride,
                  const int64_t* groups, int64_t G, int64_t Q, const std::vector<T>& lo,
                  const std::vector<T>& hi, const std::vector<T>& mass, std::vector<int32_t>& cnt,
                  Sink<T> out, MomentAcc* mo) {
    const int64_t qgm = Q * G * m;
    int32_t *a = cnt.data(), *e = a + 2 * qgm;
    const int64_t mb = ((m + 63) / 64) * 8;  // flag bytes per row, whole 64-bit words
    std::vector<uint8_t> bits(4 * mb, 0), flag(m);
    const int64_t block = std::max<int64_t>(16, (128 << 10) / std::max<int64_t>(1, m * sizeof(T)));
    const bool half = elem == Elem::F16 || elem == Elem::BF16;
    std::vector<int64_t> order(block), start(G + 1), fillp(G);
    // per (q, g): does any column have a point mass (else its compare is skipped)
    std::vector<uint8_t> has_mass(Q * G, 0);
    for (int64_t i = 0; i < qgm; ++i)
        if (mass[i] == mass[i]) has_mass[i / m] = 1;
    bool simd = false, simd512 = false;
    std::vector<int32_t> lcol(4 * m + 16);  // the AVX-512 kernel's list of kept values
    std::vector<float> lval(4 * m + 16);
#ifdef PYDEBIAS_QUANTILE_AVX2
    simd = sizeof(T) == 4 && cpu_has_f16c();  // F16C: every AVX2 CPU has it, the raw 16-bit path needs it
    simd512 = simd && cpu_has_avx512();
#endif
    const bool fuse_moments = simd512 && Q > 0 && !std::getenv("PYDEBIAS_NO_FUSE4");
    // 16-bit rows without grouped moments on the AVX-512 and AVX2 paths are counted straight from
    // their raw rows, converted in registers (measured, 2,000,000 x 1,024 float16 memmap, grouped
    // quantiles alone with the prefetch below: AVX-512 0.44-0.48 -> 0.33-0.37 s; AVX2: see
    // docs/performance.md); elsewhere each block is widened to floats first.
    // PYDEBIAS_NO_DIRECT16=1 widens on every path (for A/B and tests).
    const bool direct16 = half && simd && !(mo && mo->shift) && !std::getenv("PYDEBIAS_NO_DIRECT16");
    const int src = !direct16 ? 0 : elem == Elem::F16 ? 1 : 2;
    std::vector<T> scratch(half && !direct16 ? block * m : 0);
    for (int64_t b0 = r0; b0 < r1; b0 += block) {
        const int64_t nb = std::min(block, r1 - b0);
        const T* xb;  // row r of the block at xb + r * xs (direct16: raw + r * stride)
        int64_t xs;
        const uint16_t* raw = half ? static_cast<const uint16_t*>(x) + b0 * stride : nullptr;
        if (direct16) {
            xb = nullptr;
            xs = 0;
        } else if (half) {
            for (int64_t r = 0; r < nb; ++r) {
                const uint16_t* h = static_cast<const uint16_t*>(x) + (b0 + r) * stride;
                if constexpr (std::is_same<T, float>::value) widen_row(h, elem, scratch.data() + r * m, m);
            }
            xb = scratch.data();
            xs = m;
        } else {
            xb = static_cast<const T*>(x) + b0 * stride;
            xs = stride;
        }
        std::fill(start.begin(), start.end(), 0);
        for (int64_t r = 0; r < nb; ++r) ++start[groups[b0 + r] + 1];
        for (int64_t g = 0; g < G; ++g) start[g + 1] += start[g];
        std::copy(start.begin(), start.end() - 1, fillp.begin());
        for (int64_t r = 0; r < nb; ++r) order[fillp[groups[b0 + r]]++] = r;
        // Rows below are visited in group order, which the hardware prefetcher does not
        // follow, so the next block is asked for in software: each batch of nr rows
        // requests nr rows of the next block (in address order), one line per line it
        // consumes, so the requests overlap the counting. Issued as one burst at the
        // start of the block instead, they filled the miss queue and the core waited for
        // the whole next block before counting this one (measured, bench array, A/B in one
        // process: grouped quantiles alone 1.95x -> 1.70x one read, moments + quantiles pass 2.86x -> 2.65x).
        // 16-bit rows: the raw rows of the next block, read by the next widening. Each
        // prefetch walks a float row's bytes, i.e. two 16-bit rows from its start, so
        // every other row is asked for (measured, 2,000,000 x 1,024 float16 memmap, grouped quantiles
        // alone: 0.51 -> 0.44 s; without it the widening waited on memory and took longer
        // than the counting).
        const int64_t nn = std::min(block, r1 - b0 - nb);
        const T* next = half ? reinterpret_cast<const T*>(static_cast<const uint16_t*>(x) + (b0 + nb) * stride)
                             : xb + nb * xs;
        // distance between prefetched rows in T units: two 16-bit rows, or one row
        const int64_t ns = half ? 4 * stride / static_cast<int64_t>(sizeof(T)) : xs;
        int64_t cursor = 0;
        for (int64_t g = 0; g < G; ++g) {
            for (int64_t k = start[g]; k < start[g + 1]; k += 4) {
                const int nr = static_cast<int>(std::min<int64_t>(4, start[g + 1] - k));
                const T* rows[4];
                const T* pf[4];  // rows to prefetch; past the next block: this batch's own
                for (int j = 0; j < nr; ++j) {
                    rows[j] = direct16 ? reinterpret_cast<const T*>(raw + order[k + j] * stride)
                                       : xb + order[k + j] * xs;
                    const int64_t pr = half ? 2 * (cursor + j) : cursor + j;  // the row it starts at
                    pf[j] = pr < nn ? next + (cursor + j) * ns : rows[j];
                }
                cursor += nr;
                // Four rows on the AVX-512 path: grouped moments goes inside the first level's column
                // loop, each vector loaded once for both (measured, bench array, 15 paired calls:
                // moments + quantiles 148.6 -> 135.8 ms median). PYDEBIAS_NO_FUSE4=1 turns it off for A/B.
                const bool fuse4 = fuse_moments && nr == 4 && mo && mo->shift;
                if constexpr (std::is_same<T, float>::value) {
                    if (mo && mo->shift) mo->count[g] += nr;
                    if (mo && mo->shift && !fuse4) {  // grouped moments on these rows while they are in L1
                        grouped_moments_rows_f32(rows, nr, m, mo->shift + g * m, mo->s1.data() + g * m,
                                                 mo->s2.data() + g * m, mo->mn.data() + g * m,
                                                 mo->mx.data() + g * m);
                    }
                }
                for (int64_t q = 0; q < Q; ++q) {
                    const int64_t i0 = (q * G + g) * m;
                    const T *l = lo.data() + i0, *h = hi.data() + i0, *w = mass.data() + i0;
#ifdef PYDEBIAS_QUANTILE_AVX2
                    if (simd) {
                        const float* const* fr = reinterpret_cast<const float* const*>(rows);
                        const float* const* fp = reinterpret_cast<const float* const*>(pf);
                        const float *fl = reinterpret_cast<const float*>(l),
                                    *fh = reinterpret_cast<const float*>(h),
                                    *fw = reinterpret_cast<const float*>(w);
                        int32_t *ca = a + i0, *ce = e + i0;
                        uint8_t* bb = bits.data();
                        if (simd512) {
                            int64_t len;
                            if (fuse4 && q == 0) {  // grouped moments on these four rows rides along
                                const MomentRow mrow{mo->shift + g * m, mo->s1.data() + g * m, mo->s2.data() + g * m,
                                                   mo->mn.data() + g * m, mo->mx.data() + g * m};
                                len = has_mass[g]
                                          ? rows_avx512<4, true, true>(fr, fl, fh, fw, ca, ce, lcol.data(), lval.data(), m, fp, &mrow)
                                          : rows_avx512<4, false, true>(fr, fl, fh, fw, ca, ce, lcol.data(), lval.data(), m, fp, &mrow);
                            } else {
                                int32_t *lc = lcol.data();
                                float* lv = lval.data();
                                const bool ms = has_mass[q * G + g];
                                if (src == 1)
                                    len = ms ? rows_simd512<true, 1>(nr, fr, fl, fh, fw, ca, ce, lc, lv, m, fp)
                                             : rows_simd512<false, 1>(nr, fr, fl, fh, fw, ca, ce, lc, lv, m, fp);
                                else if (src == 2)
                                    len = ms ? rows_simd512<true, 2>(nr, fr, fl, fh, fw, ca, ce, lc, lv, m, fp)
                                             : rows_simd512<false, 2>(nr, fr, fl, fh, fw, ca, ce, lc, lv, m, fp);
                                else
                                    len = ms ? rows_simd512<true>(nr, fr, fl, fh, fw, ca, ce, lc, lv, m, fp)
                                             : rows_simd512<false>(nr, fr, fl, fh, fw, ca, ce, lc, lv, m, fp);
                            }
                            for (int64_t k = 0; k < len; ++k) out.put(i0 + lcol[k], static_cast<T>(lval[k]));
                            continue;
                        }
                        const bool ms = has_mass[q * G + g];
                        if (src == 1)
                            ms ? rows_simd<true, 1>(nr, fr, fl, fh, fw, ca, ce, bb, mb, m, fp)
                               : rows_simd<false, 1>(nr, fr, fl, fh, fw, ca, ce, bb, mb, m, fp);
                        else if (src == 2)
                            ms ? rows_simd<true, 2>(nr, fr, fl, fh, fw, ca, ce, bb, mb, m, fp)
                               : rows_simd<false, 2>(nr, fr, fl, fh, fw, ca, ce, bb, mb, m, fp);
                        else
                            ms ? rows_simd<true>(nr, fr, fl, fh, fw, ca, ce, bb, mb, m, fp)
                               : rows_simd<false>(nr, fr, fl, fh, fw, ca, ce, bb, mb, m, fp);
                        for (int j = 0; j < nr; ++j) append_bits(bits.data() + j * mb, m, rows[j], i0, out, src);
                        continue;
                    }
#endif
                    for (int j = 0; j < nr; ++j) {
                        if (q == 0)
                            for (int64_t off = 0; off < m * static_cast<int64_t>(sizeof(T)); off += 64)
                                __builtin_prefetch(reinterpret_cast<const char*>(pf[j]) + off);
                        row_count(rows[j], l, h, w, a + i0, e + i0, flag.data(), m);
                        for (int64_t c = 0; c < m; ++c)
                            if (flag[c]) out.put(i0 + c, rows[j][c]);
                    }
                }
            }
        }
    }
}

// Phase 2 for at most 2^30 rows (the per-thread int32 counters cannot wrap).
// With `mom` (shift, count, s1, s2, mn, mx of grouped_moments_accumulate; float compare
// type and stride == m only) the same pass also accumulates the grouped moments moments.
struct MomentOut {
    const double* shift;
    int64_t *count;
    double *s1, *s2, *mn, *mx;
};

void collect_part(const void* x, Elem elem, int64_t n, int64_t m, int64_t stride, const int64_t* groups,
                  int64_t G, int64_t Q, const double* lo, const double* hi, const double* mass,
                  int64_t* cnt, void* keep, const int64_t* keep_off, int64_t* keep_fill,
                  const MomentOut* mom = nullptr) {
    const int64_t qgm = Q * G * m;
    const int T = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), n / 64)));
    // Rows go in P pieces that the threads take as they finish the previous one, so a
    // core shared with another job slows the pass by its share only (a static split
    // waits for the slowest thread). One parallel region for the whole pass.
    const int64_t P = T == 1 ? 1 : std::max<int64_t>(T, std::min<int64_t>(8 * T, n / 4096));
    std::vector<int64_t> rstart(P + 1);
    for (int64_t p = 0; p <= P; ++p) rstart[p] = n * p / P;
    std::vector<int64_t> ng(static_cast<size_t>(P) * G, 0);
    int bad = 0;
    for (int64_t p = 0; p < P; ++p)
        for (int64_t r = rstart[p]; r < rstart[p + 1]; ++r) {
            const int64_t g = groups[r];
            if (g < 0 || g >= G) bad = 1;
            else ++ng[p * G + g];
        }
    if (bad)
        throw KernelError("groups: a group id is outside [0, n_groups); pass n_groups larger than the largest id");
    // The count not above hi is derived (below + mass copies + kept), which holds only
    // for lo <= hi with the mass (if any) in [lo, hi], as phase 1 always gives; a group
    // with no rows here may carry the empty bracket (inf, -inf) of an empty group.
    for (int64_t i = 0; i < qgm; ++i) {
        const int64_t g = (i / m) % G;
        int64_t rows = 0;
        for (int64_t p = 0; p < P && !rows; ++p) rows += ng[p * G + g];
        if (rows && !(lo[i] <= hi[i] && (mass[i] != mass[i] || (lo[i] <= mass[i] && mass[i] <= hi[i]))))
            throw KernelError("lo, hi, mass: each bracket must have lo <= hi and its mass (if any) in [lo, hi]");
    }
    // Each region's free space [off + fill, next off) is cut between pieces in
    // proportion to their rows of the region's group.
    std::vector<int64_t> wp(static_cast<size_t>(P) * qgm), end(static_cast<size_t>(P) * qgm);
    std::vector<int64_t> first(static_cast<size_t>(P) * qgm);
    for (int64_t i = 0; i < qgm; ++i) {
        const int64_t g = (i / m) % G;
        int64_t total = 0;
        for (int64_t p = 0; p < P; ++p) total += ng[p * G + g];
        const int64_t base = keep_off[i] + std::max<int64_t>(keep_fill[i], 0);
        const int64_t room = keep_fill[i] < 0 ? 0 : keep_off[i + 1] - base;
        int64_t before = 0;
        for (int64_t p = 0; p < P; ++p) {
            const int64_t s0 = total ? base + room * before / total : base;
            before += ng[p * G + g];
            const int64_t s1 = total ? base + room * before / total : base;
            first[p * qgm + i] = wp[p * qgm + i] = s0;
            end[p * qgm + i] = s1;
        }
    }
    // Bounds in the compare type: exact, they are sample values, +-inf or NaN.
    const bool wide = elem == Elem::F64;
    std::vector<float> lo32(wide ? 0 : qgm), hi32(wide ? 0 : qgm), w32(wide ? 0 : qgm);
    std::vector<double> lo64(wide ? qgm : 0), hi64(wide ? qgm : 0), w64(wide ? qgm : 0);
    for (int64_t i = 0; i < qgm; ++i) {
        if (wide) {
            lo64[i] = lo[i];
            hi64[i] = hi[i];
            w64[i] = mass[i];
        } else {
            lo32[i] = static_cast<float>(lo[i]);
            hi32[i] = static_cast<float>(hi[i]);
            w32[i] = static_cast<float>(mass[i]);
        }
    }
    std::vector<std::vector<int32_t>> tc(T);
    std::vector<std::vector<std::pair<int64_t, float>>> sp32(T);
    std::vector<std::vector<std::pair<int64_t, double>>> sp64(T);
    // grouped moments accumulators per piece (not per thread): summed in piece order after the pass,
    // the bits do not depend on which thread took which piece.
    std::vector<MomentAcc> macc(mom ? P : 0);
    const int64_t gm = G * m;
#pragma omp parallel num_threads(T)
    {
        const int t = thread_id();
        tc[t].assign(3 * qgm, 0);
#pragma omp for schedule(dynamic, 1)
        for (int64_t p = 0; p < P; ++p) {
            MomentAcc* mo = nullptr;
            if (mom) {
                mo = &macc[p];
                mo->shift = mom->shift;
                mo->count.assign(G, 0);
                mo->s1.assign(gm, 0.0);
                mo->s2.assign(gm, 0.0);
                mo->mn.assign(gm, std::numeric_limits<double>::infinity());
                mo->mx.assign(gm, -std::numeric_limits<double>::infinity());
            }
            if (wide)
                collect_rows<double>(x, elem, rstart[p], rstart[p + 1], m, stride, groups, G, Q, lo64,
                                     hi64, w64, tc[t],
                                     Sink<double>{wp.data() + p * qgm, end.data() + p * qgm,
                                                  static_cast<double*>(keep), &sp64[t]},
                                     nullptr);
            else
                collect_rows<float>(x, elem, rstart[p], rstart[p + 1], m, stride, groups, G, Q, lo32,
                                    hi32, w32, tc[t],
                                    Sink<float>{wp.data() + p * qgm, end.data() + p * qgm,
                                                static_cast<float*>(keep), &sp32[t]},
                                    mo);
        }
    }
    // grouped moments: reduce in piece order.
    if (mom)
        for (int64_t p = 0; p < P; ++p) {
            for (int64_t g = 0; g < G; ++g) mom->count[g] += macc[p].count[g];
            for (int64_t i = 0; i < gm; ++i) {
                mom->s1[i] += macc[p].s1[i];
                mom->s2[i] += macc[p].s2[i];
                mom->mn[i] = std::min(mom->mn[i], macc[p].mn[i]);
                mom->mx[i] = std::max(mom->mx[i], macc[p].mx[i]);
            }
        }
    // Spilled values by region (usually none): counts, then offsets.
    std::vector<int64_t> sstart(qgm + 1, 0);
    for (int t = 0; t < T; ++t) {
        for (const auto& e : sp32[t]) ++sstart[e.first + 1];
        for (const auto& e : sp64[t]) ++sstart[e.first + 1];
    }
    for (int64_t i = 0; i < qgm; ++i) sstart[i + 1] += sstart[i];
    std::vector<double> sval(sstart[qgm]);
    {
        std::vector<int64_t> sfill(sstart.begin(), sstart.end() - 1);
        for (int t = 0; t < T; ++t) {
            for (const auto& e : sp32[t]) sval[sfill[e.first]++] = e.second;
            for (const auto& e : sp64[t]) sval[sfill[e.first]++] = e.second;
        }
    }
    // Reduce counters, close the gaps between the pieces of each region, and append its
    // spilled values where the region still has room.
    const size_t ksize = wide ? sizeof(double) : sizeof(float);
    char* kb = static_cast<char*>(keep);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < qgm; ++i) {
        for (int t = 0; t < T; ++t)
            for (int k = 0; k < 3; k += 2) cnt[k * qgm + i] += tc[t][k * qgm + i];
        if (keep_fill[i] < 0) {
            cnt[qgm + i] = -1;
            continue;
        }
        int64_t w = keep_off[i] + keep_fill[i];
        for (int64_t p = 0; p < P; ++p) {
            const int64_t s0 = first[p * qgm + i], len = wp[p * qgm + i] - s0;
            if (w != s0 && len) std::memmove(kb + w * ksize, kb + s0 * ksize, len * ksize);
            w += len;
        }
        const int64_t ns = sstart[i + 1] - sstart[i];
        bool over = w + ns > keep_off[i + 1];
        if (!over)
            for (int64_t k = sstart[i]; k < sstart[i + 1]; ++k, ++w) {
                if (wide) static_cast<double*>(keep)[w] = sval[k];
                else static_cast<float*>(keep)[w] = static_cast<float>(sval[k]);
            }
        keep_fill[i] = over ? -1 : w - keep_off[i];
        // Not above hi: below, the point mass's copies, and every value kept (NaN too).
        cnt[qgm + i] = over ? -1 : cnt[i] + cnt[2 * qgm + i] + keep_fill[i];
    }
}

// Order-preserving unsigned keys of floats: flip the sign bit of positives and every
// bit of negatives (-0.0 sorts just below +0.0).
inline uint32_t float_key(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return b ^ (static_cast<uint32_t>(-static_cast<int32_t>(b >> 31)) | 0x80000000u);
}
inline uint64_t float_key(double f) {
    uint64_t b;
    std::memcpy(&b, &f, 8);
    return b ^ (static_cast<uint64_t>(-static_cast<int64_t>(b >> 63)) | 0x8000000000000000ull);
}

// The k-th smallest (0-based) of v[0, n) without reordering v: histogram the keys'
// offsets from the least key into 2048 bins scaled to the key range, keep only the bin
// holding rank k, repeat on it (each round narrows the key range by 2^11), finish with
// nth_element under 64 values. Branch-free counting: measured several times faster than
// nth_element on these inputs, which mispredicts on every partition step.
template <typename K>
K radix_select(const K* v, int64_t n, int64_t k, std::vector<K>& buf) {
    using U = decltype(float_key(K()));
    constexpr int BITS = 11;
    uint32_t hist[1 << BITS];
    const K* cur = v;
    while (true) {
        if (n <= 64) {
            K small[64];
            std::copy(cur, cur + n, small);
            std::nth_element(small, small + k, small + n,
                             [](K a, K b) { return float_key(a) < float_key(b); });
            return small[k];
        }
        U lo = ~U(0), hi = 0;
        for (int64_t i = 0; i < n; ++i) {
            const U u = float_key(cur[i]);
            lo = u < lo ? u : lo;
            hi = u > hi ? u : hi;
        }
        if (lo == hi) return cur[0];
        const U range = hi - lo;
        const int width = static_cast<int>(sizeof(U) * 8) -
                          (sizeof(U) == 8 ? __builtin_clzll(static_cast<unsigned long long>(range))
                                          : __builtin_clz(static_cast<unsigned>(range)));
        const int shift = width > BITS ? width - BITS : 0;
        std::fill(hist, hist + (1 << BITS), 0u);
        for (int64_t i = 0; i < n; ++i) ++hist[(float_key(cur[i]) - lo) >> shift];
        U b = 0;
        int64_t before = 0;
        while (before + hist[b] <= k) before += hist[b++];
        k -= before;
        if (cur != buf.data()) buf.resize(hist[b]);
        K* out = buf.data();
        int64_t j = 0;
        for (int64_t i = 0; i < n; ++i)
            if (((float_key(cur[i]) - lo) >> shift) == b) out[j++] = cur[i];
        cur = out;
        n = j;
    }
}

}  // namespace

namespace {

// Phase 1 in the compare type K (float for 32- and 16-bit input: exact, and half the
// bytes and key width of double). Tasks are (group, 64 columns): a sample row then
// gives four whole cache lines per visit (16 columns gave one, and the gather stalled
// on every row of the sample).
template <typename K>
void brackets_impl(const void* sample, Elem elem, int64_t m,
                   const std::vector<std::vector<int64_t>>& rows, int64_t G, const int64_t* count,
                   const int64_t* ranks, int64_t Q, double z, double* lo, double* hi,
                   double* mass, int64_t* expect, int* nan_seen) {
    const double inf = std::numeric_limits<double>::infinity();
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const float* table = elem == Elem::F16 ? f16_table() : nullptr;
    const int64_t cb = 64;
    const int64_t nblocks = (m + cb - 1) / cb;
#pragma omp parallel
    {
        std::vector<K> col, buf, mid;
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int64_t g = 0; g < G; ++g) {
            for (int64_t blk = 0; blk < nblocks; ++blk) {
                const int64_t n = count[g], sg = static_cast<int64_t>(rows[g].size());
                const int64_t c0 = blk * cb, c1 = std::min(m, c0 + cb), w = c1 - c0;
                col.resize(sg * w);
                for (int64_t j = 0; j < sg; ++j) {
                    const int64_t base = rows[g][j] * m;
                    K* o = col.data() + j;
                    switch (elem) {
                        case Elem::F32: {
                            const float* r = static_cast<const float*>(sample) + base;
                            for (int64_t c = c0; c < c1; ++c) o[(c - c0) * sg] = static_cast<K>(r[c]);
                            break;
                        }
                        case Elem::F64: {
                            const double* r = static_cast<const double*>(sample) + base;
                            for (int64_t c = c0; c < c1; ++c) o[(c - c0) * sg] = static_cast<K>(r[c]);
                            break;
                        }
                        case Elem::F16: {
                            const uint16_t* r = static_cast<const uint16_t*>(sample) + base;
                            for (int64_t c = c0; c < c1; ++c) o[(c - c0) * sg] = static_cast<K>(table[r[c]]);
                            break;
                        }
                        case Elem::BF16: {
                            const uint16_t* r = static_cast<const uint16_t*>(sample) + base;
                            for (int64_t c = c0; c < c1; ++c) o[(c - c0) * sg] = static_cast<K>(bf16_to_float(r[c]));
                            break;
                        }
                    }
                }
                int bad = 0;
                for (int64_t j = 0; j < sg * w; ++j) bad |= col[j] != col[j];
                if (bad) *nan_seen = 1;
                for (int64_t c = c0; c < c1; ++c) {
                    const K* v = col.data() + (c - c0) * sg;
                    for (int64_t q = 0; q < Q; ++q) {
                        const int64_t i = (q * G + g) * m + c;
                        mass[i] = nan;
                        if (n == 0 || sg == 0) {  // empty group, or no sample: everything kept
                            lo[i] = n == 0 ? inf : -inf;
                            hi[i] = n == 0 ? -inf : inf;
                            expect[i] = n;
                            continue;
                        }
                        const int64_t r_lo = ranks[(q * G + g) * 2], r_hi = ranks[(q * G + g) * 2 + 1];
                        int64_t a, b;
                        if (sg == n) {  // the whole group is in the sample: exact bracket
                            a = r_lo;
                            b = r_hi;
                        } else {
                            const double scale = static_cast<double>(sg - 1) / std::max<int64_t>(1, n - 1);
                            const double p = static_cast<double>(r_lo) / std::max<int64_t>(1, n - 1);
                            const double d = z * std::sqrt(sg * p * (1 - p) + 1.0) + 2.0;
                            a = static_cast<int64_t>(std::floor(r_lo * scale - d));
                            b = static_cast<int64_t>(std::ceil(r_hi * scale + d));
                        }
                        const int64_t a0 = std::max<int64_t>(a, 0), b0 = std::min<int64_t>(b, sg - 1);
                        const K va = radix_select(v, sg, a0, buf);
                        const K vb = b0 > a0 ? radix_select(v, sg, b0, buf) : va;
                        lo[i] = a >= 0 ? static_cast<double>(va) : -inf;
                        hi[i] = b < sg ? static_cast<double>(vb) : inf;
                        // The sample values in [va, vb], sorted: the longest run of one value
                        // is the bracket's point mass (counted, never kept), if it repeats.
                        mid.resize(sg + 1);
                        int64_t nm = 0;
                        for (int64_t j = 0; j < sg; ++j) {  // branch-free: ~1 in 8 is inside
                            mid[nm] = v[j];
                            nm += (v[j] >= va) & (v[j] <= vb);
                        }
                        std::sort(mid.begin(), mid.begin() + nm);
                        int64_t best = 1, run = 1;
                        K mv = mid[0];
                        for (int64_t j = 1; j < nm; ++j) {
                            run = mid[j] == mid[j - 1] ? run + 1 : 1;
                            if (run > best) {
                                best = run;
                                mv = mid[j];
                            }
                        }
                        if (best >= 2 || lo[i] == hi[i]) mass[i] = static_cast<double>(mv);
                        const double frac = static_cast<double>(std::max<int64_t>(
                            0, nm - (best >= 2 ? best : 0))) / sg;
                        expect[i] = std::min<int64_t>(n, static_cast<int64_t>(std::ceil(frac * n)));
                    }
                }
            }
        }
    }
}

}  // namespace

void quantile_brackets(const void* sample, Elem elem, int64_t s, int64_t m,
                       const int64_t* sample_groups, int64_t G, const int64_t* count,
                       const int64_t* ranks, int64_t Q, double z, double* lo, double* hi,
                       double* mass, int64_t* expect) {
    // Sample rows of each group, in order.
    std::vector<std::vector<int64_t>> rows(G);
    for (int64_t r = 0; r < s; ++r) {
        const int64_t g = sample_groups[r];
        if (g < 0 || g >= G)
            throw KernelError("groups: a group id is outside [0, n_groups); pass n_groups larger than the largest id");
        rows[g].push_back(r);
    }
    int nan_seen = 0;
    if (elem == Elem::F64)
        brackets_impl<double>(sample, elem, m, rows, G, count, ranks, Q, z, lo, hi, mass, expect,
                              &nan_seen);
    else
        brackets_impl<float>(sample, elem, m, rows, G, count, ranks, Q, z, lo, hi, mass, expect,
                             &nan_seen);
    if (nan_seen) throw KernelError("features: contains NaN; drop or impute those rows before computing statistics");
}

void quantile_collect(const void* x, Elem elem, int64_t n, int64_t m, int64_t stride,
                      const int64_t* groups, int64_t G, int64_t Q, const double* lo,
                      const double* hi, const double* mass, int64_t* cnt, void* keep,
                      const int64_t* keep_off, int64_t* keep_fill) {
    const int64_t part = int64_t(1) << 30;
    const size_t esize = elem == Elem::F32 ? 4 : elem == Elem::F64 ? 8 : 2;
    for (int64_t r0 = 0; r0 < n; r0 += part) {
        const int64_t nr = std::min(part, n - r0);
        collect_part(static_cast<const char*>(x) + r0 * stride * esize, elem, nr, m, stride, groups + r0, G, Q,
                     lo, hi, mass, cnt, keep, keep_off, keep_fill);
    }
}

void moments_quantile_collect(const void* x, Elem elem, int64_t n, int64_t m,
                              const int64_t* groups, int64_t G, const double* shift,
                              int64_t* count, double* s1, double* s2, double* mn, double* mx,
                              int64_t Q, const double* lo, const double* hi, const double* mass,
                              int64_t* cnt, void* keep, const int64_t* keep_off,
                              int64_t* keep_fill) {
    if (elem == Elem::F64) {  // no float block to share: the two passes as they are
        grouped_moments_accumulate(x, elem, n, m, groups, G, shift, count, s1, s2, mn, mx);
        quantile_collect(x, elem, n, m, m, groups, G, Q, lo, hi, mass, cnt, keep, keep_off,
                         keep_fill);
        return;
    }
    const MomentOut mom{shift, count, s1, s2, mn, mx};
    const int64_t part = int64_t(1) << 30;
    const size_t esize = elem == Elem::F32 ? 4 : 2;
    for (int64_t r0 = 0; r0 < n; r0 += part) {
        const int64_t nr = std::min(part, n - r0);
        collect_part(static_cast<const char*>(x) + r0 * m * esize, elem, nr, m, m, groups + r0, G,
                     Q, lo, hi, mass, cnt, keep, keep_off, keep_fill, &mom);
    }
}

namespace {

// One pass over a region's kept values: the range of their keys, whether one is NaN, and
// how many lie below the point mass w. Branch-free, so it vectorises.
template <typename K, typename U>
inline __attribute__((always_inline)) void scan_impl(const K* __restrict v, int64_t n, K w, U* klo,
                                                     U* khi, int64_t* under, int* nan) {
    U lo = ~U(0), hi = 0;
    int64_t below = 0;
    int bad = 0;
    for (int64_t i = 0; i < n; ++i) {
        const K x = v[i];
        const U u = float_key(x);
        lo = u < lo ? u : lo;
        hi = u > hi ? u : hi;
        below += x < w;
        bad |= x != x;
    }
    *klo = lo;
    *khi = hi;
    *under = below;
    *nan = bad;
}

PYDEBIAS_K2_CLONES
void scan_region_f32(const float* v, int64_t n, float w, uint32_t* klo, uint32_t* khi,
                     int64_t* under, int* nan) {
    scan_impl(v, n, w, klo, khi, under, nan);
}

PYDEBIAS_K2_CLONES
void scan_region_f64(const double* v, int64_t n, double w, uint64_t* klo, uint64_t* khi,
                     int64_t* under, int* nan) {
    scan_impl(v, n, w, klo, khi, under, nan);
}

inline void scan_region(const float* v, int64_t n, float w, uint32_t* klo, uint32_t* khi,
                        int64_t* under, int* nan) {
    scan_region_f32(v, n, w, klo, khi, under, nan);
}
inline void scan_region(const double* v, int64_t n, double w, uint64_t* klo, uint64_t* khi,
                        int64_t* under, int* nan) {
    scan_region_f64(v, n, w, klo, khi, under, nan);
}

// The order statistics of ranks k[0] <= k[1] (0-based; nk of them, 1 or 2) of v[0, n)
// whose keys lie in [lo, hi]: one histogram of key offsets serves both ranks, one
// branch-free pass moves the values of their (one or two) bins aside, and the bins --
// a few values each at the bracket densities -- finish in radix_select. Three passes in
// all, where two independent radix_select calls take about eight.
template <typename K, typename U>
void select_two(const K* v, int64_t n, const int64_t* k, int nk, U lo, U hi, K* out,
                std::vector<K>& a, std::vector<K>& b, std::vector<K>& buf) {
    constexpr int BITS = 11;
    if (lo == hi) {
        for (int j = 0; j < nk; ++j) out[j] = v[0];
        return;
    }
    const U range = hi - lo;
    const int width = static_cast<int>(sizeof(U) * 8) -
                      (sizeof(U) == 8 ? __builtin_clzll(static_cast<unsigned long long>(range))
                                      : __builtin_clz(static_cast<unsigned>(range)));
    const int shift = width > BITS ? width - BITS : 0;
    uint32_t hist[1 << BITS];
    std::fill(hist, hist + (1 << BITS), 0u);
    for (int64_t i = 0; i < n; ++i) ++hist[(float_key(v[i]) - lo) >> shift];
    U bin[2];
    int64_t rest[2];
    {
        U c = 0;
        int64_t before = 0;
        for (int j = 0; j < nk; ++j) {
            while (before + hist[c] <= k[j]) before += hist[c++];
            bin[j] = c;
            rest[j] = k[j] - before;
        }
    }
    const bool same = nk == 1 || bin[0] == bin[1];
    a.resize(hist[bin[0]] + 1);
    b.resize(same ? 1 : hist[bin[1]] + 1);
    K *pa = a.data(), *pb = b.data();
    int64_t ja = 0, jb = 0;
    const U b0 = bin[0], b1 = same ? ~U(0) : bin[1];
    for (int64_t i = 0; i < n; ++i) {
        const K x = v[i];
        const U d = (float_key(x) - lo) >> shift;
        pa[ja] = x;
        ja += d == b0;
        pb[jb] = x;
        jb += d == b1;
    }
    out[0] = radix_select(pa, ja, rest[0], buf);
    if (nk == 2) out[1] = same ? radix_select(pa, ja, rest[1], buf) : radix_select(pb, jb, rest[1], buf);
}

template <typename K>
void select_regions(int64_t Q, int64_t G, int64_t m, const int64_t* count, const int64_t* ranks,
                    const double* mass, const int64_t* cnt, const K* keep, const int64_t* keep_off,
                    const int64_t* keep_fill, double* lower, double* higher, uint8_t* miss,
                    int* nan_seen) {
    using U = decltype(float_key(K()));
    const int64_t qgm = Q * G * m;
    const double nan = std::numeric_limits<double>::quiet_NaN();
#pragma omp parallel
    {
        std::vector<K> buf, sa, sb;
#pragma omp for schedule(dynamic, 16)
        for (int64_t i = 0; i < qgm; ++i) {
            const int64_t qg = i / m, g = qg % G;
            miss[i] = 0;
            lower[i] = higher[i] = nan;
            if (count[g] == 0) continue;
            // Ranks [0, below) lie under the bracket, [below, upto) in it: the kept
            // values plus `at` copies of the point mass; the rest above it.
            const int64_t below = cnt[i], upto = cnt[qgm + i], at = cnt[2 * qgm + i];
            const int64_t fill = keep_fill[i];
            const K* v = keep + keep_off[i];
            const K w = static_cast<K>(mass[i]);
            int64_t under = 0;  // kept values below the point mass
            U klo = 0, khi = 0;
            int has_nan = 0;
            if (fill > 0) scan_region(v, fill, w, &klo, &khi, &under, &has_nan);
            if (has_nan) {
                *nan_seen = 1;
                continue;
            }
            const int64_t r_lo = ranks[qg * 2], r_hi = ranks[qg * 2 + 1];
            if (fill < 0 || fill + at != upto - below || r_lo < below || r_hi >= upto) {
                miss[i] = 1;  // the bracket missed, or its region overflowed
                continue;
            }
            // Each target is a copy of the point mass or a rank among the kept values.
            double res[2];
            int64_t want[2];
            int slot[2], nk = 0;
            const int64_t rr[2] = {r_lo, r_hi};
            const int nr = r_hi == r_lo ? 1 : 2;
            for (int j = 0; j < nr; ++j) {
                int64_t k = rr[j] - below;
                if (k >= under && k < under + at) {
                    res[j] = w;
                    continue;
                }
                if (k >= under + at) k -= at;
                want[nk] = k;
                slot[nk++] = j;
            }
            if (nk) {
                K got[2];
                select_two(v, fill, want, nk, klo, khi, got, sa, sb, buf);
                for (int j = 0; j < nk; ++j) res[slot[j]] = got[j];
            }
            lower[i] = res[0];
            higher[i] = nr == 1 ? res[0] : res[1];
        }
    }
}

}  // namespace

void quantile_select(int64_t Q, int64_t G, int64_t m, const int64_t* count, const int64_t* ranks,
                     const double* mass, const int64_t* cnt, const void* keep, bool wide,
                     const int64_t* keep_off, const int64_t* keep_fill, double* lower,
                     double* higher, uint8_t* miss) {
    int nan_seen = 0;
    if (wide)
        select_regions(Q, G, m, count, ranks, mass, cnt, static_cast<const double*>(keep), keep_off,
                       keep_fill, lower, higher, miss, &nan_seen);
    else
        select_regions(Q, G, m, count, ranks, mass, cnt, static_cast<const float*>(keep), keep_off,
                       keep_fill, lower, higher, miss, &nan_seen);
    if (nan_seen) throw KernelError("features: contains NaN; drop or impute those rows before computing statistics");
}

}  // namespace pydebias
