// fused_attention.h — the fused attention (templates/flash_attention.cuh) as a function of its own,
// outside any layer plan: forward and backward of softmax(q·kᵀ·scale + mask) (dropped) · v over a
// padded batch or a packed one of variable lengths (cumulative sequence offsets, as
// flash_attn_varlen_func takes them), in the token layout (rows of `ld` elements, head h in columns
// [h·d, (h + 1)·d)). The Python front end's lightseq.nn.functional.attention, attention_bench and
// the tests call it. Kernels are compiled on first use of a variant (mask and dropout), through
// the disk cache; launches take their shapes and scratch from the kernels' signatures (launch_of,
// scratch_of). No synchronization: graph-capturable once the variant is compiled (the first call
// of a variant compiles and loads its kernels, which capture cannot).
#pragma once

#include <cuda.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "compiler/ir/kernel.h"
#include "runtime/allocator.h"
#include "runtime/module.h"

namespace lightseq {

struct AttentionOptions {
  Precision precision = Precision::kBf16;  // fp16 or bf16 (the kernels run on tensor cores)
  int64_t head_dim = 64;                   // a multiple of 16 in [16, 128]
  int device = 0;
  std::filesystem::path cache_dir;  // empty: the default cache (DiskCache)
  // The kernels' geometry, for A/B timings (attention_bench): the forward's warps per block and
  // the blocks per SM the grad_k/grad_v kernel is built for; 0: the plans' (kFlashFwdWarps,
  // flash_bwd_blocks). Every geometry gives the same bits.
  int fwd_warps = 0;
  int bwd_blocks = 0;
};

// One call's operands. Pointers are device addresses; q, k, v, out and the gradients 16-byte
// aligned, ld_q and ld_kv multiples of 8 elements.
struct AttentionArgs {
  const void* q = nullptr;  // [rows_q, ld_q]: row r holds every head's query of token r
  const void* k = nullptr;  // [rows_k, ld_kv]
  const void* v = nullptr;  // [rows_k, ld_kv]
  int64_t ld_q = 0, ld_kv = 0;
  // Padded: batch sequences of q_len queries and k_len keys (rows b·q_len + i). Packed: with
  // cu_seqlens_q (int32 [batch + 1], ascending, cu_seqlens_q[0] = 0) sequence b's queries are rows
  // cu_seqlens_q[b] .. cu_seqlens_q[b + 1], and q_len is the longest sequence's length (at least
  // every sequence's: a longer one sets the forward's bad_seqlens flag and is cut); the same for
  // the keys with cu_seqlens_k and k_len. Either side may be packed alone.
  const int* cu_seqlens_q = nullptr;
  const int* cu_seqlens_k = nullptr;
  int64_t batch = 0, heads = 0, q_len = 0, k_len = 0;
  // Packed sides: their rows (q's, k's), the bounds of their offsets (offsets past them are cut
  // and flagged, never followed) and, for the queries, lse's [heads, total_q].
  int64_t total_q = 0, total_k = 0;
  // Optional: nonzero bytes mark padding keys ([batch, k_len] padded, one per key row packed).
  const uint8_t* key_padding = nullptr;
  bool causal = false;  // key j seen by query i when j <= i + (keys - queries) of its sequence
  float scale = 0;      // usually 1 / sqrt(head_dim)
  // Dropout of the probabilities: p, and the Philox stream (seed, offset); with seed_ptr /
  // offset_ptr (device addresses) the kernels read the seed and add the offset at run time (CUDA
  // graph replays: PyTorch's graph-safe generator state). The backward must be given the same.
  double dropout = 0;
  uint64_t seed = 0, offset = 0;
  const uint64_t* seed_ptr = nullptr;
  const uint64_t* offset_ptr = nullptr;
};

class FusedAttention {
 public:
  // Throws Error for a head dim or precision the kernels do not take.
  explicit FusedAttention(const AttentionOptions& options);
  ~FusedAttention();
  FusedAttention(const FusedAttention&) = delete;
  FusedAttention& operator=(const FusedAttention&) = delete;

  // out [rows_q, heads·head_dim] (dense) and lse fp32, the natural log of each query row's softmax
  // denominator (+inf where every key is masked): [batch·heads, q_len] padded, [heads, total_q]
  // packed (lse_entries). bad_seqlens: an int32 the forward sets to 1 (never to 0: the caller
  // zeroes it) when packed offsets are out of order, past total_q / total_k, or a sequence is
  // longer than q_len / k_len (may be null).
  void forward(const AttentionArgs& a, void* out, float* lse, int* bad_seqlens, CUstream stream);
  // grad_q in q's layout (ld_q), grad_k and grad_v in k's and v's (ld_kv; they may be column
  // slices of one buffer, as q, k and v may), from the forward's out and lse; `=`. The D rows and
  // grad_q's parts over several key blocks come from `allocator` on `stream` (backward_workspace
  // bytes) and go back to it after the launches (stream-ordered).
  void backward(const AttentionArgs& a, const void* out, const float* lse, const void* grad_out,
                void* grad_q, void* grad_k, void* grad_v, Allocator& allocator, CUstream stream);
  // lse's entries at these arguments.
  static int64_t lse_entries(const AttentionArgs& a);
  // What backward() takes from the allocator at these arguments, in bytes, each buffer rounded
  // up to kWorkspaceAlign (an allocator serving them from one block of this size suffices).
  size_t backward_workspace(const AttentionArgs& a) const;
  static constexpr size_t kWorkspaceAlign = 256;

  // The kernel instances a call with these arguments runs: forward, D, grad_k/grad_v (in that
  // order). Throws ArgumentError-like Error naming what is wrong for arguments the kernels cannot
  // take (sizes, alignment, batch · heads past the grid's limit).
  std::vector<KernelInstance> instances(const AttentionArgs& a) const;
  const AttentionOptions& options() const { return options_; }

 private:
  struct Variant;
  Variant& variant(const AttentionArgs& a);
  void check(const AttentionArgs& a) const;

  AttentionOptions options_;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<Variant>> variants_;  // by the forward's label
};

}  // namespace lightseq
