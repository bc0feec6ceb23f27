// attention_bench — the fused attention kernels alone (templates/flash_attention.cuh, run through
// runtime/fused_attention.h as lightseq.attention runs them): forward and forward + backward (D,
// grad_k/grad_v with grad_q) time and TFLOP/s per head dim, sequence length and dropout, in the
// layout the planner runs them (the token layout: q, k, v column slices of one packed
// [batch·T, 3·hidden] projection, out [batch·T, hidden], fp32 log-sum-exp). Shapes follow
// FlashAttention's benchmark: batch·T = 16384 tokens, hidden 2048 (heads = 2048 / d), no mask
// unless --causal or --padding (the kernels built with the key-padding mask, as the models' plans
// run them, every key kept: what evaluating the mask costs). FLOPs: forward 4·B·H·T²·d (halved when
// causal), backward 2.5× the forward. benchmarks/attention_peers.py times torch SDPA's flash and
// cuDNN backends on the same shapes. --packed: the same batch as a packed one of variable lengths
// (cu_seqlens; each sequence's length uniform in [T/2, T], fixed seed), FLOPs counted over the
// sequences' own lengths (Σ len², what a padded run at T also spends on its padding): against a
// --padding run at the same T, what packing saves.
//
// Usage: attention_bench [--dtype bf16|fp16] [--dims 64,128] [--seqs 512,...] [--causal]
//                        [--padding | --packed] [--iters N] [--fwd-warps 4|8] [--bwd-blocks 1|2]
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
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "compiler/errors.h"
#include "flash_attention.sig.cuh"
#include "runtime/allocator.h"
#include "runtime/cuda_check.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/fused_attention.h"
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
    bool causal = false, padding = false, packed = false;
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
      } else if (a == "--packed") {
        packed = true;
      } else if (a == "--iters") {
        iters = std::max(1, std::atoi(next().c_str()));
      } else {
        throw Error(fmt::format(
            "unknown argument '{}'; usage: attention_bench [--dtype bf16|fp16] "
            "[--dims 64,128] [--seqs 512,1024] [--causal] [--padding | --packed] [--iters N] "
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

    // One FusedAttention per head dim (runtime/fused_attention.h: the kernels, their launches
    // and the backward's scratch, all from the signatures), in the geometry asked for.
    std::map<int64_t, std::unique_ptr<FusedAttention>> attention;
    for (int64_t d : dims) {
      attention[d] = std::make_unique<FusedAttention>(
          AttentionOptions{p, d, 0, {}, fwd_warps, bwd_blocks_arg});
    }

    CUstream stream = nullptr;
    LIGHTSEQ_CU_CHECK(driver().cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
    fmt::print(
        "attention_bench on {}: {}, hidden 2048 (heads = 2048/d), batch·T = 16384{}, {} "
        "iterations, forward blocks of {} warps, grad_k/grad_v built for {} blocks per SM\n",
        device_name(0), to_string(p),
        std::string(causal ? ", causal" : "") +
            (padding ? ", key-padding mask (none padded)" : "") +
            (packed ? ", packed: lengths uniform in [T/2, T]" : ""),
        iters, fwd_warps,
        bwd_blocks_arg ? std::to_string(bwd_blocks_arg) : std::string("the plans'"));
    fmt::print("{:>4} {:>6} {:>5} {:>6} {:>5} {:>10} {:>8} {:>12} {:>8}\n", "d", "T", "batch",
               "heads", "drop", "fwd ms", "TFLOP/s", "fwd+bwd ms", "TFLOP/s");
    {
      StreamOrderedAllocator allocator(0);
      const size_t elem = p == Precision::kFp32 ? 4 : 2;
      for (int64_t d : dims) {
        FusedAttention& attn = *attention.at(d);
        for (int64_t T : seqs) {
          const int64_t batch = std::max<int64_t>(1, 16384 / T), heads = 2048 / d;
          const int64_t bh = batch * heads, n = bh * T * d, rows = bh * T, hidden = heads * d;
          // q, k, v and their gradients: column slices of packed [batch·T, 3·hidden] rows
          const int64_t ld = 3 * hidden;
          DeviceBuffer qkv(allocator, 3 * n * elem, stream), o(allocator, n * elem, stream),
              go(allocator, n * elem, stream), gqkv(allocator, 3 * n * elem, stream),
              lse(allocator, rows * 4, stream), key_padding(allocator, batch * T, stream);
          LIGHTSEQ_CU_CHECK(
              driver().cuMemsetD8Async(key_padding.device_ptr(), 0, batch * T, stream));
          // 0.125 in either dtype: a well-defined softmax (the timing does not depend on values).
          const unsigned eighth = p == Precision::kBf16 ? 0x3E003E00u : 0x30003000u;
          LIGHTSEQ_CU_CHECK(driver().cuMemsetD32Async(qkv.device_ptr(), eighth, 3 * n / 2, stream));
          LIGHTSEQ_CU_CHECK(driver().cuMemsetD32Async(go.device_ptr(), eighth, n / 2, stream));
          // --packed: the sequences' lengths and offsets (the buffers above hold the padded size)
          std::vector<int32_t> cu{0};
          double pairs = static_cast<double>(batch) * T * T;  // Σ q_len·k_len
          if (packed) {
            std::mt19937 gen(static_cast<uint32_t>(T));
            std::uniform_int_distribution<int64_t> len(T / 2, T);
            pairs = 0;
            for (int64_t b = 0; b < batch; ++b) {
              const int64_t l = len(gen);
              cu.push_back(cu.back() + static_cast<int32_t>(l));
              pairs += static_cast<double>(l) * l;
            }
          }
          DeviceBuffer cu_dev(allocator, cu.size() * sizeof(int32_t), stream);
          LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(cu_dev.device_ptr(), cu.data(),
                                                       cu.size() * sizeof(int32_t), stream));
          for (bool drop : {false, true}) {
            const size_t slice = hidden * elem;  // bytes from q's columns to k's
            auto at = [](const DeviceBuffer& b, size_t bytes) {
              return static_cast<char*>(b.get()) + bytes;
            };
            AttentionArgs a;
            a.q = at(qkv, 0), a.k = at(qkv, slice), a.v = at(qkv, 2 * slice);
            a.ld_q = a.ld_kv = ld;
            a.key_padding = padding ? key_padding.as<uint8_t>() : nullptr;
            a.batch = batch, a.heads = heads, a.q_len = T, a.k_len = T;
            a.total_q = a.total_k = batch * T;
            if (packed) {
              a.cu_seqlens_q = a.cu_seqlens_k = cu_dev.as<int>();
              a.total_q = a.total_k = cu.back();
            }
            a.causal = causal;
            a.scale = 1.0f / std::sqrt(static_cast<float>(d));
            a.dropout = drop ? 0.1 : 0.0;
            a.seed = 1234;
            auto fwd = [&] { attn.forward(a, o.get(), lse.as<float>(), nullptr, stream); };
            auto bwd = [&] {
              attn.backward(a, o.get(), lse.as<float>(), go.get(), at(gqkv, 0), at(gqkv, slice),
                            at(gqkv, 2 * slice), allocator, stream);
            };
            const double fwd_ms = time_ms(stream, iters, fwd);
            const double all_ms = time_ms(stream, iters, [&] {
              fwd();
              bwd();
            });
            const double flops = 4.0 * pairs * heads * d * (causal ? 0.5 : 1.0);
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
