// Local work of the distributed radix select (see radix.h). Numpy did each round in six
// passes over a (key, cell) list; here one pass per cell region, and no cell ids at all.
#include "radix.h"

namespace pydebias {

void radix_keys(const void* values, Elem elem, int64_t n, void* keys) {
    if (elem == Elem::F64) {
        const uint64_t* u = static_cast<const uint64_t*>(values);
        uint64_t* k = static_cast<uint64_t*>(keys);
#pragma omp parallel for schedule(static) if (n > (1 << 20))
        for (int64_t i = 0; i < n; ++i) k[i] = (u[i] >> 63) ? ~u[i] : (u[i] | (uint64_t(1) << 63));
    } else {
        const uint32_t* u = static_cast<const uint32_t*>(values);
        uint32_t* k = static_cast<uint32_t*>(keys);
#pragma omp parallel for schedule(static) if (n > (1 << 20))
        for (int64_t i = 0; i < n; ++i) k[i] = (u[i] >> 31) ? ~u[i] : (u[i] | (uint32_t(1) << 31));
    }
}

template <typename K>
void key_range(const K* keys, const int64_t* off, const int64_t* live, int64_t n_cells, K* kmin, K* kmax) {
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t c = 0; c < n_cells; ++c) {
        K lo = static_cast<K>(~K(0)), hi = 0;
        const K* kc = keys + off[c];
        for (int64_t i = 0, n = live[c]; i < n; ++i) {
            lo = kc[i] < lo ? kc[i] : lo;
            hi = kc[i] > hi ? kc[i] : hi;
        }
        kmin[c] = lo;
        kmax[c] = hi;
    }
}

template <typename K>
void radix_round(K* keys, const int64_t* off, int64_t* live, const K* base, const K* span, const K* prefix,
                 int64_t n_cells, int shift, int digit_bits, int32_t* hist) {
    constexpr int kBits = static_cast<int>(sizeof(K) * 8);
    const int top = shift + digit_bits;
    // the bits already decided: above this round's digit (none while top reaches the key width)
    const K decided = top >= kBits ? K(0) : static_cast<K>(~K(0) << top);
    const K digit_mask = static_cast<K>((K(1) << digit_bits) - 1);
    const int64_t n_bins = int64_t(1) << digit_bits;
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t c = 0; c < n_cells; ++c) {
        K* kc = keys + off[c];
        int32_t* h = hist + c * n_bins;
        if ((span[c] >> shift) == 0) {  // every key's digits from here up are 0: all stay, no pass
            h[0] += static_cast<int32_t>(live[c]);
            continue;
        }
        const K b = base[c], p = prefix[c] & decided;
        int64_t out = 0;
        for (int64_t i = 0, n = live[c]; i < n; ++i) {
            const K k = kc[i];
            const K r = static_cast<K>(k - b);
            if ((r & decided) != p) continue;  // outside the keys still in the running
            h[static_cast<int64_t>((r >> shift) & digit_mask)] += 1;
            kc[out++] = k;
        }
        live[c] = out;
    }
}

template void key_range<uint32_t>(const uint32_t*, const int64_t*, const int64_t*, int64_t, uint32_t*, uint32_t*);
template void key_range<uint64_t>(const uint64_t*, const int64_t*, const int64_t*, int64_t, uint64_t*, uint64_t*);
template void radix_round<uint32_t>(uint32_t*, const int64_t*, int64_t*, const uint32_t*, const uint32_t*,
                                    const uint32_t*, int64_t, int, int, int32_t*);
template void radix_round<uint64_t>(uint64_t*, const int64_t*, int64_t*, const uint64_t*, const uint64_t*,
                                    const uint64_t*, int64_t, int, int, int32_t*);

template <typename K>
void radix_choose(const int32_t* hist, int64_t n_cells, int digit_bits, int shift, int64_t* k, K* prefix) {
    const int64_t n_bins = int64_t(1) << digit_bits;
    for (int64_t c = 0; c < n_cells; ++c) {
        const int32_t* h = hist + c * n_bins;
        int64_t rank = k[c], d = 0;
        while (d < n_bins - 1 && rank >= h[d]) rank -= h[d++];
        k[c] = rank;
        prefix[c] |= static_cast<K>(static_cast<K>(d) << shift);
    }
}

template void radix_choose<uint32_t>(const int32_t*, int64_t, int, int, int64_t*, uint32_t*);
template void radix_choose<uint64_t>(const int32_t*, int64_t, int, int, int64_t*, uint64_t*);

template <typename T>
static int64_t count_bracket_typed(const T* v, const int64_t* off, const int64_t* live, const double* lo,
                                   const double* hi, int64_t n_cells, int64_t* out) {
    int64_t nans = 0;
#pragma omp parallel for schedule(dynamic, 16) reduction(+ : nans)
    for (int64_t c = 0; c < n_cells; ++c) {
        int64_t b_lo = 0, le_lo = 0, b_hi = 0, le_hi = 0;
        const T* vc = v + off[c];
        const double l = lo[c], h = hi[c];
        for (int64_t i = 0, n = live[c]; i < n; ++i) {
            const double x = static_cast<double>(vc[i]);
            b_lo += x < l;
            le_lo += x <= l;
            b_hi += x < h;
            le_hi += x <= h;
            nans += x != x;
        }
        out[c] = b_lo;
        out[n_cells + c] = le_lo;
        out[2 * n_cells + c] = b_hi;
        out[3 * n_cells + c] = le_hi;
    }
    return nans;
}

int64_t count_bracket(const void* values, Elem elem, const int64_t* off, const int64_t* live, const double* lo,
                      const double* hi, int64_t n_cells, int64_t* out) {
    if (elem == Elem::F64)
        return count_bracket_typed(static_cast<const double*>(values), off, live, lo, hi, n_cells, out);
    return count_bracket_typed(static_cast<const float*>(values), off, live, lo, hi, n_cells, out);
}

}  // namespace pydebias
