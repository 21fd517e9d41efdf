// clustering: per-class dispersion (own-class distance, nearest other class, nearest centroid) in
// one pass over the rows, float64 per-class sums.
//
// Distances are taken as sum((x - mu)^2), not by the GEMM expansion
// ||x||^2 - 2 x.mu + ||mu||^2: with few centroids (NSF: one per class) the pass is bound
// by reading x, so the extra subtract costs nothing, and the difference form does not
// lose digits to cancellation when the rows sit far from the origin.
#include "dispersion.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "widen.h"

namespace pydebias {

namespace {

// Lane arrays of one cache line: GCC turns the l-loops into one vector per array
// (AVX-512), two (AVX2) or four (SSE), and the lanes are summed in a fixed order so
// every clone of a given width rounds the same way.
template <typename T, int L>
inline __attribute__((always_inline)) T lane_sum(const T* a) {
    T t[L];
    for (int l = 0; l < L; ++l) t[l] = a[l];
    for (int w = L / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; ++l) t[l] += t[l + w];
    return t[0];
}

// Squared distances of one row to k centroids. Four centroids share each load of the
// row, which stays in L1 while the centroid rows stream past.
template <typename T, int L>
inline __attribute__((always_inline)) void sq_dists(const T* __restrict x, const T* __restrict cent,
                                                     int64_t m, int64_t k, T* __restrict out) {
    const int64_t mv = m - m % L;
    int64_t j = 0;
    for (; j + 4 <= k; j += 4) {
        const T* c0 = cent + j * m;
        const T* c1 = c0 + m;
        const T* c2 = c1 + m;
        const T* c3 = c2 + m;
        T a0[L] = {}, a1[L] = {}, a2[L] = {}, a3[L] = {};
        for (int64_t i = 0; i < mv; i += L) {
            for (int l = 0; l < L; ++l) {
                const T v = x[i + l];
                const T d0 = v - c0[i + l], d1 = v - c1[i + l], d2 = v - c2[i + l], d3 = v - c3[i + l];
                a0[l] += d0 * d0;
                a1[l] += d1 * d1;
                a2[l] += d2 * d2;
                a3[l] += d3 * d3;
            }
        }
        T r0 = lane_sum<T, L>(a0), r1 = lane_sum<T, L>(a1), r2 = lane_sum<T, L>(a2), r3 = lane_sum<T, L>(a3);
        for (int64_t i = mv; i < m; ++i) {
            const T v = x[i];
            const T d0 = v - c0[i], d1 = v - c1[i], d2 = v - c2[i], d3 = v - c3[i];
            r0 += d0 * d0;
            r1 += d1 * d1;
            r2 += d2 * d2;
            r3 += d3 * d3;
        }
        out[j] = r0;
        out[j + 1] = r1;
        out[j + 2] = r2;
        out[j + 3] = r3;
    }
    for (; j < k; ++j) {
        const T* c0 = cent + j * m;
        // two chains so the adds of one row do not wait on each other's latency
        T a0[L] = {}, a1[L] = {};
        int64_t i = 0;
        for (; i + 2 * L <= mv; i += 2 * L) {
            for (int l = 0; l < L; ++l) {
                const T d0 = x[i + l] - c0[i + l], d1 = x[i + L + l] - c0[i + L + l];
                a0[l] += d0 * d0;
                a1[l] += d1 * d1;
            }
        }
        for (; i < mv; i += L) {
            for (int l = 0; l < L; ++l) {
                const T d0 = x[i + l] - c0[i + l];
                a0[l] += d0 * d0;
            }
        }
        for (int l = 0; l < L; ++l) a0[l] += a1[l];
        T r0 = lane_sum<T, L>(a0);
        for (i = mv; i < m; ++i) {
            const T d0 = x[i] - c0[i];
            r0 += d0 * d0;
        }
        out[j] = r0;
    }
}

PYDEBIAS_CLONES
void sq_dists_f32(const float* x, const float* cent, int64_t m, int64_t k, float* out) {
    sq_dists<float, 16>(x, cent, m, k, out);
}

PYDEBIAS_CLONES
void sq_dists_f64(const double* x, const double* cent, int64_t m, int64_t k, double* out) {
    sq_dists<double, 8>(x, cent, m, k, out);
}

inline void sq_dists_row(const float* x, const float* c, int64_t m, int64_t k, float* out) {
    sq_dists_f32(x, c, m, k, out);
}
inline void sq_dists_row(const double* x, const double* c, int64_t m, int64_t k, double* out) {
    sq_dists_f64(x, c, m, k, out);
}

PYDEBIAS_CLONES
void add_row_f32(const float* __restrict r, double* __restrict s, int64_t len) {
    for (int64_t j = 0; j < len; ++j) s[j] += static_cast<double>(r[j]);
}

PYDEBIAS_CLONES
void add_row_f64(const double* __restrict r, double* __restrict s, int64_t len) {
    for (int64_t j = 0; j < len; ++j) s[j] += r[j];
}

enum Bad : int { kNone = 0, kLabel = 1, kNoCentroid = 2, kNotFinite = 3 };

// Per-block partial sums; a block's rows are added in order, blocks in block order.
struct Partials {
    std::vector<int64_t> count, n_out;
    std::vector<double> sum_a, sum_s;
    Partials(int64_t nb, int64_t C) : count(nb * C), n_out(nb * C), sum_a(nb * C), sum_s(nb * C) {}
};

// T: the arithmetic type (double for float64 input, float otherwise).
template <typename T>
void run(const void* x, Elem elem, int64_t n, int64_t m, const int64_t* labels, int64_t C,
         const T* cent, int64_t K, const int64_t* owner, int64_t row_offset, int64_t* count,
         double* sum_a, double* sum_s, int64_t* n_out, int64_t* nearest) {
    // a fixed number of blocks per call whatever the thread count: the sums are then a
    // function of the input alone; at least 256 rows each so a block's partials amortise
    const int64_t bs = std::max<int64_t>(256, (n + 127) / 128);
    const int64_t nb = (n + bs - 1) / bs;
    Partials p(nb, C);
    std::vector<int64_t> bad_row(nb, -1);
    std::vector<int> bad_kind(nb, kNone);
    const T inf = std::numeric_limits<T>::infinity();
    const T big = std::numeric_limits<T>::max();

#pragma omp parallel if (nb > 1)
    {
        std::vector<T> dist(K);
        std::vector<float> wide(elem == Elem::F16 || elem == Elem::BF16 ? m : 0);
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < nb; ++b) {
            int64_t* pc = &p.count[b * C];
            int64_t* po = &p.n_out[b * C];
            double* pa = &p.sum_a[b * C];
            double* ps = &p.sum_s[b * C];
            const int64_t r1 = std::min(n, (b + 1) * bs);
            for (int64_t i = b * bs; i < r1; ++i) {
                const int64_t y = labels[i];
                if (y < 0 || y >= C) {
                    bad_row[b] = i, bad_kind[b] = kLabel;
                    break;
                }
                const T* row;
                if constexpr (std::is_same<T, double>::value) {
                    row = static_cast<const double*>(x) + i * m;
                } else {
                    if (elem == Elem::F32) {
                        row = static_cast<const float*>(x) + i * m;
                    } else {
                        widen_row(static_cast<const uint16_t*>(x) + i * m, elem, wide.data(), m);
                        row = wide.data();
                    }
                }
                sq_dists_row(row, cent, m, K, dist.data());
                T own = inf, other = inf, best = inf;
                int64_t jbest = -1;
                bool finite = true;
                for (int64_t j = 0; j < K; ++j) {
                    const T d = dist[j];
                    finite &= d <= big;  // false for NaN and +inf
                    if (d < best) best = d, jbest = j;
                    if (owner[j] == y)
                        own = std::min(own, d);
                    else
                        other = std::min(other, d);
                }
                if (!finite) {
                    bad_row[b] = i, bad_kind[b] = kNotFinite;
                    break;
                }
                if (own == inf) {
                    bad_row[b] = i, bad_kind[b] = kNoCentroid;
                    break;
                }
                const double a = std::sqrt(static_cast<double>(own));
                double s = 0.0;
                if (other != inf) {
                    const double bo = std::sqrt(static_cast<double>(other));
                    if (a != bo) s = (bo - a) / std::max(a, bo);
                }
                const int64_t near = owner[jbest];
                pc[y] += 1;
                pa[y] += a;
                ps[y] += s;
                po[y] += near != y;
                if (nearest) nearest[i] = near;
            }
        }
    }
    for (int64_t b = 0; b < nb; ++b) {
        if (bad_kind[b] == kNone) continue;
        const int64_t i = bad_row[b];
        const std::string row = std::to_string(i + row_offset);
        if (bad_kind[b] == kLabel)
            throw KernelError("labels: row " + row + " has class " + std::to_string(labels[i]) +
                              ", outside [0, " + std::to_string(C) + ")");
        if (bad_kind[b] == kNoCentroid)
            throw KernelError("labels: row " + row + " has class " + std::to_string(labels[i]) +
                              ", which has no centroid (its class mean is NaN or missing)");
        throw KernelError("x: row " + row + " contains NaN or inf (or values too large to square "
                          "in the input precision); drop or impute such rows");
    }
    for (int64_t b = 0; b < nb; ++b)
        for (int64_t c = 0; c < C; ++c) {
            count[c] += p.count[b * C + c];
            n_out[c] += p.n_out[b * C + c];
            sum_a[c] += p.sum_a[b * C + c];
            sum_s[c] += p.sum_s[b * C + c];
        }
}

}  // namespace

void dispersion_accumulate(const void* x, Elem elem, int64_t n, int64_t m, const int64_t* labels,
                           int64_t C, const void* centroids, int64_t K, const int64_t* owner,
                           int64_t row_offset, int64_t* count, double* sum_a, double* sum_s,
                           int64_t* n_out, int64_t* nearest) {
    if (K < 1) throw KernelError("centroids: need at least one centroid");
    if (C < 1) throw KernelError("n_classes: must be positive");
    for (int64_t j = 0; j < K; ++j)
        if (owner[j] < 0 || owner[j] >= C)
            throw KernelError("owner: centroid " + std::to_string(j) + " names class " +
                              std::to_string(owner[j]) + ", outside [0, " + std::to_string(C) + ")");
    const bool wide = elem == Elem::F64;
    for (int64_t v = 0; v < K * m; ++v) {
        const double c = wide ? static_cast<const double*>(centroids)[v]
                              : static_cast<double>(static_cast<const float*>(centroids)[v]);
        if (!std::isfinite(c))
            throw KernelError("centroids: centroid " + std::to_string(v / m) + " is not finite");
    }
    if (n == 0) return;
    if (wide)
        run<double>(x, elem, n, m, labels, C, static_cast<const double*>(centroids), K, owner,
                    row_offset, count, sum_a, sum_s, n_out, nearest);
    else
        run<float>(x, elem, n, m, labels, C, static_cast<const float*>(centroids), K, owner,
                   row_offset, count, sum_a, sum_s, n_out, nearest);
}

void class_sums_accumulate(const void* x, Elem elem, int64_t n, int64_t m, const int64_t* labels,
                           int64_t C, int64_t* count, double* sums) {
    if (C < 1) throw KernelError("n_classes: must be positive");
    for (int64_t i = 0; i < n; ++i)
        if (labels[i] < 0 || labels[i] >= C)
            throw KernelError("labels: row " + std::to_string(i) + " has class " +
                              std::to_string(labels[i]) + ", outside [0, " + std::to_string(C) + ")");
    for (int64_t i = 0; i < n; ++i) ++count[labels[i]];
    // column stripes of whole cache lines; narrow rows are not worth splitting
    int nt = 1;
#ifdef _OPENMP
    nt = omp_get_max_threads();
#endif
    const int64_t stripe = m < 128 ? m : ((m + nt - 1) / nt + 15) / 16 * 16;
    const int64_t ns = (m + stripe - 1) / stripe;
#pragma omp parallel for schedule(static, 1) if (ns > 1 && n > 1024)
    for (int64_t t = 0; t < ns; ++t) {
        const int64_t j0 = t * stripe, len = std::min(m, j0 + stripe) - j0;
        std::vector<float> wide(elem == Elem::F16 || elem == Elem::BF16 ? len : 0);
        for (int64_t i = 0; i < n; ++i) {
            double* s = sums + labels[i] * m + j0;
            if (elem == Elem::F64) {
                add_row_f64(static_cast<const double*>(x) + i * m + j0, s, len);
            } else if (elem == Elem::F32) {
                add_row_f32(static_cast<const float*>(x) + i * m + j0, s, len);
            } else {
                widen_row(static_cast<const uint16_t*>(x) + i * m + j0, elem, wide.data(), len);
                add_row_f32(wide.data(), s, len);
            }
        }
    }
}

}  // namespace pydebias
