#pragma once
#include "common.h"

namespace pydebias {

// exact grouped quantiles by sample-bracketed selection, in three phases the caller
// drives (so a memmap streams through phase 2 one chunk of rows at a time):
//
//  1. quantile_brackets: from a sample of rows (s x m, with their group ids) pick, per
//     (level q, group g, column c), a bracket [lo, hi] that very probably holds the
//     target order statistics of the whole data; also an estimate of how many values
//     fall strictly inside it (the caller sizes the keep buffers from it).
//     The bracket may name a point mass (a value repeated in the sample inside it, or
//     lo == hi): its copies are counted, not kept -- ReLU zeros cost nothing.
//  2. quantile_collect: one pass over rows. Per (q, g, c) it counts values < lo and
//     values == mass, and appends the others in [lo, hi] to that bracket's region of
//     `keep`; the count of values not > hi then follows from these (no compare of its
//     own). A region that fills up is marked overflowed (fill = -1).
//     NaN compares "not > hi" and is kept, so phase 3 finds it without a compare here.
//  3. quantile_select: per (q, g, c) finds the order statistics of rank r_lo and r_hi
//     from the counts and an nth_element over the kept values; where the bracket missed
//     (rank below lo / above hi, or an overflowed region) it sets miss = 1 and the caller
//     falls back to an exact selection over that one column.
//
// `keep` holds the kept values in the compare type: float32 for 32- and 16-bit input
// (exact), float64 for float64 input.
//
// Counter layout: cnt is (3, Q, G, m) int64: [0] v < lo, [1] !(v > hi), [2] v == mass.
// [1] is rewritten by every call from [0], [2] and the fill (-1 where overflowed).
// lo, hi, mass are (Q, G, m) float64 (mass NaN: none). Ranks are (Q, G, 2) int64
// (lower, higher), 0-based, ignored where a group is empty.

void quantile_brackets(const void* sample, Elem elem, int64_t s, int64_t m,
                       const int64_t* sample_groups, int64_t G, const int64_t* count,
                       const int64_t* ranks, int64_t Q, double z, double* lo, double* hi,
                       double* mass, int64_t* expect);

// Row r of x starts at element r * stride (stride >= m: a strided sample of rows is
// read in place). Throws KernelError on a group id outside [0, G), and on a bracket of a
// group with rows here that has lo > hi (or NaN) or a mass outside [lo, hi].
void quantile_collect(const void* x, Elem elem, int64_t n, int64_t m, int64_t stride,
                      const int64_t* groups, int64_t G, int64_t Q, const double* lo,
                      const double* hi, const double* mass, int64_t* cnt, void* keep,
                      const int64_t* keep_off, int64_t* keep_fill);

// grouped moments and grouped quantiles phase 2 in one read of X (contiguous rows): adds the rows into the
// accumulators of grouped_moments_accumulate and counts/keeps them as quantile_collect
// does, each block of rows counted while it is still in cache after its moments update.
// Float64 input runs the two passes one after the other.
void moments_quantile_collect(const void* x, Elem elem, int64_t n, int64_t m,
                              const int64_t* groups, int64_t G, const double* shift,
                              int64_t* count, double* s1, double* s2, double* mn, double* mx,
                              int64_t Q, const double* lo, const double* hi, const double* mass,
                              int64_t* cnt, void* keep, const int64_t* keep_off,
                              int64_t* keep_fill);

// Throws KernelError on NaN among the kept values (a NaN in the data is always kept,
// unless its region overflowed: then the caller's fallback must look).
void quantile_select(int64_t Q, int64_t G, int64_t m, const int64_t* count, const int64_t* ranks,
                     const double* mass, const int64_t* cnt, const void* keep, bool wide,
                     const int64_t* keep_off, const int64_t* keep_fill, double* lower,
                     double* higher, uint8_t* miss);

}  // namespace pydebias
