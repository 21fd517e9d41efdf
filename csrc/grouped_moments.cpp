// grouped moments: per (group, column) count, shifted sum, shifted sum of squares, min and max
// in one pass over a row-major matrix, accumulated in float64.
//
// The caller owns the accumulators and may call this once per chunk of rows, so
// memmaps larger than RAM stream through it. Sums are taken around a per (group,
// column) shift (a value of that group, near its data) so the variance does not lose
// digits to cancellation when |mean| >> std, whatever the offsets between groups.
#include "grouped_moments.h"
#include "widen.h"

#include <algorithm>
#include <limits>
#include <vector>

namespace pydebias {

namespace {

PYDEBIAS_CLONES
void row_f32(const float* __restrict x, const double* __restrict shift, double* __restrict a1,
             double* __restrict a2, double* __restrict lo, double* __restrict hi, int64_t c0,
             int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
        const double v = static_cast<double>(x[c]);
        const double d = v - shift[c];
        a1[c] += d;
        a2[c] += d * d;
        lo[c] = v < lo[c] ? v : lo[c];
        hi[c] = v > hi[c] ? v : hi[c];
    }
}

PYDEBIAS_CLONES
void row_f64(const double* __restrict x, const double* __restrict shift, double* __restrict a1,
             double* __restrict a2, double* __restrict lo, double* __restrict hi, int64_t c0,
             int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
        const double v = x[c];
        const double d = v - shift[c];
        a1[c] += d;
        a2[c] += d * d;
        lo[c] = v < lo[c] ? v : lo[c];
        hi[c] = v > hi[c] ? v : hi[c];
    }
}

// Four rows of one group at once: the accumulators are loaded and stored once per
// four rows, and the four rows stream contiguously (prefetcher-friendly). Measured on
// 500,000 x 512 float32, 4 groups, 2 threads: 0.097 s one row at a time, 0.057 s so.
PYDEBIAS_CLONES
void rows4_f32(const float* __restrict x0, const float* __restrict x1, const float* __restrict x2,
               const float* __restrict x3, const double* __restrict shift, double* __restrict a1,
               double* __restrict a2, double* __restrict lo, double* __restrict hi, int64_t m) {
    for (int64_t c = 0; c < m; ++c) {
        const double s = shift[c];
        const double v0 = x0[c], v1 = x1[c], v2 = x2[c], v3 = x3[c];
        const double d0 = v0 - s, d1 = v1 - s, d2 = v2 - s, d3 = v3 - s;
        a1[c] += (d0 + d1) + (d2 + d3);
        a2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
        const double l = std::min(std::min(v0, v1), std::min(v2, v3));
        const double h = std::max(std::max(v0, v1), std::max(v2, v3));
        lo[c] = l < lo[c] ? l : lo[c];
        hi[c] = h > hi[c] ? h : hi[c];
    }
}

// Two or three rows of one group (the remainder of a group's rows in a block), with
// the accumulators loaded and stored once, like rows4_f32.
template <int NR>
PYDEBIAS_CLONES void rows_n_f32(const float* const* x, const double* __restrict shift,
                                double* __restrict a1, double* __restrict a2,
                                double* __restrict lo, double* __restrict hi, int64_t m) {
    const float* __restrict x0 = x[0];
    const float* __restrict x1 = x[1];
    const float* __restrict x2 = x[NR > 2 ? 2 : 1];
    for (int64_t c = 0; c < m; ++c) {
        const double s = shift[c];
        const double v0 = x0[c], v1 = x1[c];
        const double d0 = v0 - s, d1 = v1 - s;
        double s1 = d0 + d1, s2 = d0 * d0 + d1 * d1;
        double l = std::min(v0, v1), h = std::max(v0, v1);
        if (NR > 2) {
            const double v2 = x2[c], d2 = v2 - s;
            s1 += d2;
            s2 += d2 * d2;
            l = std::min(l, v2);
            h = std::max(h, v2);
        }
        a1[c] += s1;
        a2[c] += s2;
        lo[c] = l < lo[c] ? l : lo[c];
        hi[c] = h > hi[c] ? h : hi[c];
    }
}

// A block of rows of float32 data (16-bit input is widened into `x` first):
// rows are bucketed by group, then each group's rows go four at a time.
void block_f32(const float* x, int64_t m, int64_t nrows, const int64_t* groups, int64_t G,
               const double* shift, int64_t* count, double* s1, double* s2, double* mn,
               double* mx, std::vector<int64_t>& order, std::vector<int64_t>& start) {
    start.assign(G + 1, 0);
    for (int64_t r = 0; r < nrows; ++r) ++start[groups[r] + 1];
    for (int64_t g = 0; g < G; ++g) start[g + 1] += start[g];
    order.resize(nrows);
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t r = 0; r < nrows; ++r) order[fill[groups[r]]++] = r;
    for (int64_t g = 0; g < G; ++g) {
        const int64_t nr = start[g + 1] - start[g];
        if (nr == 0) continue;
        count[g] += nr;
        const int64_t* rows = order.data() + start[g];
        const double* sh = shift + g * m;
        double *a1 = s1 + g * m, *a2 = s2 + g * m, *lo = mn + g * m, *hi = mx + g * m;
        int64_t i = 0;
        for (; i + 4 <= nr; i += 4)
            rows4_f32(x + rows[i] * m, x + rows[i + 1] * m, x + rows[i + 2] * m,
                      x + rows[i + 3] * m, sh, a1, a2, lo, hi, m);
        if (i == nr) continue;  // rows[nr] is past this group's list (found by ASan)
        const float* rest[3] = {x + rows[i] * m, nullptr, nullptr};
        for (int64_t j = i + 1; j < nr; ++j) rest[j - i] = x + rows[j] * m;
        switch (nr - i) {
            case 3: rows_n_f32<3>(rest, sh, a1, a2, lo, hi, m); break;
            case 2: rows_n_f32<2>(rest, sh, a1, a2, lo, hi, m); break;
            case 1: row_f32(rest[0], sh, a1, a2, lo, hi, 0, m); break;
            default: break;
        }
    }
}

// Rows of one element kind; 16-bit rows are widened to a float scratch row first.
struct Rows {
    const void* x;
    Elem elem;
    int64_t m;
};

void accumulate_rows(const Rows& in, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                     const int64_t* groups, int64_t G, const double* shift, int64_t* count,
                     double* s1, double* s2, double* mn, double* mx, bool count_rows,
                     int* bad_group) {
    const int64_t m = in.m;
    std::vector<float> scratch(in.elem == Elem::F16 || in.elem == Elem::BF16 ? m : 0);
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t g = groups[r];
        if (g < 0 || g >= G) {
            *bad_group = 1;
            continue;
        }
        if (count_rows) ++count[g];
        const double* sh = shift + g * m;
        double* a1 = s1 + g * m;
        double* a2 = s2 + g * m;
        double* lo = mn + g * m;
        double* hi = mx + g * m;
        switch (in.elem) {
            case Elem::F32:
                row_f32(static_cast<const float*>(in.x) + r * m, sh, a1, a2, lo, hi, c0, c1);
                break;
            case Elem::F64:
                row_f64(static_cast<const double*>(in.x) + r * m, sh, a1, a2, lo, hi, c0, c1);
                break;
            case Elem::F16:
            case Elem::BF16: {
                const uint16_t* h = static_cast<const uint16_t*>(in.x) + r * m;
                widen_row(h + c0, in.elem, scratch.data() + c0, c1 - c0);
                row_f32(scratch.data(), sh, a1, a2, lo, hi, c0, c1);
                break;
            }
        }
    }
}

// Row range in blocks sized to stay in L2; ids are checked before a block is used.
void blocked_rows(const Rows& in, int64_t r0, int64_t r1, const int64_t* groups, int64_t G,
                  const double* shift, int64_t* count, double* s1, double* s2, double* mn,
                  double* mx, int* bad_group) {
    const int64_t m = in.m;
    // 64 rows measured best at m = 512 (32 and 128 within 10 %): about 128 KB, in L2.
    const int64_t block = std::max<int64_t>(16, (128 << 10) / std::max<int64_t>(1, m * 4));
    std::vector<int64_t> order, start;
    std::vector<float> scratch;
    for (int64_t b0 = r0; b0 < r1; b0 += block) {
        const int64_t nb = std::min(block, r1 - b0);
        const int64_t* g = groups + b0;
        for (int64_t r = 0; r < nb; ++r)
            if (g[r] < 0 || g[r] >= G) {
                *bad_group = 1;
                return;
            }
        const float* x;
        if (in.elem == Elem::F32) {
            x = static_cast<const float*>(in.x) + b0 * m;
        } else {
            scratch.resize(nb * m);
            widen_row(static_cast<const uint16_t*>(in.x) + b0 * m, in.elem, scratch.data(), nb * m);
            x = scratch.data();
        }
        block_f32(x, m, nb, g, G, shift, count, s1, s2, mn, mx, order, start);
    }
}

}  // namespace

void grouped_moments_accumulate(const void* x, Elem elem, int64_t n, int64_t m,
                                const int64_t* groups, int64_t G, const double* shift,
                                int64_t* count, double* s1, double* s2, double* mn, double* mx) {
    const Rows in{x, elem, m};
    int bad_group = 0;
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    const int64_t gm = G * m;
    // Row split with thread-private accumulators when they stay cache-sized
    // (the usual case: few groups); otherwise split columns so no thread owns
    // a private copy of a large table.
    const bool row_split = threads > 1 && n >= 4 * threads &&
                           gm * 4 * static_cast<int64_t>(sizeof(double)) <= (8 << 20);
    if (!row_split) {
        const int64_t cb = 64;
        const int64_t nblocks = (m + cb - 1) / cb;
        // Counts are per row, not per column: one pass outside the column loop.
        for (int64_t r = 0; r < n; ++r) {
            const int64_t g = groups[r];
            if (g >= 0 && g < G) ++count[g];
        }
#pragma omp parallel for schedule(dynamic, 1) if (threads > 1 && nblocks > 1)
        for (int64_t b = 0; b < nblocks; ++b) {
            const int64_t c0 = b * cb, c1 = std::min(m, c0 + cb);
            accumulate_rows(in, 0, n, c0, c1, groups, G, shift, count, s1, s2, mn, mx, false,
                            &bad_group);
        }
    } else {
        const double inf = std::numeric_limits<double>::infinity();
        std::vector<std::vector<double>> p1(threads), p2(threads), plo(threads), phi(threads);
        std::vector<std::vector<int64_t>> pc(threads);
#pragma omp parallel num_threads(threads)
        {
            int t = 0;
#ifdef _OPENMP
            t = omp_get_thread_num();
#endif
            p1[t].assign(gm, 0.0);
            p2[t].assign(gm, 0.0);
            plo[t].assign(gm, inf);
            phi[t].assign(gm, -inf);
            pc[t].assign(G, 0);
            const int64_t per = (n + threads - 1) / threads;
            const int64_t r0 = std::min(n, t * per), r1 = std::min(n, r0 + per);
            if (elem == Elem::F64) {
                accumulate_rows(in, r0, r1, 0, m, groups, G, shift, pc[t].data(), p1[t].data(),
                                p2[t].data(), plo[t].data(), phi[t].data(), true, &bad_group);
            } else {
                blocked_rows(in, r0, r1, groups, G, shift, pc[t].data(), p1[t].data(),
                             p2[t].data(), plo[t].data(), phi[t].data(), &bad_group);
            }
        }
        // Reduce in thread order so a fixed thread count gives identical bits.
        for (int t = 0; t < threads; ++t) {
            for (int64_t g = 0; g < G; ++g) count[g] += pc[t][g];
            for (int64_t i = 0; i < gm; ++i) {
                s1[i] += p1[t][i];
                s2[i] += p2[t][i];
                mn[i] = std::min(mn[i], plo[t][i]);
                mx[i] = std::max(mx[i], phi[t][i]);
            }
        }
    }
    if (bad_group)
        throw KernelError("groups: a group id is outside [0, n_groups); pass n_groups larger than the largest id");
}

void grouped_moments_rows_f32(const float* const* rows, int nr, int64_t m, const double* shift,
                              double* s1, double* s2, double* mn, double* mx) {
    switch (nr) {
        case 4: rows4_f32(rows[0], rows[1], rows[2], rows[3], shift, s1, s2, mn, mx, m); break;
        case 3: rows_n_f32<3>(rows, shift, s1, s2, mn, mx, m); break;
        case 2: rows_n_f32<2>(rows, shift, s1, s2, mn, mx, m); break;
        case 1: row_f32(rows[0], shift, s1, s2, mn, mx, 0, m); break;
        default: break;
    }
}

const float* f16_table() {
    static const std::vector<float> table = [] {
        std::vector<float> t(65536);
        for (uint32_t i = 0; i < 65536; ++i) t[i] = f16_to_float(static_cast<uint16_t>(i));
        return t;
    }();
    return table.data();
}

}  // namespace pydebias
