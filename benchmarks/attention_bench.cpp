// attention_bench — the fused attention kernels alone (templates/flash_attention.cuh): forward and
// forward + backward (dot, dK/dV, dQ) time and TFLOP/s per head dim, sequence length and dropout,
// in the layout the planner runs them (the token layout: q, k, v column slices of one packed
// [batch·T, 3·hidden] projection, out [batch·T, hidden], fp32 log-sum-exp). Shapes follow
// FlashAttention's benchmark: batch·T = 16384 tokens, hidden 2048 (heads = 2048 / d), no mask
// unless --causal or --padding (the kernels built with the key-padding mask, as the models' plans
// run them, every key kept: what evaluating the mask costs). FLOPs: forward 4·B·H·T²·d (halved when
// causal), backward 2.5× the forward. benchmarks/attention_peers.py times torch SDPA's flash and
// cuDNN backends on the same shapes.
//
// Usage: attention_bench [--dtype bf16|fp16] [--dims 64,128] [--seqs 512,...] [--causal]
//                        [--padding] [--iters N] [--fwd-warps 4|8] [--bwd-blocks 1|2]
//                        (needs a GPU;
//                        --fwd-warps: the forward's warps per block, the plans' 4 or the
//                        alternative 8; --bwd-blocks: the blocks per SM the grad_k/grad_v kernel
//                        is built for, default the plans' flash_bwd_blocks(d), 2 only up to d 64)
//                        [--templates DIR]   (an experiment: LIGHTSEQ_TEMPLATES_DIR=DIR, the device
//                        code from DIR's copies of templates/ files, e.g. DIR/flash_attention.cuh,
//                        in place of the built-in ones; the launch formulas stay the built-in
//                        *.sig.cuh's; compiler/codegen/embedded_templates.h)
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "common/philox.cuh"
#include "compiler/codegen/program.h"
#include "compiler/compiler.h"
#include "compiler/errors.h"
#include "compiler/ir/kernel.h"
#include "compiler/nvrtc/nvrtc_compiler.h"
#include "flash_attention.sig.cuh"
#include "runtime/allocator.h"
#include "runtime/cuda_check.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/module.h"

namespace {

using namespace lightseq;

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t comma = s.find(',', pos);
    out.push_back(
        std::stoll(s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos)));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

struct Kernels {
  KernelInstance fwd, dot, dkdv, dq;
};

Kernels instances(Precision p, int64_t d, kern::Mask m, bool drop, int fwd_warps, int bwd_blocks) {
  const auto mask = tv("kMask", m);
  const auto dropout = tv("kDrop", drop ? kern::Drop::kOn : kern::Drop::kOff);
  return {instantiate(sig::kFlashFwd, p, {{"kD", d}, mask, dropout, {"kWarps", fwd_warps}}),
          instantiate(sig::kFlashDot, p, {{"kD", d}}),
          instantiate(sig::kFlashDkDv, p, {{"kD", d}, mask, dropout, {"kBlocks", bwd_blocks}}),
          instantiate(sig::kFlashDq, p, {{"kD", d}, mask, dropout})};
}

// Milliseconds per call of `issue` (events around `iters` calls, after 3 warm-up calls).
template <class F>
double time_ms(CUstream stream, int iters, F&& issue) {
  for (int i = 0; i < 3; ++i) issue();
  CUevent start = nullptr, stop = nullptr;
  LIGHTSEQ_CU_CHECK(driver().cuEventCreate(&start, CU_EVENT_DEFAULT));
  LIGHTSEQ_CU_CHECK(driver().cuEventCreate(&stop, CU_EVENT_DEFAULT));
  LIGHTSEQ_CU_CHECK(driver().cuEventRecord(start, stream));
  for (int i = 0; i < iters; ++i) issue();
  LIGHTSEQ_CU_CHECK(driver().cuEventRecord(stop, stream));
  LIGHTSEQ_CU_CHECK(driver().cuEventSynchronize(stop));
  float ms = 0;
  LIGHTSEQ_CU_CHECK(driver().cuEventElapsedTime(&ms, start, stop));
  driver().cuEventDestroy(start);
  driver().cuEventDestroy(stop);
  return ms / iters;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Precision p = Precision::kBf16;
    std::vector<int64_t> dims{64, 128}, seqs{128, 512, 1024, 2048, 4096, 8192};
    int fwd_warps = kern::kFlashFwdWarps;  // the forward's warps per block (the plans': 4)
    int bwd_blocks_arg = 0;                // 0: the plans' flash_bwd_blocks(d)
    bool causal = false, padding = false;
    int iters = 20;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto next = [&]() -> std::string {
        if (i + 1 >= argc) throw Error(fmt::format("attention_bench: {} needs a value", a));
        return argv[++i];
      };
      if (a == "--dtype") {
        const std::string v = next();
        if (v != "bf16" && v != "fp16")
          throw Error("attention_bench: --dtype takes bf16 or fp16, got " + v);
        p = v == "bf16" ? Precision::kBf16 : Precision::kFp16;
      } else if (a == "--dims") {
        dims = parse_list(next());
      } else if (a == "--seqs") {
        seqs = parse_list(next());
      } else if (a == "--fwd-warps") {
        fwd_warps = std::atoi(next().c_str());
        if (fwd_warps != kern::kFlashFwdWarps && fwd_warps != kern::kFlashFwdWarpsAlt) {
          throw Error(fmt::format("--fwd-warps takes {} or {}", kern::kFlashFwdWarps,
                                  kern::kFlashFwdWarpsAlt));
        }
      } else if (a == "--bwd-blocks") {
        bwd_blocks_arg = std::atoi(next().c_str());
        if (bwd_blocks_arg != 1 && bwd_blocks_arg != 2) throw Error("--bwd-blocks takes 1 or 2");
      } else if (a == "--templates") {  // read by templates() at the first compile
        if (setenv("LIGHTSEQ_TEMPLATES_DIR", next().c_str(), 1) != 0) {
          throw Error("--templates: cannot set LIGHTSEQ_TEMPLATES_DIR");
        }
      } else if (a == "--causal") {
        causal = true;
      } else if (a == "--padding") {
        padding = true;
      } else if (a == "--iters") {
        iters = std::max(1, std::atoi(next().c_str()));
      } else {
        throw Error(
            fmt::format("unknown argument '{}'; usage: attention_bench [--dtype bf16|fp16] "
                        "[--dims 64,128] [--seqs 512,1024] [--causal] [--padding] [--iters N] "
                        "[--fwd-warps 4|8] [--bwd-blocks 1|2] [--templates DIR]",
                        a));
      }
    }
    if (device_count() == 0) {
      fmt::print(stderr, "attention_bench: no GPU: {}\n", driver_unavailable_reason());
      return 1;
    }
    PrimaryContext context(0);
    ContextGuard guard(context.get());
    const std::string arch = device_target(0);

    // The grad_k/grad_v kernel's blocks per SM at head dim d.
    auto bwd_blocks = [&](int64_t d) {
      const int b = bwd_blocks_arg ? bwd_blocks_arg : kern::flash_bwd_blocks(d);
      if (!kern::flash_bwd_blocks_ok(d, b)) {
        throw Error(fmt::format("--bwd-blocks {}: head dim {} takes only 1", b, d));
      }
      return b;
    };
    // Every instance, compiled once.
    std::vector<KernelInstance> all;
    for (int64_t d : dims) {
      for (bool drop : {false, true}) {
        const Kernels k =
            instances(p, d, kern::mask_of(padding, causal), drop, fwd_warps, bwd_blocks(d));
        all.insert(all.end(), {k.fwd, k.dot, k.dkdv, k.dq});
      }
    }
    std::vector<KernelModule> modules;
    std::map<std::string, CUfunction> fns;
    for (const ProgramSource& prog : codegen::generate_programs(all, p)) {
      const CacheEntry entry = to_cache_entry(prog, compile_program(prog, arch));
      modules.emplace_back(entry, 0);
      for (const std::string& label : prog.labels) fns[label] = modules.back().function(label);
    }

    CUstream stream = nullptr;
    LIGHTSEQ_CU_CHECK(driver().cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
    fmt::print(
        "attention_bench on {}: {}, hidden 2048 (heads = 2048/d), batch·T = 16384{}, {} "
        "iterations, forward blocks of {} warps, grad_k/grad_v built for {} blocks per SM\n",
        device_name(0), to_string(p),
        std::string(causal ? ", causal" : "") + (padding ? ", key-padding mask (none padded)" : ""),
        iters, fwd_warps,
        bwd_blocks_arg ? std::to_string(bwd_blocks_arg) : std::string("the plans'"));
    fmt::print("{:>4} {:>6} {:>5} {:>6} {:>5} {:>10} {:>8} {:>12} {:>8}\n", "d", "T", "batch",
               "heads", "drop", "fwd ms", "TFLOP/s", "fwd+bwd ms", "TFLOP/s");
    {
      StreamOrderedAllocator allocator(0);
      const size_t elem = p == Precision::kFp32 ? 4 : 2;
      for (int64_t d : dims) {
        for (int64_t T : seqs) {
          int64_t batch = std::max<int64_t>(1, 16384 / T), heads = 2048 / d;
          const int64_t bh = batch * heads, n = bh * T * d, rows = bh * T, hidden = heads * d;
          // q, k, v and their gradients: column slices of packed [batch·T, 3·hidden] rows
          int64_t ld = 3 * hidden;
          DeviceBuffer qkv(allocator, 3 * n * elem, stream), o(allocator, n * elem, stream),
              go(allocator, n * elem, stream), gqkv(allocator, 3 * n * elem, stream),
              lse(allocator, rows * 4, stream), dot(allocator, rows * 4, stream),
              key_padding(allocator, batch * T, stream);
          LIGHTSEQ_CU_CHECK(
              driver().cuMemsetD8Async(key_padding.device_ptr(), 0, batch * T, stream));
          // 0.125 in either dtype: a well-defined softmax (the timing does not depend on values).
          const unsigned eighth = p == Precision::kBf16 ? 0x3E003E00u : 0x30003000u;
          LIGHTSEQ_CU_CHECK(driver().cuMemsetD32Async(qkv.device_ptr(), eighth, 3 * n / 2, stream));
          LIGHTSEQ_CU_CHECK(driver().cuMemsetD32Async(go.device_ptr(), eighth, n / 2, stream));
          for (bool drop : {false, true}) {
            const Kernels ks =
                instances(p, d, kern::mask_of(padding, causal), drop, fwd_warps, bwd_blocks(d));
            kern::DropoutArgs args = kern::make_dropout_args(1234, 0, drop ? 0.1 : 0.0);
            const CUdeviceptr slice = hidden * elem;  // bytes from q's columns to k's
            CUdeviceptr qp = qkv.device_ptr(), kp = qp + slice, vp = qp + 2 * slice,
                        pad = padding ? key_padding.device_ptr() : 0, op = o.device_ptr(),
                        lp = lse.device_ptr(), gop = go.device_ptr(), dotp = dot.device_ptr(),
                        gqp = gqkv.device_ptr(), gkp = gqp + slice, gvp = gqp + 2 * slice;
            float scale = 1.0f / std::sqrt(static_cast<float>(d));
            int64_t n_rows = rows;
            void* fwd_args[] = {&qp,    &kp, &vp, &pad, &op, &lp,    &batch,
                                &heads, &T,  &T,  &ld,  &ld, &scale, &args};
            void* dot_args[] = {&op, &gop, &dotp, &n_rows, &heads, &T, &T};
            void* dkdv_args[] = {&qp,  &kp,    &vp,    &pad, &gop, &lp, &dotp, &op,    &gqp, &gkp,
                                 &gvp, &batch, &heads, &T,   &T,   &ld, &ld,   &scale, &args};
            void* dq_args[] = {&qp,    &kp,    &vp, &pad, &gop, &lp, &dotp,  &gqp,
                               &batch, &heads, &T,  &T,   &ld,  &ld, &scale, &args};
            // The grids and shared memory of flash_attention.sig.cuh; an empty grid launches
            // nothing (the D and grad_q kernels where one key block holds every key).
            auto run = [&](const KernelInstance& k, kern::GridDim g, int block, int smem,
                           void** a) {
              if (g.x == 0 || g.y == 0 || g.z == 0) return;
              launch(fns.at(k.label), Dim3{g.x, g.y, g.z}, Dim3{static_cast<unsigned>(block)},
                     static_cast<size_t>(smem), stream, a, k.label);
            };
            auto fwd = [&] {
              run(ks.fwd, kern::flash_fwd_grid(bh, T, fwd_warps), kern::flash_fwd_block(fwd_warps),
                  0, fwd_args);
            };
            auto bwd = [&] {
              run(ks.dot, kern::flash_dot_grid(rows, T), kern::kElementwiseThreads, 0, dot_args);
              run(ks.dkdv, kern::flash_bwd_grid(bh, T), kern::flash_bwd_threads(T),
                  kern::flash_bwd_smem(d, T, bwd_blocks(d)), dkdv_args);
              run(ks.dq, kern::flash_dq_grid(bh, T, T), kern::kFlashThreads, 0, dq_args);
            };
            const double fwd_ms = time_ms(stream, iters, fwd);
            const double all_ms = time_ms(stream, iters, [&] {
              fwd();
              bwd();
            });
            const double flops = 4.0 * batch * heads * T * T * d * (causal ? 0.5 : 1.0);
            fmt::print("{:>4} {:>6} {:>5} {:>6} {:>5} {:>10.3f} {:>8.1f} {:>12.3f} {:>8.1f}\n", d,
                       T, batch, heads, drop ? 0.1 : 0.0, fwd_ms, flops / fwd_ms * 1e-9, all_ms,
                       3.5 * flops / all_ms * 1e-9);
            std::fflush(stdout);
          }
        }
      }
      LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
    }
    driver().cuStreamDestroy(stream);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "attention_bench: {}\n", e.what());
    return 1;
  }
}
