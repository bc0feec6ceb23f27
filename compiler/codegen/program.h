// program.h — groups a model's kernel instances into NVRTC programs and writes their source.
//
// One program per template family and precision: a program includes one family header and asks
// NVRTC (through name expressions) for every instantiation the model needs from it. Few programs
// keep the per-program header cost low (DESIGN.md: headers are expensive under NVRTC); one per
// family keeps them independent, so they compile in parallel and models that share a family's
// instantiations share cache entries. The source names no model: identical kernels of different
// models hit the same cache entry.
#pragma once

#include <vector>

#include "compiler/nvrtc/nvrtc_compiler.h"
#include "compiler/planner/plan.h"

namespace lightseq::codegen {

std::vector<ProgramSource> generate_programs(const std::vector<KernelInstance>& kernels,
                                             Precision precision);

}  // namespace lightseq::codegen
