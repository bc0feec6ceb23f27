// program.h — groups a model's kernel instances into NVRTC programs and writes their source.
//
// One program per template family and precision: a program includes one family header and asks
// NVRTC (through name expressions) for every instantiation the model needs from it. Few programs
// keep the per-program header cost low (DESIGN.md: headers are expensive under NVRTC); programs
// compile in parallel, so the longest one bounds a cold build: a kernel whose signature says
// sig::Program::kOwn (the fused attention's forward, dK/dV and dQ, ~1 s of NVRTC per instance)
// gets a program of its own — transformer-base with the fused attention builds cold in 4.0 s
// instead of 5.9 on the 2-core machine (benchmarks/RESULTS.md, "Compile time"). Models that share
// instantiations share cache entries; the source names no model: identical kernels of different
// models hit the same cache entry.
#pragma once

#include <string>
#include <vector>

#include "compiler/planner/plan.h"

namespace lightseq {

// One NVRTC program: generated source plus the template instantiations it must produce.
struct ProgramSource {
  // Readable, e.g. "layernorm:bf16" ("flash_attention:bf16:flash_attn_fwd" for a kOwn kernel);
  // also names the dumped source of a failing program.
  std::string name;
  // The complete CUDA source; it #includes embedded templates by their relative paths.
  std::string source;
  // One per kernel: "ln_fwd:bf16:h=512:vec=8".
  std::vector<std::string> labels;
  // One per kernel, parallel to labels: "&lightseq::kern::ln_fwd_kernel<...>".
  std::vector<std::string> name_expressions;
  // A kernel of its own program (sig::Program::kOwn: an instance whose NVRTC time alone is ~1-2 s,
  // against ~0.1-0.3 s per kernel of a family program): the builds start these first.
  bool own = false;
};

}  // namespace lightseq

namespace lightseq::codegen {

std::vector<ProgramSource> generate_programs(const std::vector<KernelInstance>& kernels,
                                             Precision precision);

}  // namespace lightseq::codegen
