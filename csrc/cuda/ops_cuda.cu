// CUDA kernels of the recsys_emb::* ops (schemas and references: recsys_emb/ops/_library.py).
//
// UNTESTED ON A GPU: written and compiled (nvcc -c) without a GPU to run them on. tests/ops/test_compiled.py
// and tests/ops/test_registry.py::test_cuda_matches_cpu compare them with the CPU kernels when a GPU is
// present (skipped otherwise); see docs/kernels.md.
//
// Layout: one warp per (bag, probe) in the forward (lanes over the embedding dim; every lane hashes one
// id of the bag and the rows are broadcast with shuffles), one warp per unique row in the backward
// (the (id, probe) pairs are stably sorted by row with at::sort, so each row is reduced in one fixed
// order: deterministic, no atomics), one thread per id for the hash and the SID pieces.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <string>

#include "../hash.h"

namespace recsys_emb {
namespace {

using at::Tensor;

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = 256;
constexpr int kLanesDim = 4;  // embedding-dim elements per lane per pass (128 per warp)

template <typename T>
struct AccType { using type = float; };
template <>
struct AccType<double> { using type = double; };

inline int64_t blocks_for(int64_t work, int64_t per_block) { return std::max<int64_t>(1, (work + per_block - 1) / per_block); }

Tensor as_int64(const Tensor& t) { return t.to(at::kLong).contiguous(); }

// The dispatcher sends a call to this CUDA kernel as soon as ONE argument is a CUDA tensor; a CPU tensor among
// the others would be read through a host pointer on the device (an illegal memory access, reported later and
// elsewhere). So every tensor argument is checked to be on the device of `ref` first, with a clear error.
void check_same_device(const Tensor& t, const Tensor& ref, const char* name, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ", ref.device(),
              ": every tensor argument must be on the same device");
}

void check_hash_inputs(const Tensor& values, const Tensor& feature_index, const Tensor& coefficients, const Tensor& num_rows) {
  TORCH_CHECK(values.dim() == 1, "values must be 1-D, got shape ", values.sizes());
  TORCH_CHECK(values.scalar_type() == at::kInt || values.scalar_type() == at::kLong, "values must be int32/int64");
  TORCH_CHECK(feature_index.dim() == 1 && feature_index.size(0) == values.size(0), "feature_index must be (N,) like values");
  TORCH_CHECK(feature_index.scalar_type() == at::kInt || feature_index.scalar_type() == at::kLong, "feature_index must be int32/int64");
  TORCH_CHECK(coefficients.dim() == 3 && coefficients.size(2) == 3 && coefficients.scalar_type() == at::kLong,
              "coefficients must be (F, K, 3) int64");
  TORCH_CHECK(num_rows.dim() == 1 && num_rows.size(0) == coefficients.size(0) && num_rows.scalar_type() == at::kLong,
              "num_rows must be (F,) int64");
  TORCH_CHECK(values.is_cuda() && feature_index.device() == values.device() && coefficients.device() == values.device() &&
                  num_rows.device() == values.device(),
              "all inputs must be on the same CUDA device");
  TORCH_CHECK(num_rows.numel() == 0 || num_rows.min().item<int64_t>() >= 1, "num_rows must be >= 1");
}

// Row of the probe j of id i (device-side bounds checks: a bad feature index is a device assert).
__device__ __forceinline__ int64_t row_of(const int64_t* __restrict__ values, const int64_t* __restrict__ fi,
                                          const int64_t* __restrict__ coef, const int64_t* __restrict__ num_rows, int64_t f,
                                          int64_t k, int64_t i, int64_t j) {
  const int64_t t = fi[i];
  CUDA_KERNEL_ASSERT(t >= 0 && t < f && "feature_index out of range");
  return salted_row(values[i], coef + (t * k + j) * 3, num_rows[t]);
}

// ------------------------------------------------------------------------------ op 1: multi_probe_hash
__global__ void hash_kernel(const int64_t* __restrict__ values, const int64_t* __restrict__ fi, const int64_t* __restrict__ coef,
                            const int64_t* __restrict__ num_rows, int64_t f, int64_t n, int64_t k, int64_t* __restrict__ out) {
  const int64_t total = n * k;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[e] = row_of(values, fi, coef, num_rows, f, k, e / k, e % k);
  }
}

Tensor multi_probe_hash_cuda(const Tensor& values, const Tensor& feature_index, const Tensor& coefficients, const Tensor& num_rows) {
  check_hash_inputs(values, feature_index, coefficients, num_rows);
  c10::cuda::CUDAGuard guard(values.device());
  const Tensor v = as_int64(values), fi = as_int64(feature_index), c = coefficients.contiguous(), m = num_rows.contiguous();
  const int64_t n = v.size(0), k = c.size(1);
  Tensor out = at::empty({n, k}, v.options());
  if (n * k == 0) return out;
  const int64_t blocks = std::min<int64_t>(blocks_for(n * k, kThreads), 65535 * 8);
  hash_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      v.data_ptr<int64_t>(), fi.data_ptr<int64_t>(), c.data_ptr<int64_t>(), m.data_ptr<int64_t>(), c.size(0), n, k,
      out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// -------------------------------------------------------------------------- op 2: hashed_embedding_bag
// One warp per (bag b, probe j). Ids of the bag are taken 32 at a time: lane t hashes id i0 + t, then the
// warp walks the 32 rows (broadcast by __shfl_sync) and every lane accumulates its dim elements.
template <typename scalar_t, typename acc_t>
__global__ void heb_forward_kernel(const scalar_t* __restrict__ weight, int64_t m, int64_t d, const int64_t* __restrict__ values,
                                   const int64_t* __restrict__ offsets, const int64_t* __restrict__ fi,
                                   const int64_t* __restrict__ coef, const int64_t* __restrict__ num_rows, int64_t f, int64_t k,
                                   int64_t nbags, bool mean, const acc_t* __restrict__ psw, scalar_t* __restrict__ out) {
  const int64_t warp = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= nbags * k) return;  // warp-uniform
  const int64_t b = warp / k, j = warp % k;
  const int64_t start = offsets[b], end = offsets[b + 1];
  for (int64_t d0 = 0; d0 < d; d0 += kWarp * kLanesDim) {
    acc_t acc[kLanesDim];
#pragma unroll
    for (int c = 0; c < kLanesDim; ++c) acc[c] = acc_t(0);
    for (int64_t i0 = start; i0 < end; i0 += kWarp) {
      const int64_t i = i0 + lane;
      long long row = 0;
      acc_t s = acc_t(1);
      if (i < end) {
        row = row_of(values, fi, coef, num_rows, f, k, i, j);
        CUDA_KERNEL_ASSERT(row < m && "hashed row >= weight rows (num_rows exceeds the table)");
        if (psw != nullptr) s = psw[i];
      }
      const int count = end - i0 < kWarp ? static_cast<int>(end - i0) : kWarp;
      for (int t = 0; t < count; ++t) {
        const long long r = __shfl_sync(0xffffffffu, row, t);
        const acc_t st = __shfl_sync(0xffffffffu, s, t);
        const scalar_t* __restrict__ w = weight + r * d;
#pragma unroll
        for (int c = 0; c < kLanesDim; ++c) {
          const int64_t x = d0 + lane + c * kWarp;
          if (x < d) acc[c] += st * static_cast<acc_t>(w[x]);
        }
      }
    }
    const acc_t scale = (mean && end > start) ? acc_t(1) / static_cast<acc_t>(end - start) : acc_t(1);
    scalar_t* __restrict__ o = out + (b * k + j) * d;
#pragma unroll
    for (int c = 0; c < kLanesDim; ++c) {
      const int64_t x = d0 + lane + c * kWarp;
      if (x < d) o[x] = static_cast<scalar_t>(acc[c] * scale);
    }
  }
}

void check_offsets(const Tensor& offsets, int64_t n) {
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1, "offsets must be 1-D with B + 1 >= 1 entries");
  TORCH_CHECK(offsets.scalar_type() == at::kInt || offsets.scalar_type() == at::kLong, "offsets must be int32/int64");
  const Tensor o = offsets.to(at::kLong);
  TORCH_CHECK(o[0].item<int64_t>() == 0, "offsets[0] must be 0");
  TORCH_CHECK(o[-1].item<int64_t>() == n, "offsets[-1] must equal the number of ids ", n);
  if (o.size(0) > 1) {
    TORCH_CHECK((o.narrow(0, 1, o.size(0) - 1) >= o.narrow(0, 0, o.size(0) - 1)).all().item<bool>(), "offsets must be non-decreasing");
  }
}

// The checks shared by the forward and the backward of hashed_embedding_bag: mode, every tensor on the
// device of `ref` (weight / grad_output), the hash inputs and the offsets.
void check_bag_inputs(const Tensor& ref, const char* ref_name, c10::string_view mode, const Tensor& values,
                      const Tensor& offsets, const Tensor& feature_index, const Tensor& coefficients,
                      const Tensor& num_rows, const std::optional<Tensor>& per_sample_weights) {
  TORCH_CHECK(mode == "sum" || mode == "mean", "mode must be one of ('sum', 'mean'), got '", std::string(mode), "'");
  check_same_device(values, ref, "values", ref_name);
  check_same_device(offsets, ref, "offsets", ref_name);
  if (per_sample_weights.has_value()) check_same_device(*per_sample_weights, ref, "per_sample_weights", ref_name);
  check_hash_inputs(values, feature_index, coefficients, num_rows);
  check_offsets(offsets, values.size(0));
}

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

Tensor hashed_embedding_bag_cuda(const Tensor& weight, const Tensor& values, const Tensor& offsets, const Tensor& feature_index,
                                 const Tensor& coefficients, const Tensor& num_rows, c10::string_view mode,
                                 const std::optional<Tensor>& per_sample_weights) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_floating_point(), "weight must be (M, D) floating point");
  check_bag_inputs(weight, "weight", mode, values, offsets, feature_index, coefficients, num_rows, per_sample_weights);
  c10::cuda::CUDAGuard guard(weight.device());
  const Tensor w = weight.contiguous(), v = as_int64(values), fi = as_int64(feature_index), off = as_int64(offsets);
  const Tensor c = coefficients.contiguous(), m = num_rows.contiguous();
  Tensor psw;
  if (per_sample_weights.has_value()) {
    TORCH_CHECK(per_sample_weights->sizes() == values.sizes() && per_sample_weights->is_floating_point(),
                "per_sample_weights must be floating point with the shape of values");
    psw = per_sample_weights->to(acc_dtype(w.scalar_type())).contiguous();
  }
  const int64_t nbags = off.size(0) - 1, k = c.size(1), d = w.size(1);
  Tensor out = at::empty({nbags, k, d}, w.options());
  if (out.numel() == 0) return out;
  const int64_t blocks = blocks_for(nbags * k, kWarpsPerBlock);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "hashed_embedding_bag_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    heb_forward_kernel<scalar_t, acc_t><<<blocks, kWarpsPerBlock * kWarp, 0, c10::cuda::getCurrentCUDAStream()>>>(
        w.data_ptr<scalar_t>(), w.size(0), d, v.data_ptr<int64_t>(), off.data_ptr<int64_t>(), fi.data_ptr<int64_t>(),
        c.data_ptr<int64_t>(), m.data_ptr<int64_t>(), c.size(0), k, nbags, mode == "mean",
        psw.defined() ? psw.data_ptr<acc_t>() : nullptr, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// ------------------------------------------------------------------ op 2b: hashed_embedding_bag_backward
__global__ void bag_of_kernel(const int64_t* __restrict__ offsets, int64_t nbags, int64_t* __restrict__ bag_of) {
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < nbags; b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    for (int64_t i = offsets[b]; i < offsets[b + 1]; ++i) bag_of[i] = b;
  }
}

// One warp per unique row u: its pairs perm[seg_start[u] .. seg_start[u] + seg_count[u]) in sorted (stable) order.
template <typename scalar_t, typename acc_t>
__global__ void heb_backward_kernel(const scalar_t* __restrict__ grad, int64_t d, int64_t k, const int64_t* __restrict__ offsets,
                                    const int64_t* __restrict__ bag_of, const acc_t* __restrict__ psw, bool mean,
                                    const int64_t* __restrict__ unique_rows, const int64_t* __restrict__ seg_start,
                                    const int64_t* __restrict__ seg_count, const int64_t* __restrict__ perm, int64_t nunique,
                                    int64_t m, scalar_t* __restrict__ grad_weight) {
  const int64_t u = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (u >= nunique) return;
  const int64_t row = unique_rows[u];
  CUDA_KERNEL_ASSERT(row >= 0 && row < m && "hashed row >= num_weight_rows");
  const int64_t first = seg_start[u], last = first + seg_count[u];
  for (int64_t x = lane; x < d; x += kWarp) {
    acc_t acc = acc_t(0);
    for (int64_t q = first; q < last; ++q) {
      const int64_t e = perm[q], i = e / k, j = e % k, b = bag_of[i];
      acc_t s = psw != nullptr ? psw[i] : acc_t(1);
      if (mean) s = s / static_cast<acc_t>(offsets[b + 1] - offsets[b]);
      acc += s * static_cast<acc_t>(grad[(b * k + j) * d + x]);
    }
    grad_weight[row * d + x] = static_cast<scalar_t>(acc);
  }
}

Tensor hashed_embedding_bag_backward_cuda(const Tensor& grad_output, const Tensor& values, const Tensor& offsets,
                                          const Tensor& feature_index, const Tensor& coefficients, const Tensor& num_rows,
                                          c10::SymInt num_weight_rows, c10::string_view mode,
                                          const std::optional<Tensor>& per_sample_weights) {
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.is_floating_point(), "grad_output must be (B, K, D) floating point");
  check_bag_inputs(grad_output, "grad_output", mode, values, offsets, feature_index, coefficients, num_rows, per_sample_weights);
  c10::cuda::CUDAGuard guard(grad_output.device());
  const Tensor g = grad_output.contiguous(), off = as_int64(offsets);
  const int64_t nbags = off.size(0) - 1, k = coefficients.size(1), d = g.size(2), n = values.size(0);
  TORCH_CHECK(g.size(0) == nbags && g.size(1) == k, "grad_output must be (B, K, D) = (", nbags, ", ", k, ", D)");
  const int64_t m = num_weight_rows.expect_int();
  Tensor psw;
  if (per_sample_weights.has_value()) psw = per_sample_weights->to(acc_dtype(g.scalar_type())).contiguous();
  Tensor grad_weight = at::zeros({m, d}, g.options());
  if (n * k == 0 || d == 0) return grad_weight;
  const Tensor rows = multi_probe_hash_cuda(values, feature_index, coefficients, num_rows).reshape({-1});  // (N K,)
  const auto sorted = at::sort(rows, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const Tensor& sorted_rows = std::get<0>(sorted);
  const Tensor perm = std::get<1>(sorted).contiguous();
  const auto uniq = at::unique_consecutive(sorted_rows, /*return_inverse=*/false, /*return_counts=*/true, /*dim=*/0);
  const Tensor unique_rows = std::get<0>(uniq).contiguous();
  const Tensor counts = std::get<2>(uniq).contiguous();
  const Tensor starts = (at::cumsum(counts, 0) - counts).contiguous();
  Tensor bag_of = at::empty({n}, off.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (nbags > 0) {
    bag_of_kernel<<<std::min<int64_t>(blocks_for(nbags, kThreads), 65535), kThreads, 0, stream>>>(off.data_ptr<int64_t>(), nbags,
                                                                                                    bag_of.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t nunique = unique_rows.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "hashed_embedding_bag_backward_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    heb_backward_kernel<scalar_t, acc_t><<<blocks_for(nunique, kWarpsPerBlock), kWarpsPerBlock * kWarp, 0, stream>>>(
        g.data_ptr<scalar_t>(), d, k, off.data_ptr<int64_t>(), bag_of.data_ptr<int64_t>(),
        psw.defined() ? psw.data_ptr<acc_t>() : nullptr, mode == "mean", unique_rows.data_ptr<int64_t>(),
        starts.data_ptr<int64_t>(), counts.data_ptr<int64_t>(), perm.data_ptr<int64_t>(), nunique, m,
        grad_weight.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_weight;
}

// ------------------------------------------------------------------------------------ op 3: sid_pieces
__global__ void sid_count_kernel(const int64_t* __restrict__ ids, int64_t n, int64_t id_offset, const int64_t* __restrict__ item_offsets,
                                 int64_t unknown, int64_t* __restrict__ item, int64_t* __restrict__ count) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t it = wsub(ids[i], id_offset);
    it = (it >= 0 && it < unknown) ? it : unknown;
    item[i] = it;
    count[i] = item_offsets[it + 1] - item_offsets[it];
  }
}

__global__ void sid_fill_kernel(const int64_t* __restrict__ item, const int64_t* __restrict__ first, const int64_t* __restrict__ count,
                                int64_t n, const int64_t* __restrict__ item_offsets, const int64_t* __restrict__ item_rows, int64_t nrows,
                                int64_t* __restrict__ values, int64_t* __restrict__ owner) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = item_offsets[item[i]], c = count[i], o = first[i];
    CUDA_KERNEL_ASSERT(s >= 0 && c >= 0 && s + c <= nrows && "item_offsets are not a valid range of item_rows");
    for (int64_t q = 0; q < c; ++q) {
      values[o + q] = item_rows[s + q];
      owner[o + q] = i;
    }
  }
}

std::tuple<Tensor, Tensor, Tensor> sid_pieces_cuda(const Tensor& ids, const Tensor& lengths, const Tensor& item_offsets,
                                                   const Tensor& item_rows, int64_t id_offset) {
  TORCH_CHECK(ids.dim() == 1 && (ids.scalar_type() == at::kInt || ids.scalar_type() == at::kLong), "ids must be 1-D int32/int64");
  TORCH_CHECK(lengths.dim() == 1 && (lengths.scalar_type() == at::kInt || lengths.scalar_type() == at::kLong),
              "lengths must be 1-D int32/int64");
  TORCH_CHECK(item_offsets.dim() == 1 && item_offsets.size(0) >= 2, "item_offsets must be (I + 1,) with I >= 1 items");
  TORCH_CHECK(item_offsets.scalar_type() == at::kLong && item_rows.scalar_type() == at::kLong && item_rows.dim() == 1,
              "item_offsets/item_rows must be 1-D int64");
  check_same_device(lengths, ids, "lengths", "ids");
  check_same_device(item_offsets, ids, "item_offsets", "ids");
  check_same_device(item_rows, ids, "item_rows", "ids");
  c10::cuda::CUDAGuard guard(ids.device());
  const Tensor id64 = as_int64(ids), len64 = as_int64(lengths), io = item_offsets.contiguous(), ir = item_rows.contiguous();
  const int64_t n = ids.size(0), nb = lengths.size(0);
  TORCH_CHECK(nb == 0 || (len64 >= 0).all().item<bool>(), "lengths must be >= 0");
  const Tensor bag_end = at::cumsum(len64, 0);  // (B,)
  TORCH_CHECK((nb == 0 ? 0 : bag_end[-1].item<int64_t>()) == n, "sum(lengths) must equal the number of ids ", n);
  Tensor item = at::empty({n}, id64.options()), count = at::empty({n}, id64.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = std::min<int64_t>(blocks_for(n, kThreads), 65535 * 8);
  if (n > 0) {
    sid_count_kernel<<<blocks, kThreads, 0, stream>>>(id64.data_ptr<int64_t>(), n, id_offset, io.data_ptr<int64_t>(), io.size(0) - 2,
                                                      item.data_ptr<int64_t>(), count.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // prefix[i] = pieces of ids < i (n + 1,): first piece of id i, and the bag totals as differences.
  const Tensor prefix = at::cat({at::zeros({1}, id64.options()), at::cumsum(count, 0)}).contiguous();
  const int64_t total = prefix[-1].item<int64_t>();
  Tensor values = at::empty({total}, id64.options()), owner = at::empty({total}, id64.options());
  if (n > 0) {
    sid_fill_kernel<<<blocks, kThreads, 0, stream>>>(item.data_ptr<int64_t>(), prefix.data_ptr<int64_t>(), count.data_ptr<int64_t>(), n,
                                                     io.data_ptr<int64_t>(), ir.data_ptr<int64_t>(), ir.size(0),
                                                     values.data_ptr<int64_t>(), owner.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const Tensor bag_start = bag_end - len64;
  const Tensor new_lengths = (prefix.index_select(0, bag_end) - prefix.index_select(0, bag_start)).to(lengths.scalar_type());
  return {values, new_lengths, owner};
}

}  // namespace
}  // namespace recsys_emb

TORCH_LIBRARY_IMPL(recsys_emb, CUDA, m) {
  m.impl("multi_probe_hash", &recsys_emb::multi_probe_hash_cuda);
  m.impl("hashed_embedding_bag", &recsys_emb::hashed_embedding_bag_cuda);
  m.impl("hashed_embedding_bag_backward", &recsys_emb::hashed_embedding_bag_backward_cuda);
  m.impl("sid_pieces", &recsys_emb::sid_pieces_cuda);
}
