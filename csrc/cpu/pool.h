// The pooling loop of hashed_embedding_bag in two instruction sets, chosen at run time (cpu_has_avx2_fma).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstdlib>

namespace recsys_emb {

template <typename scalar_t, typename acc_t>
using PoolFn = void (*)(const scalar_t*, int64_t, const int64_t*, int64_t, int64_t, int64_t, int64_t, const int64_t*, int64_t,
                        const acc_t*, bool, scalar_t*, acc_t*);

#if defined(__x86_64__) && defined(__GNUC__)
#define RECSYS_EMB_AVX2_POOL 1
namespace avx2 {
template <typename scalar_t, typename acc_t>
PoolFn<scalar_t, acc_t> pool_fn(int64_t d);  // csrc/cpu/pool_avx2.cpp
}
// AVX2 + FMA + F16C present (and RECSYS_EMB_NO_AVX2 not set): use the avx2 pooling loop.
inline bool cpu_has_avx2_fma() {
  static const bool yes = [] {
    const char* off = std::getenv("RECSYS_EMB_NO_AVX2");
    if (off != nullptr && off[0] != '\0' && off[0] != '0') return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return yes;
}
#else
inline bool cpu_has_avx2_fma() { return false; }
#endif

}  // namespace recsys_emb

#define RECSYS_POOL_NS baseline
#include "pool_impl.h"
#undef RECSYS_POOL_NS
