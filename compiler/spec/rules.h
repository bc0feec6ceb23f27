// rules.h — the limits of a model spec (docs/spec.md lists them) and the "did you mean"
// suggestion shared by the parser and the validator.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace lightseq::spec_detail {

// Kernels move 16-byte vectors: 8 elements of bf16/fp16. Every width a kernel vectorizes over
// (hidden, ffn, head_dim) is a multiple of this, in fp32 too, so one rule covers all precisions.
inline constexpr int64_t kVectorElements = 8;
inline constexpr int64_t kMaxHidden = 65536;
inline constexpr int64_t kMaxFfn = 262144;
inline constexpr int64_t kMaxHeadDim = 256;  // largest head the attention kernels specialize for
// The head dims "attention": "fused" takes (templates/flash_attention.cuh: m16n8k16 tensor-core
// steps over the head dim, its tiles in static shared memory); the validator and the planner's
// backend pass both ask fused_head_dim_ok.
inline constexpr int64_t kFusedHeadDimMultiple = 16;
inline constexpr int64_t kFusedMaxHeadDim = 128;
constexpr bool fused_head_dim_ok(int64_t d) {
  return d > 0 && d % kFusedHeadDimMultiple == 0 && d <= kFusedMaxHeadDim;
}
// "attention": "auto" runs a call fused when each of its attentions has at most this many keys
// (T, and S for a decoder's cross-attention), unfused above (compiler/planner/attention_backend.h).
// Measured per layer fwd+bwd on the H200 (benchmarks/RESULTS.md, thirteenth session), fused
// against unfused: -8 % at T = 32, -3 % at 64, -7 % at 128 (where one backward block holds every
// key: flash_bwd_one_block), then +0 to +6 % at 256, +4 % at 384, +7 % at 512, +10 to +20 % at
// 1024. (On an H100 the fused kernels still won at 512: twelfth session.)
inline constexpr int64_t kAutoFusedMaxKeys = 128;
inline constexpr int64_t kMaxCount = 1024;  // layers in one stack
inline constexpr int64_t kMaxStacks = 256;  // stacks in `layers`: identical layers share one stack
inline constexpr int64_t kMaxVocab = 2147483647;  // token ids are int32 on the device
inline constexpr int64_t kMaxPositions = 1048576;
inline constexpr int64_t kMaxTokenTypes = 65536;     // rows of a token-type table
inline constexpr int64_t kMinIndex = -2147483648LL;  // ignore_index is compared to int32 targets
inline constexpr int64_t kMaxIndex = 2147483647;
inline constexpr size_t kMaxNameLength = 128;
// A spec is a few KiB (examples/*.json: under 1 KiB). The bound keeps a wrong file (a dataset, a
// generated 14 MB spec) from costing gigabytes: parsing takes about 40 bytes of memory per byte.
inline constexpr size_t kMaxSpecBytes = size_t{1} << 20;

static_assert(kMaxHidden % kVectorElements == 0 && kMaxFfn % kVectorElements == 0);
static_assert(kMaxHeadDim % kVectorElements == 0);
// Largest parameter matrix (vocab x hidden) and positions table stay far below int64's range.
static_assert(kMaxVocab <= INT64_MAX / kMaxHidden && kMaxPositions <= INT64_MAX / kMaxHidden);

// Optimal-string-alignment distance (Levenshtein plus adjacent transpositions).
int64_t edit_distance(std::string_view a, std::string_view b);

// The candidate the user most likely meant by `given`: the nearest by edit distance when it is
// at most 1 (2 for words of 5+ letters), compared case-insensitively; else a candidate that
// contains `given` or is contained in it (at least 3 letters: "num_heads" -> "heads").
std::optional<std::string_view> closest_name(std::string_view given,
                                             std::span<const std::string_view> candidates);

}  // namespace lightseq::spec_detail

namespace lightseq {

// Appends `s` to `out` with everything outside printable ASCII escaped (\n, \t, \xNN; kText also
// \r; kJsonString also \" and \\), stopping with "..." once `out` reaches `max_chars`.
enum class Escape { kText, kJsonString };
void append_escaped(std::string& out, std::string_view s, size_t max_chars, Escape mode);

// `s` as a JSON string literal with everything outside printable ASCII escaped, cut to about
// `max_chars` characters with "..." when longer (how spec issues quote names and paths).
std::string quote_string(std::string_view s, size_t max_chars = 60);

}  // namespace lightseq
