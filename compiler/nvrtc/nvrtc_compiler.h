// nvrtc_compiler.h — compiles one generated CUDA program with NVRTC to a cubin (or PTX when the
// target is newer than this NVRTC knows). Host-only: works on a machine without a GPU.
//
// Arch strings. Accepted forms (anything else is rejected with a message listing these):
//   "sm_80", "sm_90a", "sm_100f"  — the canonical form; an "a"/"f" suffix (arch-specific /
//                                   family features) is kept and passed to NVRTC as written;
//   "80", "90a"                   — the bare number, as in `lsc build --arch 80`;
//   "8.0", "9.0a"                 — the TORCH_CUDA_ARCH_LIST / device-capability form.
// All three spell the same target: canonical_arch() maps them to "sm_80", "sm_90a", ...; the
// canonical form is what CompiledProgram::arch, nvrtc_options() and the cache key use.
// lightseq needs sm_70 (Volta) or newer (validate_arch); this NVRTC may need newer still.
#pragma once

#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "compiler/codegen/embedded_templates.h"
#include "compiler/codegen/program.h"

namespace lightseq {

struct CompiledProgram {
  // The canonical requested arch, "sm_90" (also when the image is PTX for an older compute_).
  std::string arch;
  // true: image is PTX text, NUL-terminated, for the driver JIT; false: a cubin (ELF).
  bool is_ptx = false;
  std::vector<char> image;
  std::vector<std::string> lowered_names;  // mangled names, parallel to ProgramSource::labels
  std::string log;                         // NVRTC log (warnings), possibly empty
};

// The oldest arch lightseq generates code for: Volta. (Older GPUs lack the fp16 tensor-core and
// warp-synchronous (__shfl_*_sync) behaviour the templates rely on.)
inline constexpr int kMinArch = 70;

// "sm_80" / "80" / "8.0" -> 80, "sm_90a" -> 90, "sm_100f" -> 100. Throws lightseq::Error on a
// malformed arch; the message lists the accepted forms.
int parse_arch(const std::string& arch);

// "80" / "8.0" / "sm_80" -> "sm_80"; "9.0a" -> "sm_90a". Throws like parse_arch.
std::string canonical_arch(const std::string& arch);

// canonical_arch(arch), after checking that it is sane for lightseq: parse_arch(arch) >= kMinArch.
// Throws lightseq::Error naming the arch and the rule otherwise. (Whether this NVRTC can target
// it is select_nvrtc_target's question.)
std::string validate_arch(const std::string& arch);

// The target the kernels of a device of compute capability `arch` (90 for an H100) are compiled
// for: the arch-specific "sm_90a" on Hopper, whose wgmma the fused attention uses
// (templates/common/wgmma.cuh), "sm_<arch>" elsewhere (no other arch's specific features are
// used). `lsc build`'s default and the runtime's choice both come from here.
std::string jit_target(int arch);

// NVRTC's version, "13.0".
std::string nvrtc_version();

// Archs this NVRTC can emit cubins for (e.g. {75, 80, 86, 87, 89, 90, 100, ...}), ascending.
std::vector<int> nvrtc_supported_archs();

// What NVRTC is asked to produce for an arch.
struct NvrtcTarget {
  std::string arch_option;  // "--gpu-architecture=sm_90" or "--gpu-architecture=compute_121"
  bool is_ptx = false;      // true when the arch is newer than NVRTC knows: PTX for the driver JIT
};

// The decision, as a pure function of the arch and the NVRTC's supported list (sorted or not):
// a cubin (sm_XX, suffix kept) when XX is supported; otherwise PTX for compute_YY with YY the
// newest supported arch below XX (the suffix is dropped: arch-specific PTX runs on exactly one
// arch). Throws lightseq::Error when no supported arch is <= XX (an NVRTC too new for this GPU).
NvrtcTarget select_nvrtc_target(const std::string& arch, std::span<const int> supported_archs);

// The CUDA include directory passed to NVRTC: $LIGHTSEQ_CUDA_INCLUDE if set, else the toolkit
// include directory found at build time.
std::string cuda_include_dir();

// The exact NVRTC options used for `arch` (they are part of the cache key). Validates the arch.
std::vector<std::string> nvrtc_options(const std::string& arch);

// Compiles `program` for `arch`. The templates (templates(): the embedded ones, or their
// $LIGHTSEQ_TEMPLATES_DIR copies) are supplied as in-memory headers, under their paths relative to
// templates/ (`#include "layernorm.cuh"`). Thread-safe: several threads
// may compile different programs at once.
// Throws CompileError (program name, labels, options, NVRTC version, full log, path of the dumped
// source) when NVRTC rejects the program. The source is dumped to
// $LIGHTSEQ_DUMP_DIR/<name>-<hash>.cu, else <system temp dir>/lightseq-dump/<name>-<hash>.cu,
// with the log next to it (<name>-<hash>.log). Throws lightseq::Error on a bad arch and
// InternalError when labels and name_expressions differ in length.
CompiledProgram compile_program(const ProgramSource& program, const std::string& arch);

// The same with an explicit header set instead of templates() (tests, tools).
CompiledProgram compile_program(const ProgramSource& program, const std::string& arch,
                                std::span<const EmbeddedFile> headers);

// What ptxas reports for one kernel (--ptxas-options=-v): the resources that decide its occupancy
// and whether its loops touch local memory. Bytes, but registers.
struct KernelResources {
  std::string label;
  int registers = 0;
  int64_t stack_frame = 0, spill_stores = 0, spill_loads = 0, shared = 0;  // shared: static
  // ptxas's performance advisories naming the kernel, e.g. "(C7512) Potential Performance Loss:
  // wgmma.mma_async instructions are serialized due to insufficient register resources".
  std::vector<std::string> notes;
};

// Compiles `program` for `arch` (a cubin target) with ptxas's report and returns it per kernel,
// parallel to program.labels. Not cached: a developer's check without a GPU (`lsc build
// --resources`, tests of the kernels' register and spill budgets). Throws lightseq::Error where
// the target is PTX (no ptxas runs), as compile_program otherwise.
std::vector<KernelResources> kernel_resources(const ProgramSource& program,
                                              const std::string& arch);

// ptxas's verbose log -> the resources of the kernels `lowered_names` (labelled by the parallel
// `labels`). Throws InternalError when the log lacks one of them.
std::vector<KernelResources> parse_ptxas_resources(const std::string& log,
                                                   const std::vector<std::string>& lowered_names,
                                                   const std::vector<std::string>& labels);

// Where a failing program's source goes: $LIGHTSEQ_DUMP_DIR, else <temp>/lightseq-dump.
std::filesystem::path dump_dir();

}  // namespace lightseq
