#include "runtime/fused_attention.h"

#include <fmt/format.h>

#include <array>

#include "common/philox.cuh"
#include "compiler/compiler.h"
#include "compiler/errors.h"
#include "compiler/spec/rules.h"
#include "flash_attention.sig.cuh"
#include "runtime/cuda_check.h"
#include "runtime/device.h"
#include "runtime/driver.h"

namespace lightseq {

// A variant's kernels (forward, D, grad_k/grad_v), loaded on the device.
struct FusedAttention::Variant {
  std::array<KernelInstance, 3> kernels;
  std::vector<std::unique_ptr<KernelModule>> modules;
  std::array<CUfunction, 3> fns{};
};

namespace {

enum { kFwd = 0, kDot = 1, kDkDv = 2 };

// A launch by the signature's shape (launch_of); an empty grid launches nothing.
void run(const KernelInstance& k, CUfunction fn, std::span<void* const> args, CUstream stream) {
  const sig::Launch l = launch_of(k, args);
  if (l.grid.x == 0 || l.grid.y == 0 || l.grid.z == 0) return;
  launch(fn, Dim3{l.grid.x, l.grid.y, l.grid.z}, Dim3{static_cast<unsigned>(l.block), 1, 1},
         static_cast<size_t>(l.smem_bytes), stream, const_cast<void**>(args.data()), k.label);
}

kern::DropoutArgs dropout_of(const AttentionArgs& a) {
  kern::DropoutArgs d = kern::make_dropout_args(a.seed, a.offset, a.dropout);
  d.seed_ptr = a.seed_ptr;
  d.offset_ptr = a.offset_ptr;
  return d;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

FusedAttention::FusedAttention(const AttentionOptions& options) : options_(options) {
  if (options.precision != Precision::kFp16 && options.precision != Precision::kBf16) {
    throw Error(fmt::format(
        "fused attention: precision {} is not taken: the kernels run fp16 and bf16 (convert q, k "
        "and v, or use the unfused attention)",
        to_string(options.precision)));
  }
  if (!spec_detail::fused_head_dim_ok(options.head_dim)) {
    throw Error(fmt::format(
        "fused attention: head_dim {} is not taken: a multiple of {} up to {} (larger or other "
        "head dims: the unfused attention)",
        options.head_dim, spec_detail::kFusedHeadDimMultiple, spec_detail::kFusedMaxHeadDim));
  }
  if (options.fwd_warps != 0 && options.fwd_warps != kern::kFlashFwdWarps &&
      options.fwd_warps != kern::kFlashFwdWarpsAlt) {
    throw Error(fmt::format("fused attention: the forward runs {} or {} warps per block, not {}",
                            kern::kFlashFwdWarps, kern::kFlashFwdWarpsAlt, options.fwd_warps));
  }
  if (options.bwd_blocks != 0 && !kern::flash_bwd_blocks_ok(options.head_dim, options.bwd_blocks)) {
    throw Error(fmt::format(
        "fused attention: the grad_k/grad_v kernel is built for 1 block per SM, or 2 up to head "
        "dim {}: not {} at head dim {}",
        kern::kFlashLeanMaxD, options.bwd_blocks, options.head_dim));
  }
}

FusedAttention::~FusedAttention() {
  if (variants_.empty()) return;
  ScopedContext ctx(options_.device);
  variants_.clear();
}

void FusedAttention::check(const AttentionArgs& a) const {
  auto bad = [](const std::string& what) { throw Error("fused attention: " + what); };
  if (a.batch < 0 || a.heads <= 0 || a.q_len < 0 || a.k_len < 0) {
    bad(
        fmt::format("sizes must be batch >= 0, heads > 0, q_len >= 0, k_len >= 0 (got {}, {}, {}, "
                    "{})",
                    a.batch, a.heads, a.q_len, a.k_len));
  }
  if ((a.cu_seqlens_q != nullptr && a.q_len > 0 && a.total_q <= 0) ||
      (a.cu_seqlens_k != nullptr && a.k_len > 0 && a.total_k <= 0)) {
    bad(
        fmt::format("a packed side needs its rows: total_q {}, total_k {} (q's and k's rows, "
                    "cu_seqlens[batch])",
                    a.total_q, a.total_k));
  }
  if (a.q_len > 0 && a.k_len == 0) {
    bad("k_len is 0: a query needs at least one key (packed: the longest key sequence)");
  }
  if (a.batch * a.heads > kern::kFlashMaxBatchHeads) {
    bad(fmt::format("batch · heads = {} is past the grid's {}: split the batch", a.batch * a.heads,
                    kern::kFlashMaxBatchHeads));
  }
  const int64_t width = a.heads * options_.head_dim;
  if (!kern::flash_ld_ok(a.ld_q) || !kern::flash_ld_ok(a.ld_kv) || a.ld_q < width ||
      a.ld_kv < width) {
    bad(
        fmt::format("row strides ld_q {} and ld_kv {} must be multiples of 8 elements, at least "
                    "heads · head_dim = {}",
                    a.ld_q, a.ld_kv, width));
  }
  if (!aligned16(a.q) || !aligned16(a.k) || !aligned16(a.v)) {
    bad("q, k and v must be 16-byte aligned (their column offsets multiples of 8 elements)");
  }
  if (!(a.dropout >= 0.0 && a.dropout < 1.0)) {
    bad(fmt::format("dropout {} must be in [0, 1)", a.dropout));
  }
}

std::vector<KernelInstance> FusedAttention::instances(const AttentionArgs& a) const {
  check(a);
  const Precision p = options_.precision;
  const int64_t d = options_.head_dim;
  const auto mask = tv("kMask", kern::mask_of(a.key_padding != nullptr, a.causal));
  const auto drop = on_off<kern::Drop>("kDrop", a.dropout > 0);
  // packed where either side is (the padded builds read no offsets: the plans' own kernels)
  const auto seqs =
      tv("kSeqs", a.cu_seqlens_q != nullptr || a.cu_seqlens_k != nullptr ? kern::Seqs::kPacked
                                                                         : kern::Seqs::kPadded);
  const int warps = options_.fwd_warps ? options_.fwd_warps : kern::kFlashFwdWarps;
  const int blocks = options_.bwd_blocks ? options_.bwd_blocks : kern::flash_bwd_blocks(d);
  return {instantiate(sig::kFlashFwd, p, {{"kD", d}, mask, drop, seqs, {"kWarps", warps}}),
          instantiate(sig::kFlashDot, p, {{"kD", d}}),
          instantiate(sig::kFlashDkDv, p, {{"kD", d}, mask, drop, seqs, {"kBlocks", blocks}})};
}

FusedAttention::Variant& FusedAttention::variant(const AttentionArgs& a) {
  const std::vector<KernelInstance> ks = instances(a);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = variants_.find(ks[kFwd].label);
  if (it != variants_.end()) return *it->second;
  auto v = std::make_unique<Variant>();
  for (int i = 0; i < 3; ++i) v->kernels[i] = ks[i];
  DiskCache cache(options_.cache_dir.empty()
                      ? std::nullopt
                      : std::optional<std::filesystem::path>(options_.cache_dir));
  BuildOptions build;
  build.archs = {device_target(options_.device)};
  const BuildReport report = build_kernels(ks, options_.precision, cache, build);
  ScopedContext ctx(options_.device);
  for (const CompiledModule& cm : report.modules) {
    v->modules.push_back(std::make_unique<KernelModule>(cm.entry, options_.device));
    for (int i = 0; i < 3; ++i) {
      if (v->modules.back()->contains(ks[i].label)) {
        v->fns[i] = v->modules.back()->function(ks[i].label);
      }
    }
  }
  for (int i = 0; i < 3; ++i) {
    if (v->fns[i] == nullptr) {
      throw InternalError("fused attention: no kernel " + ks[i].label + " in the build");
    }
  }
  return *variants_.emplace(ks[kFwd].label, std::move(v)).first->second;
}

void FusedAttention::forward(const AttentionArgs& a, void* out, float* lse, int* bad_seqlens,
                             CUstream stream) {
  if (!aligned16(out)) throw Error("fused attention: out must be 16-byte aligned");
  Variant& v = variant(a);
  const void *q = a.q, *k = a.k, *vv = a.v;
  const uint8_t* pad = a.key_padding;
  const int *cu_q = a.cu_seqlens_q, *cu_k = a.cu_seqlens_k;
  int64_t batch = a.batch, heads = a.heads, q_len = a.q_len, k_len = a.k_len, total_q = a.total_q,
          total_k = a.total_k, ld_q = a.ld_q, ld_kv = a.ld_kv;
  float scale = a.scale;
  kern::DropoutArgs drop = dropout_of(a);
  void* args[] = {&q,       &k,           &vv,    &pad,   &cu_q,  &cu_k,  &out,
                  &lse,     &bad_seqlens, &batch, &heads, &q_len, &k_len, &total_q,
                  &total_k, &ld_q,        &ld_kv, &scale, &drop};
  if (batch == 0 || q_len == 0) return;
  ScopedContext ctx(options_.device);
  run(v.kernels[kFwd], v.fns[kFwd], args, stream);
}

namespace {

// The backward's argument lists, in the signatures' order, over one set of values.
struct BackwardArgs {
  const void *q, *k, *v, *out, *grad_out;
  const uint8_t* pad;
  const int *cu_q, *cu_k;
  const float* lse;
  float* dot = nullptr;
  void *grad_q, *grad_k, *grad_v;
  float* dq_acc = nullptr;
  int* dq_sync = nullptr;
  int64_t batch, heads, q_len, k_len, total_q, total_k, ld_q, ld_kv, rows;
  float scale;
  kern::DropoutArgs drop;
  std::array<void*, 8> dot_args() {
    return {&out, &grad_out, &cu_q, &dot, &rows, &heads, &q_len, &k_len};
  }
  std::array<void*, 25> dkdv_args() {
    return {&q,     &k,       &v,       &pad,    &cu_q,   &cu_k,    &grad_out, &lse,   &dot,
            &out,   &grad_q,  &grad_k,  &grad_v, &dq_acc, &dq_sync, &batch,    &heads, &q_len,
            &k_len, &total_q, &total_k, &ld_q,   &ld_kv,  &scale,   &drop};
  }
};

BackwardArgs backward_args(const AttentionArgs& a, const void* out, const float* lse,
                           const void* grad_out, void* grad_q, void* grad_k, void* grad_v) {
  BackwardArgs b{};
  b.q = a.q, b.k = a.k, b.v = a.v, b.out = out, b.grad_out = grad_out;
  b.pad = a.key_padding, b.cu_q = a.cu_seqlens_q, b.cu_k = a.cu_seqlens_k, b.lse = lse;
  b.grad_q = grad_q, b.grad_k = grad_k, b.grad_v = grad_v;
  b.batch = a.batch, b.heads = a.heads, b.q_len = a.q_len, b.k_len = a.k_len;
  b.total_q = a.total_q, b.total_k = a.total_k;
  b.ld_q = a.ld_q, b.ld_kv = a.ld_kv, b.rows = FusedAttention::lse_entries(a);
  b.scale = a.scale;
  b.drop = dropout_of(a);
  return b;
}

// D (lse's layout, fp32) where the D kernel runs, else none.
size_t dot_bytes(const KernelInstance& dot, BackwardArgs& b) {
  const sig::Launch l = launch_of(dot, b.dot_args());
  return l.grid.x == 0 ? 0 : static_cast<size_t>(b.rows) * sizeof(float);
}

}  // namespace

int64_t FusedAttention::lse_entries(const AttentionArgs& a) {
  return a.cu_seqlens_q != nullptr ? a.heads * a.total_q : a.batch * a.heads * a.q_len;
}

size_t FusedAttention::backward_workspace(const AttentionArgs& a) const {
  const std::vector<KernelInstance> ks = instances(a);
  BackwardArgs b = backward_args(a, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr);
  // each buffer at Allocator's 256-byte alignment, as an arena over one block hands them out
  auto aligned = [](size_t bytes) {
    return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
  };
  size_t total = aligned(dot_bytes(ks[kDot], b));
  for (const ScratchNeed& n : scratch_of(ks[kDkDv], b.dkdv_args())) total += aligned(n.bytes);
  return total;
}

void FusedAttention::backward(const AttentionArgs& a, const void* out, const float* lse,
                              const void* grad_out, void* grad_q, void* grad_k, void* grad_v,
                              Allocator& allocator, CUstream stream) {
  for (const void* p : {out, grad_out, static_cast<const void*>(grad_q),
                        static_cast<const void*>(grad_k), static_cast<const void*>(grad_v)}) {
    if (!aligned16(p))
      throw Error("fused attention: out and the gradients must be 16-byte aligned");
  }
  Variant& v = variant(a);
  if (a.batch == 0) return;
  ScopedContext ctx(options_.device);
  BackwardArgs b = backward_args(a, out, lse, grad_out, grad_q, grad_k, grad_v);
  // Every buffer from the caller's allocator, returned in stream order after the launches.
  std::vector<DeviceBuffer> held;
  if (const size_t bytes = dot_bytes(v.kernels[kDot], b); bytes > 0) {
    held.emplace_back(allocator, bytes, stream);
    b.dot = held.back().as<float>();
  }
  auto dkdv = b.dkdv_args();
  for (const ScratchNeed& n : scratch_of(v.kernels[kDkDv], dkdv)) {
    if (n.bytes == 0) continue;  // the pointer stays null
    held.emplace_back(allocator, n.bytes, stream);
    *static_cast<void**>(dkdv[n.param]) = held.back().get();
    if (n.zeroed) {
      LIGHTSEQ_CU_CHECK(driver().cuMemsetD8Async(reinterpret_cast<CUdeviceptr>(held.back().get()),
                                                 0, n.bytes, stream));
    }
  }
  if (a.q_len > 0) run(v.kernels[kDot], v.fns[kDot], b.dot_args(), stream);
  // With no query rows the grad_k/grad_v kernel still writes grad_k and grad_v (zeros).
  run(v.kernels[kDkDv], v.fns[kDkDv], dkdv, stream);
}

}  // namespace lightseq
