#pragma once
#include "common.h"

namespace pydebias {

// Adds rows of x (n x m, row-major) into per-group accumulators of shape (G, m):
// count[G], s1 = sum(x - shift[g]), s2 = sum((x - shift[g])^2), mn = min, mx = max;
// shift is (G, m), one row per group (a value of that group, so no cancellation).
// Throws KernelError on a group id outside [0, G). NaN is not checked here: it
// propagates into s1, where the caller looks for it (no compare in the hot loop).
void grouped_moments_accumulate(const void* x, Elem elem, int64_t n, int64_t m,
                                const int64_t* groups, int64_t G, const double* shift,
                                int64_t* count, double* s1, double* s2, double* mn, double* mx);

// One to four rows of one group added into that group's accumulator rows (length m),
// around that group's shift row:
// the kernel of the row-split path, for a caller that buckets rows by group itself and
// fuses another pass over the same cache-resident rows (grouped moments + grouped quantiles).
void grouped_moments_rows_f32(const float* const* rows, int nr, int64_t m, const double* shift,
                              double* s1, double* s2, double* mn, double* mx);

}  // namespace pydebias
