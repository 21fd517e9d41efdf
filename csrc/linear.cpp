// Fused predict for small heads: widen a row into L1, take its C dot products, keep the
// arg-max; rows are split across threads in fixed blocks.
#include "linear.h"
#include "widen.h"

#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pydebias {

namespace {

PYDEBIAS_CLONES
float dot(const float* __restrict a, const float* __restrict w, int64_t m) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < m; ++k) s += a[k] * w[k];
    return s;
}

}  // namespace

void linear_argmax(const void* x, Elem elem, int64_t n, int64_t m, const float* w, const float* b,
                   int64_t C, int64_t* out) {
    if (elem == Elem::F64) throw KernelError("linear_argmax: expects float32, float16 or bfloat16 rows");
    if (C < 1) throw KernelError("weight: the head has no classes");
#pragma omp parallel
    {
        std::vector<float> row(elem == Elem::F32 ? 0 : m);
#pragma omp for schedule(static, 256)
        for (int64_t i = 0; i < n; ++i) {
            const float* r;
            if (elem == Elem::F32) {
                r = static_cast<const float*>(x) + i * m;
            } else {
                widen_row(static_cast<const uint16_t*>(x) + i * m, elem, row.data(), m);
                r = row.data();
            }
            int64_t best = 0;
            float top = dot(r, w, m) + b[0];
            for (int64_t c = 1; c < C; ++c) {
                const float v = dot(r, w + c * m, m) + b[c];
                if (v > top || (v != v && top == top)) {  // the first NaN wins, as in torch
                    top = v;
                    best = c;
                }
            }
            out[i] = best;
        }
    }
}

}  // namespace pydebias
