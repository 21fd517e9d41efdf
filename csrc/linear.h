#pragma once
#include "common.h"

namespace pydebias {

// Arg-max of a small linear head on rows of 16-bit or float32 features:
// out[i] = argmax_c (x_i . w_c + b_c), x n x m row-major (float16/bfloat16 widened to
// float32 exactly, row by row), w C x m and b C float32. Logits are float32 sums in SIMD
// order (not torch's): on exact near-ties the winner may differ from torch's GEMM.
// Ties go to the lowest class and a NaN logit wins (as torch.argmax). The head is read
// once per row from L1, so one pass over x is the whole cost for small C (the torch path
// widens a copy and runs a skinny GEMM over it: ~2.5x one read of a float16 memmap).
// With AVX-512 and C <= 4, 16-bit rows are converted in registers, never stored widened.
void linear_argmax(const void* x, Elem elem, int64_t n, int64_t m, const float* w, const float* b,
                   int64_t C, int64_t* out);

}  // namespace pydebias
