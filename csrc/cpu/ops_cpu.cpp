// CPU kernels of the recsys_emb::* ops (schemas and pure-PyTorch references: recsys_emb/ops/_library.py).
//
// Only implementations are registered here (TORCH_LIBRARY_IMPL(recsys_emb, CPU, m)); the dispatcher
// then prefers them over the CompositeExplicitAutograd reference on CPU tensors. Autograd and the
// fake (meta) kernels stay the Python ones.
//
// Parallelism: at::parallel_for (OpenMP, built with -fopenmp) over ids / table rows; the forward hands
// out ranges of bags dynamically (heb_forward). The forward and the hash run the engine of pool_impl.h
// (blocks of 8 ids hashed together, rows prefetched ahead, AVX2 where the CPU has it); the other inner
// loops run over the contiguous embedding dim with __restrict__ pointers so -O3 vectorises them. Every
// result is independent of the number of threads (each output element is reduced by one thread in a
// fixed order), so the kernels are deterministic.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../hash.h"
#include "pool.h"

namespace recsys_emb {
namespace {

using at::Tensor;

constexpr int64_t kGrainWork = 32768;  // ~elements of work per parallel task (at::internal::GRAIN_SIZE)

template <typename T>
struct AccType { using type = float; };
template <>
struct AccType<double> { using type = double; };

Tensor as_int64(const Tensor& t) { return t.to(at::kLong).contiguous(); }

void check_hash_inputs(const Tensor& values, const Tensor& feature_index, const Tensor& coefficients, const Tensor& num_rows) {
  TORCH_CHECK(values.dim() == 1, "values must be 1-D, got shape ", values.sizes());
  TORCH_CHECK(values.scalar_type() == at::kInt || values.scalar_type() == at::kLong, "values must be int32/int64, got ", values.scalar_type());
  TORCH_CHECK(feature_index.dim() == 1, "feature_index must be 1-D");
  TORCH_CHECK(feature_index.scalar_type() == at::kInt || feature_index.scalar_type() == at::kLong, "feature_index must be int32/int64");
  TORCH_CHECK(feature_index.size(0) == values.size(0), "feature_index and values must have the same length");
  TORCH_CHECK(coefficients.dim() == 3 && coefficients.size(2) == 3, "coefficients must be (F, K, 3)");
  TORCH_CHECK(coefficients.scalar_type() == at::kLong, "coefficients must be int64");
  TORCH_CHECK(num_rows.dim() == 1 && num_rows.size(0) == coefficients.size(0), "num_rows must be (F,)");
  TORCH_CHECK(num_rows.scalar_type() == at::kLong, "num_rows must be int64");
}

// Hash inputs as contiguous int64 CPU tensors (kept alive by the struct) + validation of num_rows.
struct HashArgs {
  Tensor values, feature_index, coefficients, num_rows;
  int64_t n, f, k;
  const int64_t *vp, *fp, *cp, *mp;
  HashArgs(const Tensor& v, const Tensor& fi, const Tensor& c, const Tensor& r)
      : values(as_int64(v)), feature_index(as_int64(fi)), coefficients(c.contiguous()), num_rows(r.contiguous()),
        n(v.size(0)), f(c.size(0)), k(c.size(1)) {
    vp = values.data_ptr<int64_t>();
    fp = feature_index.data_ptr<int64_t>();
    cp = coefficients.data_ptr<int64_t>();
    mp = num_rows.data_ptr<int64_t>();
    mods.reserve(f);
    fast.reserve(f);
    for (const auto t : c10::irange(f)) {
      TORCH_CHECK(mp[t] >= 1, "num_rows must be >= 1, got ", mp[t], " for feature ", t);
      mods.emplace_back(mp[t]);
      fast.push_back(coefficients_in_range(cp + t * k * 3, k * 3) ? 1 : 0);
    }
  }
  // Rows of the k probes of id i into out[0..k).
  inline __attribute__((always_inline)) void rows(int64_t i, int64_t* __restrict__ out) const {
    const int64_t t = fp[i];
    TORCH_CHECK(t >= 0 && t < f, "feature_index ", t, " out of range [0, ", f, ")");
    const int64_t v = vp[i];
    const int64_t* c = cp + t * k * 3;
    if (fast[t]) {  // coefficients in [0, p): 128-bit arithmetic + reciprocal modulo (same bits)
      const FastMod& mod = mods[t];
      for (int64_t j = 0; j < k; ++j) out[j] = salted_row_fast(v, c + 3 * j, mod);
    } else {  // any other coefficients: the reference's exact int64 limb sequence
      const int64_t m = mp[t];
      for (int64_t j = 0; j < k; ++j) out[j] = salted_row(v, c + 3 * j, m);
    }
  }
  std::vector<FastMod> mods;
  std::vector<char> fast;
};

int64_t grain_for(int64_t work_per_item) { return std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, work_per_item)); }

// ------------------------------------------------------------------------------ op 1: multi_probe_hash
Tensor multi_probe_hash_cpu(const Tensor& values, const Tensor& feature_index, const Tensor& coefficients, const Tensor& num_rows) {
  check_hash_inputs(values, feature_index, coefficients, num_rows);
  HashArgs h(values, feature_index, coefficients, num_rows);
  Tensor out = at::empty({h.n, h.k}, values.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  // Ids in blocks of 8 (hash.h's arithmetic, interleaved over the block; AVX2 lanes where available).
  const FwdArgs<float, float> a{nullptr, std::numeric_limits<int64_t>::max(), 0, h.k, h.f, h.vp, h.fp, h.cp, h.mp, h.mods.data(),
                                h.fast.data(), nullptr, nullptr, false, nullptr, false};
#ifdef RECSYS_EMB_AVX2_POOL
  const HashFn hash = cpu_has_avx2_fma() ? avx2::avx2_hash_fn() : baseline::hash_fn();
#else
  const HashFn hash = baseline::hash_fn();
#endif
  std::atomic<bool> failed{false};
  FwdStatus status;
  at::parallel_for(0, h.n, std::max<int64_t>(64, grain_for(8 * h.k)), [&](int64_t begin, int64_t end) {
    FwdStatus st;
    if (!failed.load(std::memory_order_relaxed) && !hash(a, begin, end, o, &st) && !failed.exchange(true)) status = st;
  });
  TORCH_CHECK(status.code != 1, "feature_index ", status.a, " out of range [0, ", status.b, ")");
  return out;
}

// -------------------------------------------------------------------------- op 2: hashed_embedding_bag
void check_bag_inputs(const Tensor& weight, const Tensor& values, const Tensor& offsets, c10::string_view mode,
                      const std::optional<Tensor>& psw) {
  TORCH_CHECK(weight.dim() == 2, "weight must be (M, D), got shape ", weight.sizes());
  TORCH_CHECK(weight.is_floating_point(), "weight must be floating point, got ", weight.scalar_type());
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1, "offsets must be 1-D with B + 1 >= 1 entries");
  TORCH_CHECK(offsets.scalar_type() == at::kInt || offsets.scalar_type() == at::kLong, "offsets must be int32/int64");
  TORCH_CHECK(mode == "sum" || mode == "mean", "mode must be one of ('sum', 'mean'), got '", std::string(mode), "'");
  if (psw.has_value()) {
    TORCH_CHECK(psw->sizes() == values.sizes(), "per_sample_weights must have the shape of values");
    TORCH_CHECK(psw->is_floating_point(), "per_sample_weights must be floating point");
  }
}

// KJT offsets as int64, checked: offsets[0] == 0, non-decreasing, offsets[B] == N.
Tensor checked_offsets(const Tensor& offsets, int64_t n) {
  Tensor o = as_int64(offsets);
  const int64_t* p = o.data_ptr<int64_t>();
  const int64_t b = o.size(0) - 1;
  TORCH_CHECK(p[0] == 0, "offsets[0] must be 0, got ", p[0]);
  for (int64_t i = 0; i < b; ++i) TORCH_CHECK(p[i + 1] >= p[i], "offsets must be non-decreasing (offsets[", i + 1, "] < offsets[", i, "])");
  TORCH_CHECK(p[b] == n, "offsets[-1] must equal the number of ids ", n, ", got ", p[b]);
  return o;
}

template <typename scalar_t, typename acc_t>
inline void axpy(acc_t* __restrict__ acc, const scalar_t* __restrict__ row, acc_t s, int64_t d) {
  for (int64_t x = 0; x < d; ++x) acc[x] += s * static_cast<acc_t>(row[x]);
}

// Dynamic schedule of the forward: the bags are cut into ranges of about kRangeWork elements of work
// (ids x probes x dim), and every thread takes the next range from an atomic counter until none is left.
// A thread that is slowed down (other processes on its core, longer bags) then simply takes fewer ranges.
constexpr int64_t kRangeWork = 131072;
constexpr int64_t kRangeMinIds = 512, kRangeMaxIds = 8192;
constexpr size_t kStreamOutputBytes = size_t(8) << 20;

template <typename scalar_t>
void heb_forward(const Tensor& weight, const HashArgs& h, const int64_t* __restrict__ offsets, int64_t nbags, bool mean,
                 const Tensor& psw, Tensor& out) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t d = weight.size(1);
  FwdArgs<scalar_t, acc_t> a{weight.data_ptr<scalar_t>(), weight.size(0), d, h.k, h.f, h.vp, h.fp, h.cp, h.mp, h.mods.data(),
                             h.fast.data(), offsets, psw.defined() ? psw.data_ptr<acc_t>() : nullptr, mean,
                             out.data_ptr<scalar_t>(), false};
  // An output much larger than the caches (pooling 1 writes one row per id) is written with non-temporal
  // stores: no read-for-ownership of lines that are overwritten entirely, and the table rows stay cached.
  a.stream = out.nbytes() >= kStreamOutputBytes && reinterpret_cast<uintptr_t>(a.out) % 32 == 0;
#ifdef RECSYS_EMB_AVX2_POOL
  const auto forward = cpu_has_avx2_fma() ? avx2::forward_fn<scalar_t, acc_t>(d) : baseline::forward_fn<scalar_t, acc_t>(d);
#else
  const auto forward = baseline::forward_fn<scalar_t, acc_t>(d);
#endif
  if (nbags == 0) return;
  const int64_t ids_per_bag = std::max<int64_t>(1, h.n / nbags);
  const int64_t range_ids = std::clamp<int64_t>(kRangeWork / std::max<int64_t>(1, h.k * d), kRangeMinIds, kRangeMaxIds);
  const int64_t bags_per_range = std::max<int64_t>(1, range_ids / ids_per_bag);
  const int64_t nranges = (nbags + bags_per_range - 1) / bags_per_range;
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), nranges));
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::vector<FwdStatus> status(workers);
  at::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
    std::vector<acc_t> scratch(d);
    for (int64_t wk = w0; wk < w1; ++wk) {
      for (int64_t r = next.fetch_add(1, std::memory_order_relaxed); r < nranges && !failed.load(std::memory_order_relaxed);
           r = next.fetch_add(1, std::memory_order_relaxed)) {
        const int64_t b0 = r * bags_per_range, b1 = std::min(nbags, b0 + bags_per_range);
        if (!forward(a, b0, b1, scratch.data(), &status[wk])) {
          failed.store(true);
          break;
        }
      }
    }
  });
  for (const FwdStatus& st : status) {
    TORCH_CHECK(st.code != 1, "feature_index ", st.a, " out of range [0, ", st.b, ")");
    TORCH_CHECK(st.code != 2, "hashed row ", st.a, " >= weight rows ", st.b, " (num_rows exceeds the table)");
  }
}

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

Tensor hashed_embedding_bag_cpu(const Tensor& weight, const Tensor& values, const Tensor& offsets, const Tensor& feature_index,
                                const Tensor& coefficients, const Tensor& num_rows, c10::string_view mode,
                                const std::optional<Tensor>& per_sample_weights) {
  check_bag_inputs(weight, values, offsets, mode, per_sample_weights);
  check_hash_inputs(values, feature_index, coefficients, num_rows);
  HashArgs h(values, feature_index, coefficients, num_rows);
  Tensor off = checked_offsets(offsets, h.n);
  const int64_t nbags = off.size(0) - 1;
  Tensor w = weight.contiguous();
  Tensor psw = per_sample_weights.has_value() ? per_sample_weights->to(acc_dtype(w.scalar_type())).contiguous() : Tensor();
  Tensor out = at::empty({nbags, h.k, w.size(1)}, w.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "hashed_embedding_bag_cpu", [&] {
    heb_forward<scalar_t>(w, h, off.data_ptr<int64_t>(), nbags, mode == "mean", psw, out);
  });
  return out;
}

// ------------------------------------------------------------------ op 2b: hashed_embedding_bag_backward
template <typename scalar_t>
void heb_backward(const Tensor& grad, const HashArgs& h, const int64_t* __restrict__ offsets, int64_t nbags, bool mean,
                  const Tensor& psw, Tensor& grad_weight) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t n = h.n, k = h.k, d = grad.size(2), m = grad_weight.size(0), nk = n * k;
  const scalar_t* g = grad.data_ptr<scalar_t>();
  const acc_t* p = psw.defined() ? psw.data_ptr<acc_t>() : nullptr;
  // 1. rows of every (id, probe) and, per id, its bag and its scale (psw and/or 1 / bag size).
  std::vector<int64_t> rows(nk), bag_of(n);
  std::vector<acc_t> scale(n);
  at::parallel_for(0, nbags, grain_for(8 * k * std::max<int64_t>(1, n / std::max<int64_t>(1, nbags))), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t start = offsets[b], end = offsets[b + 1];
      const acc_t inv = mean && end > start ? acc_t(1) / static_cast<acc_t>(end - start) : acc_t(1);
      for (int64_t i = start; i < end; ++i) {
        int64_t* r = rows.data() + i * k;
        h.rows(i, r);
        for (int64_t j = 0; j < k; ++j) TORCH_CHECK(r[j] < m, "hashed row ", r[j], " >= num_weight_rows ", m);
        bag_of[i] = b;
        scale[i] = p != nullptr ? (mean ? p[i] * inv : p[i]) : inv;
      }
    }
  });
  // 2. stable counting sort of the (id, probe) pairs by row: start[r]..start[r + 1] lists the pairs of
  //    row r in increasing (id, probe) order, so every row is reduced in one fixed order (deterministic).
  std::vector<int64_t> start(m + 1, 0), order(nk);
  for (int64_t e = 0; e < nk; ++e) ++start[rows[e] + 1];
  for (int64_t r = 0; r < m; ++r) start[r + 1] += start[r];
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t e = 0; e < nk; ++e) order[next[rows[e]]++] = e;
  }
  // 3. every row of the gradient, in parallel over rows (rows without any pair are zero).
  scalar_t* gw = grad_weight.data_ptr<scalar_t>();
  const int64_t per_row = std::max<int64_t>(1, nk / std::max<int64_t>(1, m)) * d + d;
  at::parallel_for(0, m, grain_for(per_row), [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> acc(d);
    for (int64_t r = r0; r < r1; ++r) {
      scalar_t* __restrict__ dst = gw + r * d;
      if (start[r] == start[r + 1]) {
        std::memset(static_cast<void*>(dst), 0, d * sizeof(scalar_t));
        continue;
      }
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t q = start[r]; q < start[r + 1]; ++q) {
        const int64_t e = order[q], i = e / k, j = e - i * k;
        axpy<scalar_t, acc_t>(acc.data(), g + (bag_of[i] * k + j) * d, scale[i], d);
      }
      for (int64_t x = 0; x < d; ++x) dst[x] = static_cast<scalar_t>(acc[x]);
    }
  });
}

Tensor hashed_embedding_bag_backward_cpu(const Tensor& grad_output, const Tensor& values, const Tensor& offsets,
                                         const Tensor& feature_index, const Tensor& coefficients, const Tensor& num_rows,
                                         c10::SymInt num_weight_rows, c10::string_view mode,
                                         const std::optional<Tensor>& per_sample_weights) {
  TORCH_CHECK(grad_output.dim() == 3, "grad_output must be (B, K, D)");
  TORCH_CHECK(grad_output.is_floating_point(), "grad_output must be floating point");
  TORCH_CHECK(mode == "sum" || mode == "mean", "mode must be one of ('sum', 'mean'), got '", std::string(mode), "'");
  check_hash_inputs(values, feature_index, coefficients, num_rows);
  HashArgs h(values, feature_index, coefficients, num_rows);
  Tensor off = checked_offsets(offsets, h.n);
  const int64_t nbags = off.size(0) - 1;
  TORCH_CHECK(grad_output.size(0) == nbags && grad_output.size(1) == h.k, "grad_output must be (B, K, D) = (", nbags, ", ", h.k,
              ", D), got ", grad_output.sizes());
  const int64_t m = num_weight_rows.expect_int();
  TORCH_CHECK(m >= 0, "num_weight_rows must be >= 0");
  Tensor g = grad_output.contiguous();
  if (per_sample_weights.has_value()) TORCH_CHECK(per_sample_weights->sizes() == values.sizes(), "per_sample_weights must have the shape of values");
  Tensor psw = per_sample_weights.has_value() ? per_sample_weights->to(acc_dtype(g.scalar_type())).contiguous() : Tensor();
  Tensor grad_weight = at::empty({m, g.size(2)}, g.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "hashed_embedding_bag_backward_cpu", [&] {
    heb_backward<scalar_t>(g, h, off.data_ptr<int64_t>(), nbags, mode == "mean", psw, grad_weight);
  });
  return grad_weight;
}

// ------------------------------------------------------------------------------------ op 3: sid_pieces
std::tuple<Tensor, Tensor, Tensor> sid_pieces_cpu(const Tensor& ids, const Tensor& lengths, const Tensor& item_offsets,
                                                  const Tensor& item_rows, int64_t id_offset) {
  TORCH_CHECK(ids.dim() == 1 && (ids.scalar_type() == at::kInt || ids.scalar_type() == at::kLong), "ids must be 1-D int32/int64");
  TORCH_CHECK(lengths.dim() == 1 && (lengths.scalar_type() == at::kInt || lengths.scalar_type() == at::kLong),
              "lengths must be 1-D int32/int64");
  TORCH_CHECK(item_offsets.dim() == 1 && item_offsets.size(0) >= 2, "item_offsets must be (I + 1,) with I >= 1 items");
  TORCH_CHECK(item_offsets.scalar_type() == at::kLong && item_rows.scalar_type() == at::kLong, "item_offsets/item_rows must be int64");
  TORCH_CHECK(item_rows.dim() == 1, "item_rows must be 1-D");
  const Tensor id64 = as_int64(ids), len64 = as_int64(lengths);
  const Tensor io = item_offsets.contiguous(), ir = item_rows.contiguous();
  const int64_t n = ids.size(0), nb = lengths.size(0), unknown = io.size(0) - 2, nrows = ir.size(0);
  const int64_t* idp = id64.data_ptr<int64_t>();
  const int64_t* lp = len64.data_ptr<int64_t>();
  const int64_t* iop = io.data_ptr<int64_t>();
  const int64_t* irp = ir.data_ptr<int64_t>();
  int64_t total_ids = 0;
  for (int64_t b = 0; b < nb; ++b) {
    TORCH_CHECK(lp[b] >= 0, "lengths must be >= 0, got ", lp[b]);
    total_ids += lp[b];
  }
  TORCH_CHECK(total_ids == n, "sum(lengths) = ", total_ids, " must equal the number of ids ", n);
  // Item of every id (the unknown item for ids outside [0, I - 1)) and the exclusive prefix of piece counts.
  std::vector<int64_t> item(n), first(n + 1);
  at::parallel_for(0, n, grain_for(4), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t it = wsub(idp[i], id_offset);
      item[i] = (it >= 0 && it < unknown) ? it : unknown;
    }
  });
  first[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = iop[item[i]], e = iop[item[i] + 1];
    TORCH_CHECK(0 <= s && s <= e && e <= nrows, "item_offsets of item ", item[i], " are not a valid range of item_rows");
    first[i + 1] = first[i] + (e - s);
  }
  const int64_t total = first[n];
  Tensor values = at::empty({total}, ids.options().dtype(at::kLong));
  Tensor owner = at::empty({total}, ids.options().dtype(at::kLong));
  Tensor new_lengths = at::empty({nb}, lengths.options());
  int64_t* vp = values.data_ptr<int64_t>();
  int64_t* op = owner.data_ptr<int64_t>();
  at::parallel_for(0, n, grain_for(8), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t s = iop[item[i]], c = first[i + 1] - first[i];
      for (int64_t q = 0; q < c; ++q) {
        vp[first[i] + q] = irp[s + q];
        op[first[i] + q] = i;
      }
    }
  });
  AT_DISPATCH_INDEX_TYPES(lengths.scalar_type(), "sid_pieces_cpu", [&] {
    index_t* nl = new_lengths.data_ptr<index_t>();
    int64_t pos = 0;
    for (int64_t b = 0; b < nb; ++b) {
      nl[b] = static_cast<index_t>(first[pos + lp[b]] - first[pos]);
      pos += lp[b];
    }
  });
  return {values, new_lengths, owner};
}

}  // namespace
}  // namespace recsys_emb

TORCH_LIBRARY_IMPL(recsys_emb, CPU, m) {
  m.impl("multi_probe_hash", &recsys_emb::multi_probe_hash_cpu);
  m.impl("hashed_embedding_bag", &recsys_emb::hashed_embedding_bag_cpu);
  m.impl("hashed_embedding_bag_backward", &recsys_emb::hashed_embedding_bag_backward_cpu);
  m.impl("sid_pieces", &recsys_emb::sid_pieces_cpu);
}
