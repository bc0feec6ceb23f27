// nvrtc_compiler.h — compiles one generated CUDA program with NVRTC to a cubin (or PTX when the
// target is newer than this NVRTC knows). Host-only: works on a machine without a GPU.
#pragma once

#include <string>
#include <vector>

namespace lightseq {

// One NVRTC program: generated source plus the template instantiations it must produce.
struct ProgramSource {
  std::string name;                           // readable, e.g. "layernorm:bf16:sm_90"
  std::string source;                         // complete CUDA source (includes embedded templates)
  std::vector<std::string> labels;            // one per kernel: "ln_fwd:bf16:h=512:vec=8"
  std::vector<std::string> name_expressions;  // one per kernel: "&lightseq::kern::ln_fwd_kernel<...>"
};

struct CompiledProgram {
  std::string arch;                        // "sm_90"
  bool is_ptx = false;                     // true: image is PTX text (driver JIT), else a cubin
  std::vector<char> image;
  std::vector<std::string> lowered_names;  // mangled names, parallel to ProgramSource::labels
  std::string log;                         // NVRTC log (warnings), possibly empty
};

// "sm_80" -> 80. Throws lightseq::Error on a malformed arch with the accepted form in the message.
int parse_arch(const std::string& arch);

// NVRTC's version, "13.0".
std::string nvrtc_version();

// Archs this NVRTC can emit cubins for (e.g. {75, 80, 86, 87, 89, 90, 100, ...}).
std::vector<int> nvrtc_supported_archs();

// The CUDA include directory passed to NVRTC: $LIGHTSEQ_CUDA_INCLUDE if set, else the toolkit
// include directory found at build time.
std::string cuda_include_dir();

// The exact NVRTC options used for `arch` (they are part of the cache key).
std::vector<std::string> nvrtc_options(const std::string& arch);

// Compiles `program` for `arch`. The embedded templates are supplied as in-memory headers.
// Throws CompileError (label list, options, NVRTC version, full log, path of the dumped source)
// when NVRTC rejects the program. The source is dumped under $LIGHTSEQ_DUMP_DIR, else the system
// temp directory.
CompiledProgram compile_program(const ProgramSource& program, const std::string& arch);

}  // namespace lightseq
