// The forward engine of hashed_embedding_bag (fused hash + gather + pool of a range of bags, pool_impl.h)
// in two instruction sets, chosen at run time (cpu_has_avx2_fma).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "../hash.h"

namespace recsys_emb {

// Inputs of the forward, as raw pointers (contiguous int64 ids / feature indices / offsets; coefficients
// (F, K, 3); per-feature FastMod and "coefficients in [0, p)" flags; output (B, K, D)).
template <typename scalar_t, typename acc_t>
struct FwdArgs {
  const scalar_t* w;  // (m, d) table
  int64_t m, d, k, f;
  const int64_t *vp, *fp, *cp, *mp;
  const FastMod* mods;
  const char* fast;
  const int64_t* offsets;  // (B + 1,)
  const acc_t* psw;        // per-sample weights or nullptr
  bool mean;
  scalar_t* out;
  bool stream;  // output far larger than the caches (and 32-byte aligned): non-temporal stores where supported
};

// Bad input found by the engine: code 1 = feature index a outside [0, b); code 2 = hashed row a >= b table rows.
struct FwdStatus {
  int64_t code = 0, a = 0, b = 0;
};

// Pool bags [b0, b1) (every probe) into out; `scratch` holds d accumulators (generic dims). False on bad input.
template <typename scalar_t, typename acc_t>
using ForwardFn = bool (*)(const FwdArgs<scalar_t, acc_t>&, int64_t, int64_t, acc_t*, FwdStatus*);

// multi_probe_hash of ids [i0, i1) into out (N, K) (no table: FwdArgs::m must exceed every row). False on bad input.
using HashFn = bool (*)(const FwdArgs<float, float>&, int64_t, int64_t, int64_t*, FwdStatus*);

#if defined(__x86_64__) && defined(__GNUC__)
#define RECSYS_EMB_AVX2_POOL 1
namespace avx2 {
template <typename scalar_t, typename acc_t>
ForwardFn<scalar_t, acc_t> forward_fn(int64_t d);  // csrc/cpu/pool_avx2.cpp
HashFn avx2_hash_fn();                              // csrc/cpu/pool_avx2.cpp
}
// AVX2 + FMA + F16C present (and RECSYS_EMB_NO_AVX2 not set): use the avx2 forward engine.
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
