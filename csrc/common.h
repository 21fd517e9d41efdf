// Shared helpers for the CPU kernels: element decoding for the input dtypes
// and the error type the bindings turn into Python exceptions.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

// Platform headers, included here once: the kernels test the CPU at run time
// (cpu_has_* below) and OpenMP may be absent (a build without -fopenmp).
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

// Hot loops are compiled for AVX-512, AVX2 and baseline x86-64; the loader picks one at
// run time, so one wheel runs on any x86-64 and still uses the wide units where present.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(PYDEBIAS_NO_AVX512_BUILD)
// PYDEBIAS_NO_AVX512_BUILD=1 at build time: no AVX-512 clone, cpu_has_avx512() false; how
// the end-to-end bench measures a CPU without AVX-512 on one that has it
#define PYDEBIAS_CLONES __attribute__((target_clones("avx2", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYDEBIAS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PYDEBIAS_CLONES
#endif

namespace pydebias {

#if defined(__x86_64__) && defined(__GNUC__)
// CPU features, the one place they are detected (each probe runs once per process).
// PYDEBIAS_NO_AVX512=1 hides AVX-512 so the AVX2 and generic paths can be tested on an
// AVX-512 machine; it is read at each call, so a test may set it in-process.
inline bool cpu_has_avx512() {
#ifdef PYDEBIAS_NO_AVX512_BUILD
    return false;
#else
    static const bool yes = __builtin_cpu_supports("avx512f");
    return yes && !std::getenv("PYDEBIAS_NO_AVX512");
#endif
}
inline bool cpu_has_avx2() {
    static const bool yes = __builtin_cpu_supports("avx2");
    return yes;
}
inline bool cpu_has_f16c() {
    static const bool yes = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2");
    return yes;
}
#endif

// Input element kinds, decided once in the binding from the numpy dtype.
// Half-precision floats arrive as raw 16-bit patterns (numpy has no bf16).
enum class Elem : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

inline float bf16_to_float(uint16_t h) {
    uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// IEEE binary16 -> binary32, exact for every pattern (subnormals, inf, NaN).
inline float f16_to_float(uint16_t h) {
    uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {  // subnormal: renormalise
            int e = -1;
            do {
                ++e;
                man <<= 1;
            } while ((man & 0x400u) == 0);
            bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// A 65536-entry table turns fp16 decoding into one load; built once.
const float* f16_table();

struct KernelError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

}  // namespace pydebias
