// The salted multilinear hash of recsys_emb/modules/unified.py, shared by the CPU and CUDA kernels.
//
// h(v) = ((a0 * lo(z) + a1 * hi(z) + b) mod p) mod M,   p = 2^61 - 1,   z = splitmix64(v),
// lo/hi = low/high 32 bits of z; v and z read as unsigned 64-bit numbers.
//
// splitmix64 is the fixed finaliser of the SplitMix64 generator (premix64 below): a bijection of the
// 64-bit ids applied before the salted hash, because the multilinear hash alone is linear in the id and
// vocabulary ids are consecutive, so for an unlucky draw the pairs (v, v + D) of a feature collided
// systematically. It is computed in uint64 (logical shifts, products mod 2^64), exactly the reference's
// int64 sequence (arithmetic shift + mask, wrapping products).
//
// The reference (recsys_emb/ops/_library.py) computes a*x mod p on 31/30-bit limbs in torch int64
// arithmetic. This file repeats exactly the same sequence of int64 operations, with two's-complement
// wrap-around (done in uint64, so no signed-overflow UB) and arithmetic right shifts, so the result is
// bit-identical with the reference for EVERY input, including coefficients outside [0, p) where the
// limb arithmetic no longer computes a true modulus. The final `mod M` is torch.remainder's
// (Python-style: the sign of the divisor).
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RECSYS_HD __host__ __device__ __forceinline__
#else
#define RECSYS_HD inline __attribute__((always_inline))
#endif

namespace recsys_emb {

constexpr int64_t kP61 = (int64_t(1) << 61) - 1;
constexpr int64_t kLow30 = (int64_t(1) << 30) - 1;
constexpr int64_t kLow31 = (int64_t(1) << 31) - 1;
constexpr int64_t kLow32 = (int64_t(1) << 32) - 1;

RECSYS_HD int64_t wadd(int64_t a, int64_t b) { return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b)); }
RECSYS_HD int64_t wsub(int64_t a, int64_t b) { return static_cast<int64_t>(static_cast<uint64_t>(a) - static_cast<uint64_t>(b)); }
RECSYS_HD int64_t wmul(int64_t a, int64_t b) { return static_cast<int64_t>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b)); }
RECSYS_HD int64_t wshl(int64_t a, int s) { return static_cast<int64_t>(static_cast<uint64_t>(a) << s); }

// s mod p for 0 <= s < 2^63 (the reference's _reduce61, same ops for any s).
RECSYS_HD int64_t reduce61(int64_t s) {
  s = wadd(s & kP61, s >> 61);
  return s >= kP61 ? wsub(s, kP61) : s;
}

// a * x mod p on 31/30-bit limbs (the reference's _mulmod61).
RECSYS_HD int64_t mulmod61(int64_t a, int64_t x) {
  const int64_t ah = a >> 31, al = a & kLow31;
  const int64_t xh = x >> 31, xl = x & kLow31;
  const int64_t mid = wadd(wmul(ah, xl), wmul(al, xh));
  const int64_t folded = wadd(mid >> 30, wshl(mid & kLow30, 31));
  return reduce61(wadd(wadd(wmul(2, wmul(ah, xh)), folded), reduce61(wmul(al, xl))));
}

// torch.remainder for int64 (result has the sign of m; m != 0).
RECSYS_HD int64_t py_remainder(int64_t h, int64_t m) {
  int64_t r = h % m;
  if (r != 0 && ((r < 0) != (m < 0))) r += m;
  return r;
}

// splitmix64 finaliser of the 64-bit pattern of an id (a bijection; unsigned: no UB).
RECSYS_HD uint64_t premix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Row of id v under coefficients c = (a0, a1, b) in a table of m rows.
RECSYS_HD int64_t salted_row(int64_t v, const int64_t* c, int64_t m) {
  const uint64_t z = premix64(static_cast<uint64_t>(v));
  const int64_t lo = static_cast<int64_t>(z & 0xFFFFFFFFull);
  const int64_t hi = static_cast<int64_t>(z >> 32);
  const int64_t h = reduce61(wadd(wadd(mulmod61(c[0], lo), mulmod61(c[1], hi)), c[2]));
  return py_remainder(h, m);
}

}  // namespace recsys_emb

#if !defined(__CUDACC__) && !defined(__HIPCC__) && defined(__SIZEOF_INT128__)
namespace recsys_emb {

// Fast CPU path, valid when the coefficients of a feature lie in [0, p) (always true for the modules'
// coefficients): then the limb arithmetic above computes the true (a0 lo + a1 hi + b) mod p, which this
// computes with two 64x64->128 multiplies and two Mersenne folds; `mod M` uses a precomputed reciprocal
// (magic = floor((2^64 - 1) / M)) instead of a 64-bit division: q = mulhi(h, magic) is floor(h / M) or
// one less, so one conditional subtraction makes it exact. Bit-identical with salted_row for those inputs.
struct FastMod {
  uint64_t m, magic;
  explicit FastMod(int64_t rows = 1) : m(static_cast<uint64_t>(rows)), magic(~uint64_t(0) / static_cast<uint64_t>(rows)) {}
  inline uint64_t operator()(uint64_t h) const {
    const uint64_t q = static_cast<uint64_t>((static_cast<unsigned __int128>(h) * magic) >> 64);
    uint64_t r = h - q * m;
    return r >= m ? r - m : r;
  }
};

inline bool coefficients_in_range(const int64_t* c, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    if (c[i] < 0 || c[i] >= kP61) return false;
  }
  return true;
}

inline int64_t salted_row_fast(int64_t v, const int64_t* c, const FastMod& mod) {
  const uint64_t u = premix64(static_cast<uint64_t>(v));
  const unsigned __int128 t = static_cast<unsigned __int128>(static_cast<uint64_t>(c[0])) * (u & 0xFFFFFFFFull) +
                              static_cast<unsigned __int128>(static_cast<uint64_t>(c[1])) * (u >> 32) + static_cast<uint64_t>(c[2]);
  const uint64_t p = static_cast<uint64_t>(kP61);
  uint64_t s = (static_cast<uint64_t>(t) & p) + static_cast<uint64_t>(t >> 61);  // < 2^61 + 2^34
  s = (s & p) + (s >> 61);                                                        // <= p + 1
  if (s >= p) s -= p;
  return static_cast<int64_t>(mod(s));
}

}  // namespace recsys_emb
#endif
