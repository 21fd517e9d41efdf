#pragma once
#include "common.h"

namespace pydebias {

// clustering: clusterness of labelled rows around class centroids, in one pass over the rows.
//
// x is n x m, row-major; centroids is K x m, row-major, float64 when elem is F64 and
// float32 otherwise (half inputs are widened to float32 row by row); owner[j] in [0, C)
// is the class of centroid j (class means: K = C, owner[j] = j; per-class k-means: several
// centroids per class). For row i of class c = labels[i], with squared distances d_ij,
//   a_i = sqrt(min over j owned by c of d_ij)        (distance to its own class)
//   b_i = sqrt(min over j not owned by c of d_ij)    (distance to the nearest other class)
//   j*  = argmin_j d_ij, ties to the lowest j
// it adds count[c] += 1, sum_a[c] += a_i, sum_s[c] += (b_i - a_i) / max(a_i, b_i)
// (0 when a_i = b_i, and when no other class has a centroid), n_out[c] += owner[j*] != c,
// and writes owner[j*] to nearest[i] unless nearest is null. Accumulators are only added
// to, so a caller may feed a matrix chunk by chunk; the sums are float64 and do not depend
// on the number of threads (rows are reduced in fixed blocks, combined in block order).
//
// Throws KernelError on a label outside [0, C), a row whose class owns no centroid, a
// centroid that is not finite, or a row with a non-finite distance (NaN or inf in the
// row, or values too large to square); row numbers in messages are offset by row_offset.
void dispersion_accumulate(const void* x, Elem elem, int64_t n, int64_t m, const int64_t* labels,
                           int64_t C, const void* centroids, int64_t K, const int64_t* owner,
                           int64_t row_offset, int64_t* count, double* sum_a, double* sum_s,
                           int64_t* n_out, int64_t* nearest);

// Per-class sums of the rows of x (n x m, row-major) in float64: count[c] += rows of class
// c, sums[c, :] += those rows (C x m). Threads split the columns, so every sum adds its
// rows in row order: the result is the same for any thread count and any chunking of the
// rows. NaN and inf propagate into the sums (the caller checks them). Throws KernelError
// on a label outside [0, C).
void class_sums_accumulate(const void* x, Elem elem, int64_t n, int64_t m, const int64_t* labels,
                           int64_t C, int64_t* count, double* sums);

}  // namespace pydebias
