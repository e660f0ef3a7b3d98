// The pooling loop compiled for AVX2 + FMA + F16C (used only when the CPU has them, see pool.h). The
// target pragma comes after every include, so only the functions of pool_impl.h (in namespace
// recsys_emb::avx2) get these instructions; inline library code keeps the default target.
#include "pool.h"

#ifdef RECSYS_EMB_AVX2_POOL
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define RECSYS_POOL_NS avx2
#include "pool_impl.h"
#undef RECSYS_POOL_NS

namespace recsys_emb {
namespace avx2 {
template PoolFn<float, float> pool_fn<float, float>(int64_t);
template PoolFn<double, double> pool_fn<double, double>(int64_t);
template PoolFn<c10::Half, float> pool_fn<c10::Half, float>(int64_t);
template PoolFn<c10::BFloat16, float> pool_fn<c10::BFloat16, float>(int64_t);
}  // namespace avx2
}  // namespace recsys_emb
#pragma GCC pop_options
#endif
