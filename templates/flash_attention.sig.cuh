// flash_attention.sig.cuh — flash_attention.cuh's traits and signatures: the fused attention,
// forward and backward. Traits: the family's launch formulas as __host__ __device__ constexpr
// functions, which the kernels and the runtime share. Signatures (host-only, common/signature.cuh):
// each kernel's template and run-time parameters with their roles, its launch shape and its scratch
// extents, declared once; codegen, the planner and the runtime derive everything else from them.
#pragma once

#include "common/enums.cuh"
#include "common/launch.cuh"

namespace lightseq::kern {

// ---- flash_attention.cuh -----------------------------------------------------------------------
inline constexpr int kFlashBlockM = 64;  // query rows per block of grad_q: 4 warps of 16
inline constexpr int kFlashBlockN = 64;  // keys per tile
inline constexpr int kFlashThreads = 128;
// The forward: kWarps warps of 16 query rows per block (a template parameter). The plans launch
// kFlashFwdWarps; kFlashFwdWarpsAlt is the other geometry attention_bench can time (--fwd-warps),
// whose results are the same bits (each query row is its warp's work alone).
inline constexpr int kFlashFwdWarps = 4;
inline constexpr int kFlashFwdWarpsAlt = 8;
LIGHTSEQ_HD constexpr int flash_fwd_block(int warps = kFlashFwdWarps) { return 32 * warps; }
// The largest head dim whose kernels fit 128 registers a thread (the forward's state, or the
// backward's with its k and v fragments in shared memory): the kernels built for 16 warps per SM.
inline constexpr int64_t kFlashLeanMaxD = 64;
// The forward's register cap, as __launch_bounds__'s blocks per SM: up to kFlashLeanMaxD, 16 warps
// (128 registers: four blocks of the plans' 4 warps; 4-8 % faster with dropout at T 128-512 on an
// H100, the same without, fourteenth session); past it 0, no cap: the compiler's own choice (168
// registers at d 96 and 128, three blocks of 4 warps). An explicit 1 is not the same: ptxas then
// takes up to 255 (199 at d 128: two blocks), and the forward at d 96-128 ran 15-25 % slower (H100,
// fifteenth session).
LIGHTSEQ_HD constexpr int flash_fwd_min_blocks(int64_t d, int warps) {
  return d <= kFlashLeanMaxD ? 16 / warps : 0;
}
// The most batch · heads the grids below take: CUDA's limit on gridDim.y.
inline constexpr int64_t kFlashMaxBatchHeads = 65535;
// The kernels read and write the token layout of the projections around them (q, k and v column
// slices of packed [B·T, P·H] rows, ld = P·H elements apart; out [B·T, heads·kD]) with 16-byte
// copies: every row start must stay 16-byte aligned, so ld and the slices' column offsets are
// multiples of 8 elements.
LIGHTSEQ_HD constexpr bool flash_aligned(int64_t elems) { return elems % 8 == 0; }
LIGHTSEQ_HD constexpr bool flash_ld_ok(int64_t ld) { return ld > 0 && flash_aligned(ld); }
// x: query tiles, y: batch · heads.
LIGHTSEQ_HD constexpr GridDim flash_fwd_grid(int64_t batch_heads, int64_t q_len,
                                             int warps = kFlashFwdWarps) {
  return GridDim{static_cast<uint32_t>(ceil_div(q_len, 16 * warps)),
                 static_cast<uint32_t>(batch_heads), 1};
}

// The backward: grad_k/grad_v per block of keys, 16 per warp (x: key blocks, y: batch · heads),
// looping over query tiles of flash_bwd_block_m(kD, kBlocks) rows; grad_q per query tile as the
// forward; D (Σ grad_out·out) one row per thread. When one key block holds every key
// (flash_bwd_one_block: up to kFlashBwdBlockN keys), the grad_k/grad_v kernel also writes grad_q
// and computes D itself: the D and grad_q kernels' grids are then empty (nothing launched), and the
// backward is one launch. Blocks of 8 warps only where they make one block of more than 64 keys; 4
// otherwise (measured on an H100 with the ~255-register geometry: with several blocks, 8 warps
// were 8-10 % slower than 4 — one block per SM instead of two).
inline constexpr int kFlashBwdBlockN = 128;   // the most keys of one block (8 warps)
inline constexpr int kFlashBwdThreads = 256;  // the most threads of one block
LIGHTSEQ_HD constexpr bool flash_bwd_one_block(int64_t k_len) {
  return k_len > 0 && k_len <= kFlashBwdBlockN;
}
LIGHTSEQ_HD constexpr int flash_bwd_warps(int64_t k_len) {
  return flash_bwd_one_block(k_len) && k_len > 64 ? 8 : 4;
}
LIGHTSEQ_HD constexpr int flash_bwd_threads(int64_t k_len) { return 32 * flash_bwd_warps(k_len); }
LIGHTSEQ_HD constexpr int flash_bwd_block_n(int64_t k_len) { return 16 * flash_bwd_warps(k_len); }
// Blocks per SM the grad_k/grad_v kernel is built for (its template parameter kBlocks): 1, k and v
// fragments held in registers across the query loop (~255 registers: one 8-warp block per SM,
// whose barriers and loads nothing hides), or 2 (head dims up to 64): query tiles of 32 rows and
// the k and v fragments read from shared memory per tile, at most 128 registers
// (__launch_bounds__), so that a second block runs while the first waits. The plans take
// flash_bwd_blocks(d); attention_bench times either (--bwd-blocks). Measured on an H100 (228 KiB
// of shared memory per SM: two one-key-block blocks of ~61 KiB fit); on an SM with ~100 KiB
// (sm_86/89) only one would, and the register cap would cost without the second block: not
// measured, the plans do not yet decide by architecture.
LIGHTSEQ_HD constexpr bool flash_bwd_blocks_ok(int64_t d, int blocks) {
  return blocks == 1 || (blocks == 2 && d <= kFlashLeanMaxD);
}
LIGHTSEQ_HD constexpr int flash_bwd_blocks(int64_t d) { return flash_bwd_blocks_ok(d, 2) ? 2 : 1; }
// The other geometry of head dim d, where it has one (attention_bench and the tests' A/B), else 0.
LIGHTSEQ_HD constexpr int flash_bwd_other_blocks(int64_t d) {
  return flash_bwd_blocks(d) == 2 ? 1 : (flash_bwd_blocks_ok(d, 2) ? 2 : 0);
}
// Query rows per tile of the grad_k/grad_v kernel: 64, or 32 past head dim 64 (the block's k and v
// fragments and its two accumulators already hold kD / 2 registers each per thread) and in the
// two-block geometry.
LIGHTSEQ_HD constexpr int flash_bwd_block_m(int64_t d, int blocks) {
  return d > kFlashLeanMaxD || blocks > 1 ? 32 : 64;
}
// Its dynamic shared memory, byte offsets (fp16/bf16 elements, rows padded by 8): the query side
// in kFlashBwdStages stages `stage` bytes apart (a ring: tile i in stage i % stages, the next
// tile's copies in flight while this one's products run), each a query tile [m, d] at 0 and its
// grad_out tile (each rounded up to 1 KiB), with one key block its out tile (for D), the tile's lse
// and D (fp32; flash_attn_bwd_dot_kernel's with several key blocks, staged from the out tile with
// one); then the block's keys [n, d] (at a 1 KiB boundary) and values [n, d] (read by the sm_90a
// build, and by the mma.sync build with two blocks per SM; its keys also for grad_q with one key
// block), and with one key block the tile's dSᵀ [n, m]. The kernel carves its buffer by these;
// `bytes` is the launch's. Offsets gs..dot are within stage 0.
inline constexpr int kFlashBwdStages = 2;
struct FlashBwdSmem {
  int gs, os, lse, dot, stage, ks, vs, dst, bytes;
};
LIGHTSEQ_HD constexpr FlashBwdSmem flash_bwd_smem_layout(int64_t d, int64_t k_len, int blocks) {
  const int m = flash_bwd_block_m(d, blocks), n = flash_bwd_block_n(k_len);
  // the tiles 1024 bytes apart (the sm_90a build's swizzle atoms; its tiles are unpadded and fit
  // the padded rows' room)
  const int row = static_cast<int>(d + 8) * 2,
            tile = static_cast<int>(ceil_div(m * row, 1024)) * 1024;
  const bool one = flash_bwd_one_block(k_len);
  FlashBwdSmem l{};
  l.gs = tile;
  l.os = 2 * tile;
  l.lse = l.os + (one ? tile : 0);
  l.dot = l.lse + 4 * m;
  l.stage = static_cast<int>(ceil_div(l.dot + 4 * m, 1024)) * 1024;
  l.ks = kFlashBwdStages * l.stage;
  l.vs = l.ks + n * row;
  l.dst = l.vs + n * row;
  l.bytes = l.dst + (one ? n * (m + 8) * 2 : 0);
  return l;
}
LIGHTSEQ_HD constexpr int flash_bwd_smem(int64_t d, int64_t k_len, int blocks) {
  return flash_bwd_smem_layout(d, k_len, blocks).bytes;
}
LIGHTSEQ_HD constexpr GridDim flash_bwd_grid(int64_t batch_heads, int64_t k_len) {
  return GridDim{static_cast<uint32_t>(ceil_div(k_len, flash_bwd_block_n(k_len))),
                 static_cast<uint32_t>(batch_heads), 1};
}
LIGHTSEQ_HD constexpr GridDim flash_dq_grid(int64_t batch_heads, int64_t q_len, int64_t k_len) {
  return flash_bwd_one_block(k_len) ? GridDim{0, 1, 1} : flash_fwd_grid(batch_heads, q_len);
}
LIGHTSEQ_HD constexpr GridDim flash_dot_grid(int64_t rows, int64_t k_len) {
  return flash_bwd_one_block(k_len) ? GridDim{0, 1, 1}
                                    : grid_1d(ceil_div(rows, kElementwiseThreads));
}

}  // namespace lightseq::kern

#if !defined(__CUDACC_RTC__)
#include "common/signature.cuh"

namespace lightseq::kern::sig {

// The template parameters of the D and grad_q kernels; the forward adds its warps per block, the
// grad_k/grad_v kernel its blocks per SM.
namespace flash_bwd {
inline constexpr TParam kT[] = {kDTypeParam, int_param("kD", "d"),
                                enum_param("kMask", "mask", kMaskInfo),
                                enum_param("kDrop", "drop", kDropInfo)};
}  // namespace flash_bwd

namespace flash_fwd {
inline constexpr auto kTList = extend(flash_bwd::kT, int_param("kWarps", "w"));
inline constexpr const auto& kT = kTList.v;
inline constexpr Param kP[] = {
    in("q", CType::kConstTPtr),   in("k", CType::kConstTPtr),
    in("v", CType::kConstTPtr),   in("key_padding", CType::kConstU8Ptr, Nullable::kYes),
    out("out", CType::kTPtr),     out("lse", CType::kF32Ptr),
    scalar("batch", CType::kI64), scalar("heads", CType::kI64),
    scalar("q_len", CType::kI64), scalar("k_len", CType::kI64),
    scalar("ld_q", CType::kI64),  scalar("ld_kv", CType::kI64),
    scalar("scale", CType::kF32), dropout("drop")};
inline Launch launch(const Values& v) {
  const int warps = static_cast<int>(v.t[index_of(kT, "kWarps")]);
  return {flash_fwd_grid(v.i[index_of(kP, "batch")] * v.i[index_of(kP, "heads")],
                         v.i[index_of(kP, "q_len")], warps),
          flash_fwd_block(warps), 0};
}
}  // namespace flash_fwd
// The forward and the two gradient kernels each take ~1 s of NVRTC per instance: each its own
// program, so that a model's instances compile in parallel.
inline constexpr Kernel kFlashFwd =
    make_kernel("flash_attention", "flash_attn_fwd_kernel", flash_fwd::kT, flash_fwd::kP,
                &flash_fwd::launch, Program::kOwn);

namespace flash_dot {
inline constexpr TParam kT[] = {kDTypeParam, int_param("kD", "d")};
inline constexpr Param kP[] = {in("out", CType::kConstTPtr), in("grad_out", CType::kConstTPtr),
                               out("dot", CType::kF32Ptr),   scalar("rows", CType::kI64),
                               scalar("heads", CType::kI64), scalar("q_len", CType::kI64),
                               scalar("k_len", CType::kI64)};
inline Launch launch(const Values& v) {
  return {flash_dot_grid(v.i[index_of(kP, "rows")], v.i[index_of(kP, "k_len")]),
          kElementwiseThreads, 0};
}
}  // namespace flash_dot
inline constexpr Kernel kFlashDot = make_kernel("flash_attention", "flash_attn_bwd_dot_kernel",
                                                flash_dot::kT, flash_dot::kP, &flash_dot::launch);

// The two gradient kernels' parameters (grad_k and grad_v, or grad_q, in place of `grads`).
#define LIGHTSEQ_FLASH_BWD_PARAMS(...)                                                          \
  in("q", CType::kConstTPtr), in("k", CType::kConstTPtr), in("v", CType::kConstTPtr),           \
      in("key_padding", CType::kConstU8Ptr, Nullable::kYes), in("grad_out", CType::kConstTPtr), \
      in("lse", CType::kConstF32Ptr), in("dot", CType::kConstF32Ptr), __VA_ARGS__,              \
      scalar("batch", CType::kI64), scalar("heads", CType::kI64), scalar("q_len", CType::kI64), \
      scalar("k_len", CType::kI64), scalar("ld_q", CType::kI64), scalar("ld_kv", CType::kI64),  \
      scalar("scale", CType::kF32), dropout("drop")

// grad_q: written only when one key block holds every key (flash_bwd_one_block); `out` read then.
namespace flash_dkdv {
inline constexpr auto kTList = extend(flash_bwd::kT, int_param("kBlocks", "b"));
inline constexpr const auto& kT = kTList.v;
inline constexpr Param kP[] = {
    LIGHTSEQ_FLASH_BWD_PARAMS(in("out", CType::kConstTPtr), out("grad_q", CType::kTPtr),
                              out("grad_k", CType::kTPtr), out("grad_v", CType::kTPtr))};
inline Launch launch(const Values& v) {
  const int64_t k_len = v.i[index_of(kP, "k_len")];
  return {flash_bwd_grid(v.i[index_of(kP, "batch")] * v.i[index_of(kP, "heads")], k_len),
          flash_bwd_threads(k_len),
          flash_bwd_smem(v.t[index_of(kT, "kD")], k_len,
                         static_cast<int>(v.t[index_of(kT, "kBlocks")]))};
}
inline const char* reject(const Values& v) {
  return flash_bwd_blocks_ok(v.t[index_of(kT, "kD")],
                             static_cast<int>(v.t[index_of(kT, "kBlocks")]))
             ? nullptr
             : "b (blocks per SM) is 1, or 2 up to head dim kFlashLeanMaxD";
}
}  // namespace flash_dkdv
inline constexpr Kernel kFlashDkDv =
    make_kernel("flash_attention", "flash_attn_bwd_dkdv_kernel", flash_dkdv::kT, flash_dkdv::kP,
                &flash_dkdv::launch, Program::kOwn, &flash_dkdv::reject);

namespace flash_dq {
inline constexpr Param kP[] = {LIGHTSEQ_FLASH_BWD_PARAMS(out("grad_q", CType::kTPtr))};
inline Launch launch(const Values& v) {
  return {flash_dq_grid(v.i[index_of(kP, "batch")] * v.i[index_of(kP, "heads")],
                        v.i[index_of(kP, "q_len")], v.i[index_of(kP, "k_len")]),
          kFlashThreads, 0};
}
}  // namespace flash_dq
#undef LIGHTSEQ_FLASH_BWD_PARAMS
inline constexpr Kernel kFlashDq =
    make_kernel("flash_attention", "flash_attn_bwd_dq_kernel", flash_bwd::kT, flash_dq::kP,
                &flash_dq::launch, Program::kOwn);

namespace flash_attention {
inline constexpr const Kernel* kKernels[] = {&kFlashFwd, &kFlashDot, &kFlashDkDv, &kFlashDq};
}

}  // namespace lightseq::kern::sig
#endif
