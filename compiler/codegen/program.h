// program.h — groups a model's kernel instances into NVRTC programs and writes their source.
//
// One program per template family and precision: a program includes one family header and asks
// NVRTC (through name expressions) for every instantiation the model needs from it. Few programs
// keep the per-program header cost low (DESIGN.md: headers are expensive under NVRTC); one per
// family keeps them independent, so they compile in parallel and models that share a family's
// instantiations share cache entries. The source names no model: identical kernels of different
// models hit the same cache entry.
#pragma once

#include <string>
#include <vector>

#include "compiler/planner/plan.h"

namespace lightseq {

// One NVRTC program: generated source plus the template instantiations it must produce.
struct ProgramSource {
  // Readable, e.g. "layernorm:bf16:sm_90"; also names the dumped source of a failing program.
  std::string name;
  // The complete CUDA source; it #includes embedded templates by their relative paths.
  std::string source;
  // One per kernel: "ln_fwd:bf16:h=512:vec=8".
  std::vector<std::string> labels;
  // One per kernel, parallel to labels: "&lightseq::kern::ln_fwd_kernel<...>".
  std::vector<std::string> name_expressions;
};

}  // namespace lightseq

namespace lightseq::codegen {

std::vector<ProgramSource> generate_programs(const std::vector<KernelInstance>& kernels,
                                             Precision precision);

}  // namespace lightseq::codegen
