#pragma once
#include "common.h"

namespace pydebias {

// 16-bit floats (IEEE half or bfloat16) -> float32, exactly, every bit pattern included
// (subnormals, +-inf, NaN payloads). Branch-free, so the compiler vectorises it.
void widen_row(const uint16_t* in, Elem elem, float* out, int64_t n);

// The same over n elements with OpenMP (for large row blocks).
void widen(const uint16_t* in, Elem elem, float* out, int64_t n);

}  // namespace pydebias
