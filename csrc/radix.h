#pragma once
#include "common.h"

namespace pydebias {

// The distributed radix select's local work (pydebias.distributed.radix_select_csr).
// Values live in per-cell regions of one array: cell c holds live[c] of them from off[c].

// Order-preserving unsigned keys of n float32 (uint32 keys) or float64 (uint64 keys)
// values: key order = value order, -0 < +0, NaN above +inf.
void radix_keys(const void* values, Elem elem, int64_t n, void* keys);

// Per cell, the smallest and largest of its live keys (kmin = all ones, kmax = 0 for an
// empty cell).
template <typename K>
void key_range(const K* keys, const int64_t* off, const int64_t* live, int64_t n_cells, K* kmin, K* kmax);

// One round over keys relative to their cell's base (r = key - base[c], all r <= span[c]):
// in each cell, the keys whose bits of r above `shift + digit_bits` equal the cell's prefix
// are counted in hist[c * 2^digit_bits + digit] (digit = (r >> shift) & (2^digit_bits - 1))
// and moved to the front of the cell's region (in order); live[c] becomes their number. One
// read of each cell's survivors, none where span[c] >> shift is 0 (every digit 0), cells in
// parallel (each owns its region and its bins).
template <typename K>
void radix_round(K* keys, const int64_t* off, int64_t* live, const K* base, const K* span, const K* prefix,
                 int64_t n_cells, int shift, int digit_bits, int32_t* hist);

// After a round's counts are summed over the ranks: per cell, the digit whose bin holds
// the cell's remaining rank k[c] goes into prefix[c] at `shift`, and k[c] becomes the rank
// within that bin. A cell whose k[c] is not below its total gets the last digit; callers
// only ask for ranks that exist.
template <typename K>
void radix_choose(const int32_t* hist, int64_t n_cells, int digit_bits, int shift, int64_t* k, K* prefix);

// Per cell, four counts of its live values against [lo[c], hi[c]] (float64 bounds, +-inf
// allowed): out[0][c] = #(v < lo), out[1][c] = #(v <= lo), out[2][c] = #(v < hi),
// out[3][c] = #(v <= hi), out laid out (4, n_cells); returns the number of NaN values.
int64_t count_bracket(const void* values, Elem elem, const int64_t* off, const int64_t* live, const double* lo,
                      const double* hi, int64_t n_cells, int64_t* out);

}  // namespace pydebias
