// Pooling loop of hashed_embedding_bag, included (no include guard) once per instruction set into the
// namespace RECSYS_POOL_NS: `baseline` (x86-64 SSE2 / the compiler's default target, csrc/cpu/pool.h) and
// `avx2` (AVX2 + FMA + F16C, csrc/cpu/pool_avx2.cpp). ops_cpu.cpp picks one at run time.
namespace recsys_emb {
namespace RECSYS_POOL_NS {

inline void prefetch_row(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t x = 0; x < bytes; x += 64) __builtin_prefetch(c + x, 0, 1);
}

// Pool the bags [bag, tile_end) whose ids [first, last) were hashed into rows (tile-local, (ids, k)).
// DC > 0: the embedding dim is the compile-time constant DC, so a probe's accumulator lives in registers
// and the row loads of successive ids are independent (many cache misses in flight); DC == 0: any dim,
// accumulators in `scratch`. Row r + kPrefetchDistance is prefetched while row r is added.
constexpr int64_t kPrefetchDistance = 16;

template <typename scalar_t, typename acc_t, int DC>
void pool_tile(const scalar_t* __restrict__ w, int64_t d_rt, const int64_t* __restrict__ rows, int64_t first, int64_t last,
                      int64_t bag, int64_t tile_end, const int64_t* __restrict__ offsets, int64_t k, const acc_t* __restrict__ s,
                      bool mean, scalar_t* __restrict__ out, acc_t* __restrict__ scratch) {
  const int64_t d = DC > 0 ? DC : d_rt;
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(scalar_t));
  for (; bag < tile_end; ++bag) {
    const int64_t start = offsets[bag], end = offsets[bag + 1];
    const acc_t inv = (mean && end > start) ? acc_t(1) / static_cast<acc_t>(end - start) : acc_t(1);
    for (int64_t j = 0; j < k; ++j) {
      acc_t reg[DC > 0 ? DC : 1];
      acc_t* __restrict__ acc = DC > 0 ? reg : scratch;
      for (int64_t x = 0; x < d; ++x) acc[x] = acc_t(0);
      for (int64_t i = start; i < end; ++i) {
        const int64_t t = i - first;
        if (t + kPrefetchDistance < last - first) prefetch_row(w + rows[(t + kPrefetchDistance) * k + j] * d, row_bytes);
        const scalar_t* __restrict__ row = w + rows[t * k + j] * d;
        if (s != nullptr) {
          const acc_t sv = s[i];
          for (int64_t x = 0; x < d; ++x) acc[x] += sv * static_cast<acc_t>(row[x]);
        } else {
          for (int64_t x = 0; x < d; ++x) acc[x] += static_cast<acc_t>(row[x]);
        }
      }
      scalar_t* __restrict__ dst = out + (bag * k + j) * d;
      if (mean) {
        for (int64_t x = 0; x < d; ++x) dst[x] = static_cast<scalar_t>(acc[x] * inv);
      } else {
        for (int64_t x = 0; x < d; ++x) dst[x] = static_cast<scalar_t>(acc[x]);
      }
    }
  }
}

// The pooling function for embedding dim d (compile-time specialisations for the common dims).
template <typename scalar_t, typename acc_t>
PoolFn<scalar_t, acc_t> pool_fn(int64_t d) {
  switch (d) {
    case 16: return &pool_tile<scalar_t, acc_t, 16>;
    case 32: return &pool_tile<scalar_t, acc_t, 32>;
    case 64: return &pool_tile<scalar_t, acc_t, 64>;
    case 128: return &pool_tile<scalar_t, acc_t, 128>;
    default: return &pool_tile<scalar_t, acc_t, 0>;
  }
}

}  // namespace RECSYS_POOL_NS
}  // namespace recsys_emb
