// Forward engine of hashed_embedding_bag (hash + gather + pool of a range of bags), included (no include
// guard) once per instruction set into the namespace RECSYS_POOL_NS: `baseline` (x86-64 SSE2 / the
// compiler's default target, csrc/cpu/pool.h) and `avx2` (AVX2 + FMA + F16C, csrc/cpu/pool_avx2.cpp).
// ops_cpu.cpp picks one at run time and schedules the ranges over threads.
//
// Software pipeline over the ids of the range: while the rows of ids i .. i + 7 are added to their bags'
// accumulators, the block of 8 ids `ids_ahead` later (16 - 64 ids, about 64 cache lines of rows) is
// hashed and its rows prefetched. The integer hash of later ids then runs while the row loads of
// earlier ids are in flight (instead of a hash phase followed by a memory-stall phase), and the rows are
// mostly in L1 when they are added. The 8 ids of a block are hashed together (AVX2: 4 in SIMD lanes
// + 4 scalar, interleaved), which is ~2x faster than one id at a time. Accumulators live in registers for the specialised dims; every bag
// adds its rows in id order, starting from 0 (unweighted float sums are bit-identical with
// nn.EmbeddingBag and between the two instruction sets).
//
// No TORCH_CHECK here (this file is compiled with AVX2 enabled: no inline library code may be
// instantiated in it); errors are returned in FwdStatus and raised by the caller.
namespace recsys_emb {
namespace RECSYS_POOL_NS {

constexpr int64_t kBlock = 8;   // ids hashed together (interleaved: independent dependency chains)
// Ids hashed + prefetched ahead of the one being added: about kLinesAhead cache lines of rows in flight
// (64 ids of 64-byte rows, 16 ids of 256-byte rows), a multiple of kBlock in [kMinAhead, kMaxAhead].
constexpr int64_t kLinesAhead = 64, kMinAhead = 16, kMaxAhead = 64;
constexpr int64_t kRing = 128;  // rows of the hashed ids in flight: a power of two >= kMaxAhead + kBlock
static_assert((kRing & (kRing - 1)) == 0 && kRing >= kMaxAhead + kBlock && kMinAhead % kBlock == 0, "bad pipeline sizes");

inline int64_t ids_ahead(int64_t row_bytes) {
  const int64_t lines = std::max<int64_t>(1, (row_bytes + 63) / 64);
  return std::clamp<int64_t>(kLinesAhead / lines / kBlock * kBlock, kMinAhead, kMaxAhead);
}

using u128 = unsigned __int128;

// salted_row_fast (hash.h) of L ids at once, written step by step over the L ids so that their
// dependency chains interleave (the out-of-order window of a core holds several ids' worth of the
// multiplications, instead of ~one long chain). Same bits as salted_row_fast.
template <int L>
inline __attribute__((always_inline)) void salted_rows_fast(const int64_t* __restrict__ v, const int64_t* c, const FastMod& mod,
                                                            int64_t* __restrict__ out) {
  const uint64_t c0 = static_cast<uint64_t>(c[0]), c1 = static_cast<uint64_t>(c[1]), b = static_cast<uint64_t>(c[2]);
  const uint64_t p = static_cast<uint64_t>(kP61), m = mod.m, magic = mod.magic;
  uint64_t z[L], s[L];
  for (int l = 0; l < L; ++l) z[l] = static_cast<uint64_t>(v[l]);
  for (int l = 0; l < L; ++l) z[l] = (z[l] ^ (z[l] >> 30)) * 0xBF58476D1CE4E5B9ull;  // premix64
  for (int l = 0; l < L; ++l) z[l] = (z[l] ^ (z[l] >> 27)) * 0x94D049BB133111EBull;
  for (int l = 0; l < L; ++l) z[l] ^= z[l] >> 31;
  for (int l = 0; l < L; ++l) {
    const u128 t = static_cast<u128>(c0) * (z[l] & 0xFFFFFFFFull) + static_cast<u128>(c1) * (z[l] >> 32) + b;  // < 2^94
    const uint64_t lo = static_cast<uint64_t>(t), hi = static_cast<uint64_t>(t >> 64);
    s[l] = (lo & p) + ((hi << 3) | (lo >> 61));  // (t & p) + (t >> 61)
  }
  for (int l = 0; l < L; ++l) s[l] = (s[l] & p) + (s[l] >> 61);
  for (int l = 0; l < L; ++l) s[l] = s[l] >= p ? s[l] - p : s[l];
  for (int l = 0; l < L; ++l) {
    const uint64_t q = static_cast<uint64_t>((static_cast<u128>(s[l]) * magic) >> 64);
    const uint64_t r = s[l] - q * m;
    out[l] = static_cast<int64_t>(r >= m ? r - m : r);
  }
}

#ifdef RECSYS_POOL_AVX2
// salted_row_fast of 4 ids in the 64-bit lanes of a ymm register (AVX2 has no 64-bit multiply: every
// product is built from 32 x 32 -> 64-bit _mm256_mul_epu32). Valid for coefficients in [0, p) (the caller
// checks) and any table size m >= 1; same bits as salted_row_fast:
//   premix64 with 64 x 64 -> low 64-bit products;
//   a0 lo + a1 hi + b mod p with a = ah 2^32 + al: al x < 2^64 folded once, (a0h lo + a1h hi) 2^32 folded
//   as ((H mod 2^29) << 32) + (H >> 29) because 2^61 = 1 mod p; then two folds and one subtraction of p;
//   mod m by the reciprocal (q = high 64 bits of s * magic from four 32-bit products, r = s - q m, one
//   correction). Every intermediate stays below 2^63, so the signed 64-bit compares are exact.
struct SimdHash4 {
  __m256i c0l, c0h, c1l, c1h, b, m, ml, mh, magl, magh;
  explicit SimdHash4(const int64_t* c = nullptr, const FastMod* mod = nullptr) {
    if (c == nullptr) return;
    c0l = _mm256_set1_epi64x(c[0] & 0xFFFFFFFFll), c0h = _mm256_set1_epi64x(c[0] >> 32);
    c1l = _mm256_set1_epi64x(c[1] & 0xFFFFFFFFll), c1h = _mm256_set1_epi64x(c[1] >> 32);
    b = _mm256_set1_epi64x(c[2]);
    m = _mm256_set1_epi64x(static_cast<int64_t>(mod->m));
    ml = _mm256_set1_epi64x(static_cast<int64_t>(mod->m & 0xFFFFFFFFull)), mh = _mm256_set1_epi64x(static_cast<int64_t>(mod->m >> 32));
    magl = _mm256_set1_epi64x(static_cast<int64_t>(mod->magic & 0xFFFFFFFFull));
    magh = _mm256_set1_epi64x(static_cast<int64_t>(mod->magic >> 32));
  }
  static inline __attribute__((always_inline)) __m256i mullo64(__m256i z, __m256i cl, __m256i ch) {  // low 64 bits of z * c
    const __m256i x = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(z, 32), cl), _mm256_mul_epu32(z, ch));
    return _mm256_add_epi64(_mm256_mul_epu32(z, cl), _mm256_slli_epi64(x, 32));
  }
  static inline __attribute__((always_inline)) __m256i fold61(__m256i x) {  // (x & p) + (x >> 61)
    return _mm256_add_epi64(_mm256_and_si256(x, _mm256_set1_epi64x(kP61)), _mm256_srli_epi64(x, 61));
  }
  inline __attribute__((always_inline)) __m256i rows(__m256i z) const {
    const __m256i p = _mm256_set1_epi64x(kP61), low32 = _mm256_set1_epi64x(0xFFFFFFFFll);
    z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 30));
    z = mullo64(z, _mm256_set1_epi64x(0x1CE4E5B9ll), _mm256_set1_epi64x(0xBF58476Dll));
    z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 27));
    z = mullo64(z, _mm256_set1_epi64x(0x133111EBll), _mm256_set1_epi64x(0x94D049BBll));
    z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
    const __m256i hi = _mm256_srli_epi64(z, 32);  // lo: _mm256_mul_epu32 reads the low 32 bits of z
    const __m256i h = _mm256_add_epi64(_mm256_mul_epu32(c0h, z), _mm256_mul_epu32(c1h, hi));  // < 2^62
    const __m256i hm = _mm256_add_epi64(_mm256_slli_epi64(_mm256_and_si256(h, _mm256_set1_epi64x((1ll << 29) - 1)), 32),
                                        _mm256_srli_epi64(h, 29));
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(hm, b),
                                 _mm256_add_epi64(fold61(_mm256_mul_epu32(c0l, z)), fold61(_mm256_mul_epu32(c1l, hi))));  // < 2^63
    s = fold61(s);                                                                                               // <= p + 3
    s = _mm256_sub_epi64(s, _mm256_and_si256(_mm256_cmpgt_epi64(s, _mm256_set1_epi64x(kP61 - 1)), p));       // [0, p)
    const __m256i sh = _mm256_srli_epi64(s, 32);
    const __m256i ll = _mm256_mul_epu32(s, magl), lh = _mm256_mul_epu32(s, magh);
    const __m256i hl = _mm256_mul_epu32(sh, magl), hh = _mm256_mul_epu32(sh, magh);
    const __m256i mid = _mm256_add_epi64(_mm256_srli_epi64(ll, 32), _mm256_add_epi64(_mm256_and_si256(lh, low32), _mm256_and_si256(hl, low32)));
    const __m256i q = _mm256_add_epi64(_mm256_add_epi64(hh, _mm256_srli_epi64(mid, 32)),
                                       _mm256_add_epi64(_mm256_srli_epi64(lh, 32), _mm256_srli_epi64(hl, 32)));
    const __m256i r = _mm256_sub_epi64(s, mullo64(q, ml, mh));
    return _mm256_sub_epi64(r, _mm256_andnot_si256(_mm256_cmpgt_epi64(m, r), m));  // r >= m: r - m
  }
};
#endif

template <int64_t Bytes>
inline __attribute__((always_inline)) void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  if (Bytes > 0) {
    for (int64_t x = 0; x < Bytes; x += 64) __builtin_prefetch(c + x, 0, 3);
  } else {
    for (int64_t x = 0; x < bytes; x += 64) __builtin_prefetch(c + x, 0, 3);
  }
}

// Row of (id i, probe j), hashing exactly like salted_row (hash.h). The ids of a KJT come in runs of one
// feature, so the per-feature state (coefficients, modulus, whether the rows can exceed the table) is
// reloaded only when the feature changes.
template <typename scalar_t, typename acc_t>
struct RowHasher {
  const FwdArgs<scalar_t, acc_t>& a;
  const int64_t j;
  int64_t t = -1;
  const int64_t* c = nullptr;
  const FastMod* mod = nullptr;
  int64_t m_t = 1;
  bool fast = true, check = false;
#ifdef RECSYS_POOL_AVX2
  SimdHash4 simd;
#endif

  RowHasher(const FwdArgs<scalar_t, acc_t>& args, int64_t probe) : a(args), j(probe) {}

  // Load the state of feature ti; false (and `st` set) when ti is out of range.
  inline __attribute__((noinline)) bool switch_to(int64_t ti, FwdStatus* st) {
    if (ti < 0 || ti >= a.f) {
      st->code = 1, st->a = ti, st->b = a.f;
      return false;
    }
    t = ti;
    c = a.cp + (t * a.k + j) * 3;
    mod = a.mods + t;
    m_t = a.mp[t];
    fast = a.fast[t] != 0;
    check = m_t > a.m;  // num_rows[t] <= weight rows: every row is in range, no per-id check
#ifdef RECSYS_POOL_AVX2
    if (fast) simd = SimdHash4(c, mod);
#endif
    return true;
  }

  // Row of id i; false (and `st` set) on a feature index out of range or a row beyond the table.
  inline __attribute__((always_inline)) bool row(int64_t i, int64_t& out, FwdStatus* st) {
    const int64_t ti = a.fp[i];
    if (__builtin_expect(ti != t, 0) && !switch_to(ti, st)) return false;
    const int64_t r = fast ? salted_row_fast(a.vp[i], c, *mod) : salted_row(a.vp[i], c, m_t);
    if (__builtin_expect(check, 0) && r >= a.m) {
      st->code = 2, st->a = r, st->b = a.m;
      return false;
    }
    out = r;
    return true;
  }

  // Rows of the kBlock ids s, s + 1, ... into out: all at once when they share the current feature (the
  // usual case: a KJT holds runs of one feature) with in-range coefficients, else id by id.
  inline __attribute__((always_inline)) bool block(int64_t s, int64_t* __restrict__ out, FwdStatus* st) {
    const int64_t* __restrict__ f = a.fp + s;
    if (__builtin_expect(f[0] != t, 0) && !switch_to(f[0], st)) return false;
    int64_t other = 0;
    for (int64_t x = 1; x < kBlock; ++x) other |= f[x] ^ t;
    if (__builtin_expect(other == 0 && fast && !check, 1)) {
#ifdef RECSYS_POOL_AVX2
      static_assert(kBlock == 8, "the AVX2 block hash does 4 ids in SIMD + 4 scalar");
      const __m256i r = simd.rows(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.vp + s)));
      salted_rows_fast<4>(a.vp + s + 4, c, *mod, out + 4);  // scalar units, while the vector units do the first 4
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), r);
#else
      salted_rows_fast<kBlock>(a.vp + s, c, *mod, out);
#endif
      return true;
    }
    for (int64_t x = 0; x < kBlock; ++x) {
      if (!row(s + x, out[x], st)) return false;
    }
    return true;
  }
};

// Portable accumulator: DC > 0 = compile-time dim (a local array the compiler can keep in registers:
// its address never escapes), DC == 0 = any dim, in `scratch`.
template <typename scalar_t, typename acc_t, int DC>
struct GenericAcc {
  acc_t reg[DC > 0 ? DC : 1];
  acc_t* const scratch;
  const int64_t d;
  GenericAcc(int64_t dim, acc_t* scr) : scratch(scr), d(DC > 0 ? DC : dim) {}
#define RECSYS_ACC acc_t* __restrict__ acc = DC > 0 ? reg : scratch
  inline __attribute__((always_inline)) void zero() {
    RECSYS_ACC;
    for (int64_t x = 0; x < d; ++x) acc[x] = acc_t(0);
  }
  inline __attribute__((always_inline)) void add(const scalar_t* __restrict__ row) {
    RECSYS_ACC;
    for (int64_t x = 0; x < d; ++x) acc[x] += static_cast<acc_t>(row[x]);
  }
  inline __attribute__((always_inline)) void add_scaled(const scalar_t* __restrict__ row, acc_t s) {
    RECSYS_ACC;
    for (int64_t x = 0; x < d; ++x) acc[x] += s * static_cast<acc_t>(row[x]);
  }
  inline __attribute__((always_inline)) void store(scalar_t* __restrict__ dst, bool) {
    RECSYS_ACC;
    for (int64_t x = 0; x < d; ++x) dst[x] = static_cast<scalar_t>(acc[x]);
  }
  inline __attribute__((always_inline)) void store_scaled(scalar_t* __restrict__ dst, acc_t inv, bool) {
    RECSYS_ACC;
    for (int64_t x = 0; x < d; ++x) dst[x] = static_cast<scalar_t>(acc[x] * inv);
  }
#undef RECSYS_ACC
  static constexpr bool kCanStream = false;
};

#ifdef RECSYS_POOL_AVX2
// float32 rows of DC floats (DC a multiple of 8) in DC / 8 ymm registers.
template <int DC>
struct Avx2FloatAcc {
  static_assert(DC % 8 == 0, "Avx2FloatAcc needs a multiple of 8 floats");
  static constexpr int V = DC / 8;
  __m256 v[V];
  Avx2FloatAcc(int64_t, float*) {}
  inline __attribute__((always_inline)) void zero() {
    for (int x = 0; x < V; ++x) v[x] = _mm256_setzero_ps();
  }
  inline __attribute__((always_inline)) void add(const float* __restrict__ row) {
    for (int x = 0; x < V; ++x) v[x] = _mm256_add_ps(v[x], _mm256_loadu_ps(row + 8 * x));
  }
  inline __attribute__((always_inline)) void add_scaled(const float* __restrict__ row, float s) {
    const __m256 sv = _mm256_set1_ps(s);
    for (int x = 0; x < V; ++x) v[x] = _mm256_fmadd_ps(sv, _mm256_loadu_ps(row + 8 * x), v[x]);
  }
  // stream: non-temporal stores (dst 32-byte aligned; the caller fences), for outputs far larger than the caches.
  inline __attribute__((always_inline)) void put(float* __restrict__ dst, __m256 x, bool stream) const {
    if (stream) {
      _mm256_stream_ps(dst, x);
    } else {
      _mm256_storeu_ps(dst, x);
    }
  }
  inline __attribute__((always_inline)) void store(float* __restrict__ dst, bool stream) const {
    for (int x = 0; x < V; ++x) put(dst + 8 * x, v[x], stream);
  }
  inline __attribute__((always_inline)) void store_scaled(float* __restrict__ dst, float inv, bool stream) const {
    const __m256 iv = _mm256_set1_ps(inv);
    for (int x = 0; x < V; ++x) put(dst + 8 * x, _mm256_mul_ps(v[x], iv), stream);
  }
  static constexpr bool kCanStream = true;
};
#endif

// Bags [b0, b1), probe j: out[bag, j] = pooled rows of the bag's ids (software pipelined, see the top).
// W: per-sample weights. Returns false (st set) on bad input.
template <typename scalar_t, typename acc_t, int DC, class Acc, bool W>
bool forward_probe(const FwdArgs<scalar_t, acc_t>& a, int64_t b0, int64_t b1, int64_t j, acc_t* scratch, FwdStatus* st) {
  const int64_t* __restrict__ offsets = a.offsets;
  const int64_t first = offsets[b0], last = offsets[b1];
  const int64_t d = DC > 0 ? DC : a.d;
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(scalar_t));
  constexpr int64_t kBytes = DC * static_cast<int64_t>(sizeof(scalar_t));
  const scalar_t* __restrict__ w = a.w;
  const int64_t ahead = ids_ahead(row_bytes);
  // Prefetch one row per added id, `ahead` ids ahead (evenly spread), when the bags pool several ids; for
  // bags of about one id (every id also stores an output row) prefetch the rows of a block right after
  // hashing it (measured faster there).
  const bool spread = last - first >= 2 * (b1 - b0);
  RowHasher<scalar_t, acc_t> h(a, j);
  int64_t ring[kRing];  // row of id i at ring[(i - first) % kRing]
  // Hash ids [s, s + n) (n <= kBlock, s - first a multiple of kBlock) into the ring (and prefetch their rows).
  auto hash_ahead = [&](int64_t s, int64_t n) -> bool {
    int64_t* dst = ring + ((s - first) & (kRing - 1));
    if (n == kBlock) {
      if (!h.block(s, dst, st)) return false;
    } else {
      for (int64_t x = 0; x < n; ++x) {
        if (!h.row(s + x, dst[x], st)) return false;
      }
    }
    if (!spread) {
      for (int64_t x = 0; x < n; ++x) prefetch_bytes<kBytes>(w + dst[x] * d, row_bytes);
    }
    return true;
  };
  for (int64_t s = first; s < std::min(last, first + ahead); s += kBlock) {
    if (!hash_ahead(s, std::min(kBlock, last - s))) return false;
    if (spread) {
      for (int64_t x = s; x < std::min(last, s + kBlock); ++x) prefetch_bytes<kBytes>(w + ring[(x - first) & (kRing - 1)] * d, row_bytes);
    }
  }
  Acc acc(d, scratch);
  acc.zero();
  const int64_t stride = a.k * d;
  scalar_t* __restrict__ out = a.out + j * d;
  int64_t bag = b0, bag_end = offsets[b0 + 1];
  const bool stream = Acc::kCanStream && a.stream;
  auto finish = [&](int64_t b, int64_t len) {
    if (a.mean) {
      acc.store_scaled(out + b * stride, len > 0 ? acc_t(1) / static_cast<acc_t>(len) : acc_t(1), stream);
    } else {
      acc.store(out + b * stride, stream);
    }
    acc.zero();
  };
  for (int64_t blk = first; blk < last; blk += kBlock) {
    if (blk + ahead < last && !hash_ahead(blk + ahead, std::min(kBlock, last - blk - ahead))) return false;
    const int64_t blk_end = std::min(last, blk + kBlock);
    for (int64_t i = blk; i < blk_end; ++i) {
      if (spread && i + ahead < last) prefetch_bytes<kBytes>(w + ring[(i + ahead - first) & (kRing - 1)] * d, row_bytes);
      while (i == bag_end) {  // the bags before id i are complete (empty bags included)
        finish(bag, bag_end - offsets[bag]);
        ++bag;
        bag_end = offsets[bag + 1];
      }
      const scalar_t* row = w + ring[(i - first) & (kRing - 1)] * d;
      if (W) {
        acc.add_scaled(row, a.psw[i]);
      } else {
        acc.add(row);
      }
    }
  }
  for (; bag < b1; ++bag) finish(bag, offsets[bag + 1] - offsets[bag]);  // the last bag and trailing empty ones
  return true;
}

template <typename scalar_t, typename acc_t, int DC, class Acc>
bool forward_range(const FwdArgs<scalar_t, acc_t>& a, int64_t b0, int64_t b1, acc_t* scratch, FwdStatus* st) {
  for (int64_t j = 0; j < a.k; ++j) {
    const bool ok = a.psw != nullptr ? forward_probe<scalar_t, acc_t, DC, Acc, true>(a, b0, b1, j, scratch, st)
                                     : forward_probe<scalar_t, acc_t, DC, Acc, false>(a, b0, b1, j, scratch, st);
    if (!ok) return false;
  }
#ifdef RECSYS_POOL_AVX2
  if (Acc::kCanStream && a.stream) _mm_sfence();  // order the non-temporal stores before the range is reported done
#endif
  return true;
}

template <typename scalar_t, typename acc_t, int DC>
ForwardFn<scalar_t, acc_t> dim_fn() {
#ifdef RECSYS_POOL_AVX2
  if constexpr (std::is_same<scalar_t, float>::value && DC > 0 && DC % 8 == 0) {
    return &forward_range<scalar_t, acc_t, DC, Avx2FloatAcc<DC>>;
  }
#endif
  return &forward_range<scalar_t, acc_t, DC, GenericAcc<scalar_t, acc_t, DC>>;
}

// multi_probe_hash of ids [i0, i1): out[i * k + j] = row of (id i, probe j), in blocks of kBlock ids like the
// forward. a.m must be >= every num_rows (no row check); a.w, a.offsets, a.out are not used.
inline bool hash_range(const FwdArgs<float, float>& a, int64_t i0, int64_t i1, int64_t* __restrict__ out, FwdStatus* st) {
  for (int64_t j = 0; j < a.k; ++j) {
    RowHasher<float, float> h(a, j);
    int64_t i = i0;
    if (a.k == 1) {
      for (; i + kBlock <= i1; i += kBlock) {
        if (!h.block(i, out + i, st)) return false;
      }
    } else {
      int64_t tmp[kBlock];
      for (; i + kBlock <= i1; i += kBlock) {
        if (!h.block(i, tmp, st)) return false;
        for (int64_t x = 0; x < kBlock; ++x) out[(i + x) * a.k + j] = tmp[x];
      }
    }
    for (; i < i1; ++i) {
      if (!h.row(i, out[i * a.k + j], st)) return false;
    }
  }
  return true;
}

inline HashFn hash_fn() { return &hash_range; }

// The forward for embedding dim d (compile-time specialisations for the common dims).
template <typename scalar_t, typename acc_t>
ForwardFn<scalar_t, acc_t> forward_fn(int64_t d) {
  switch (d) {
    case 16: return dim_fn<scalar_t, acc_t, 16>();
    case 32: return dim_fn<scalar_t, acc_t, 32>();
    case 64: return dim_fn<scalar_t, acc_t, 64>();
    case 128: return dim_fn<scalar_t, acc_t, 128>();
    default: return dim_fn<scalar_t, acc_t, 0>();
  }
}

}  // namespace RECSYS_POOL_NS
}  // namespace recsys_emb
