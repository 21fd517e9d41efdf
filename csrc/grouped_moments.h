#pragma once
#include "common.h"

#include <vector>

namespace pydebias {

// Adds rows of x (n x m, row-major) into per-group accumulators of shape (G, m):
// count[G], s1 = sum(x - shift), s2 = sum((x - shift)^2), mn = min, mx = max.
// Throws KernelError on a group id outside [0, G). NaN is not checked here: it
// propagates into s1, where the caller looks for it (no compare in the hot loop).
void grouped_moments_accumulate(const void* x, Elem elem, int64_t n, int64_t m,
                                const int64_t* groups, int64_t G, const double* shift,
                                int64_t* count, double* s1, double* s2, double* mn, double* mx);

// One block of float32 rows (row r at x + r * m, ids already checked) added into
// accumulators of shape (G, m): the same per-block update the row-split path uses, for
// a caller that fuses another pass over the same cache-resident block (K1 + K2).
// order/start are scratch the caller keeps between blocks.
void grouped_moments_block_f32(const float* x, int64_t m, int64_t nrows, const int64_t* groups,
                               int64_t G, const double* shift, int64_t* count, double* s1,
                               double* s2, double* mn, double* mx, std::vector<int64_t>& order,
                               std::vector<int64_t>& start);

// One to four rows of one group added into that group's accumulator rows (length m):
// the kernel of grouped_moments_block_f32, for callers that bucket rows themselves.
void grouped_moments_rows_f32(const float* const* rows, int nr, int64_t m, const double* shift,
                              double* s1, double* s2, double* mn, double* mx);

}  // namespace pydebias
