// The forward engine compiled for AVX2 + FMA + F16C (used only when the CPU has them, see pool.h). The
// target pragma comes after every include, so only the functions of pool_impl.h (in namespace
// recsys_emb::avx2) get these instructions; inline library code keeps the default target. float32 rows
// of 16/32/64/128 floats are accumulated with explicit AVX2 intrinsics (RECSYS_POOL_AVX2).
#include "pool.h"

#ifdef RECSYS_EMB_AVX2_POOL
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define RECSYS_POOL_NS avx2
#define RECSYS_POOL_AVX2 1
#include "pool_impl.h"
#undef RECSYS_POOL_AVX2
#undef RECSYS_POOL_NS

namespace recsys_emb {
namespace avx2 {
template ForwardFn<float, float> forward_fn<float, float>(int64_t);
template ForwardFn<double, double> forward_fn<double, double>(int64_t);
template ForwardFn<c10::Half, float> forward_fn<c10::Half, float>(int64_t);
template ForwardFn<c10::BFloat16, float> forward_fn<c10::BFloat16, float>(int64_t);
HashFn avx2_hash_fn() { return hash_fn(); }
}  // namespace avx2
}  // namespace recsys_emb
#pragma GCC pop_options
#endif
