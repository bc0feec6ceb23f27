#include "compiler/nvrtc/nvrtc_compiler.h"

#include <fmt/format.h>
#include <nvrtc.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <map>
#include <optional>
#include <sstream>
#include <string_view>
#include <system_error>

#include "compiler/errors.h"
#include "compiler/util/atomic_file.h"
#include "compiler/util/sha256.h"

#ifndef LIGHTSEQ_CUDA_INCLUDE_DIR
#define LIGHTSEQ_CUDA_INCLUDE_DIR "/usr/local/cuda/include"
#endif

namespace lightseq {
namespace fs = std::filesystem;

namespace {

[[noreturn]] void throw_nvrtc_error(nvrtcResult status, const char* expression, const char* file,
                                    int line) {
  throw CudaError(fmt::format("NVRTC call {} failed: {} ({}:{})", expression,
                              nvrtcGetErrorString(status), file, line));
}

// Every NVRTC call goes through this, except nvrtcCompileProgram (whose failure is a
// CompileError with the log) and nvrtcDestroyProgram in a destructor (nothing to report to).
#define LIGHTSEQ_NVRTC_CHECK(expr)                                         \
  do {                                                                     \
    const nvrtcResult lightseq_nvrtc_status = (expr);                      \
    if (lightseq_nvrtc_status != NVRTC_SUCCESS) {                          \
      throw_nvrtc_error(lightseq_nvrtc_status, #expr, __FILE__, __LINE__); \
    }                                                                      \
  } while (0)

class ProgramHandle {
 public:
  ProgramHandle() = default;
  ProgramHandle(const ProgramHandle&) = delete;
  ProgramHandle& operator=(const ProgramHandle&) = delete;
  ~ProgramHandle() {
    if (handle_ != nullptr) nvrtcDestroyProgram(&handle_);
  }
  nvrtcProgram* out() { return &handle_; }
  nvrtcProgram get() const { return handle_; }

 private:
  nvrtcProgram handle_ = nullptr;
};

struct ArchParts {
  int number = 0;   // 80, 90, 100, ...
  char suffix = 0;  // 'a', 'f' or 0
};

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

int to_int(std::string_view digits) {
  int value = 0;
  for (char c : digits) value = value * 10 + (c - '0');
  return value;
}

std::optional<ArchParts> try_parse_arch(std::string_view s) {
  ArchParts parts;
  if (!s.empty() && (s.back() == 'a' || s.back() == 'f')) {
    parts.suffix = s.back();
    s.remove_suffix(1);
  }
  const bool sm_prefix = s.starts_with("sm_");
  if (sm_prefix) s.remove_prefix(3);
  const size_t dot = s.find('.');
  if (dot != std::string_view::npos) {
    // "8.0", "10.0", "12.1": <major>.<minor>, minor one digit, no "sm_" prefix.
    const std::string_view major = s.substr(0, dot);
    const std::string_view minor = s.substr(dot + 1);
    if (sm_prefix || !all_digits(major) || major.size() > 2 || major[0] == '0' ||
        !all_digits(minor) || minor.size() != 1) {
      return std::nullopt;
    }
    parts.number = to_int(major) * 10 + to_int(minor);
  } else {
    // "80", "90", "100", "121": two or three digits, no leading zero.
    if (!all_digits(s) || s.size() < 2 || s.size() > 3 || s[0] == '0') return std::nullopt;
    parts.number = to_int(s);
  }
  // Arch-specific ("a") targets exist from sm_90, family ("f") targets from sm_100.
  if ((parts.suffix == 'a' && parts.number < 90) || (parts.suffix == 'f' && parts.number < 100)) {
    return std::nullopt;
  }
  return parts;
}

ArchParts parse_arch_parts(const std::string& arch) {
  std::optional<ArchParts> parts = try_parse_arch(arch);
  if (!parts) {
    throw Error(fmt::format(
        "invalid GPU arch '{}': expected sm_<NN> (\"sm_80\", \"sm_90\", \"sm_120\"), optionally "
        "with the arch-specific suffix 'a' (sm_90 and newer: \"sm_90a\") or the family suffix "
        "'f' (sm_100 and newer: \"sm_100f\"); the bare number (\"80\", \"90a\"); or "
        "<major>.<minor> (\"8.0\", \"9.0a\")",
        arch));
  }
  return *parts;
}

std::string canonical(const ArchParts& parts) {
  std::string s = "sm_" + std::to_string(parts.number);
  if (parts.suffix != 0) s += parts.suffix;
  return s;
}

const std::vector<int>& supported_archs() {
  static const std::vector<int> archs = [] {
    int count = 0;
    LIGHTSEQ_NVRTC_CHECK(nvrtcGetNumSupportedArchs(&count));
    std::vector<int> result(static_cast<size_t>(count));
    LIGHTSEQ_NVRTC_CHECK(nvrtcGetSupportedArchs(result.data()));
    std::sort(result.begin(), result.end());
    return result;
  }();
  return archs;
}

std::string join(const std::vector<std::string>& items, std::string_view separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += separator;
    out += items[i];
  }
  return out;
}

std::vector<std::string> split(std::string_view s, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = std::min(s.find(separator, start), s.size());
    if (end > start) parts.emplace_back(s.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

std::vector<std::string> cuda_include_dirs() {
  const char* env = std::getenv("LIGHTSEQ_CUDA_INCLUDE");
  if (env != nullptr && *env != '\0') return {env};
  // CMake's CUDAToolkit_INCLUDE_DIRS is a list ("a;b") on some toolkits (include/cccl).
  return split(LIGHTSEQ_CUDA_INCLUDE_DIR, ';');
}

// "layernorm:bf16:sm_90" -> "layernorm_bf16_sm_90": safe as a file name and in NVRTC's log.
std::string sanitize_file_stem(std::string_view name) {
  std::string stem;
  for (char c : name.substr(0, 100)) {
    const bool safe = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '_' || c == '.';
    stem += safe ? c : '_';
  }
  if (stem.empty() || stem[0] == '.') stem.insert(0, "program");
  return stem;
}

// The program's file name for NVRTC and for the dump: "<sanitized name>-<12 hex of the source
// hash>". NVRTC's log cites it ("layernorm_bf16_sm_90-1a2b3c4d5e6f.cu(12): error ..."), so the
// log points at the dumped file. It depends only on the program, never on the environment (it
// also lands in the cubin's line info).
std::string program_file_stem(const ProgramSource& program) {
  return sanitize_file_stem(program.name) + "-" + sha256_hex(program.source).substr(0, 12);
}

std::string program_log(nvrtcProgram program) {
  size_t size = 0;
  LIGHTSEQ_NVRTC_CHECK(nvrtcGetProgramLogSize(program, &size));
  std::string log(size, '\0');
  if (size > 0) LIGHTSEQ_NVRTC_CHECK(nvrtcGetProgramLog(program, log.data()));
  while (!log.empty() && (log.back() == '\0' || log.back() == '\n')) log.pop_back();
  return log;
}

// Writes <dump_dir>/<stem>.cu (the exact source) and <stem>.log (the report). Returns the source
// path, or "" with `problem` set when it could not be written.
std::string dump_failed_program(const ProgramSource& program, const std::string& stem,
                                const std::string& report, std::string& problem) {
  const fs::path dir = dump_dir();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    problem = fmt::format("cannot create '{}': {}", dir.string(), errno_message(ec.value()));
    return "";
  }
  const fs::path source_path = dir / (stem + ".cu");
  try {
    write_file_atomically(source_path, program.source);
  } catch (const CacheError& e) {
    problem = e.what();
    return "";
  }
  try {
    write_file_atomically(dir / (stem + ".log"), report);
  } catch (const CacheError& e) {
    problem = e.what();  // the source is there; only the side report is missing
  }
  return source_path.string();
}

[[noreturn]] void throw_compile_error(const ProgramSource& program, const std::string& stem,
                                      const std::vector<std::string>& options, std::string log,
                                      nvrtcResult status) {
  if (status != NVRTC_ERROR_COMPILATION) {
    // Not a diagnostic in the source (an option NVRTC rejects, out of memory, ...): say which.
    log = fmt::format("nvrtcCompileProgram returned {}\n{}", nvrtcGetErrorString(status), log);
  }
  CompileError::Details details;
  details.program = program.name;
  details.labels = program.labels;
  details.options = options;
  details.nvrtc_version = nvrtc_version();
  const std::string report =
      fmt::format("program: {}\nkernels: {}\nnvrtc: {}\noptions: {}\n\n{}\n", program.name,
                  join(program.labels, ", "), details.nvrtc_version, join(options, " "), log);
  std::string problem;
  details.source_path = dump_failed_program(program, stem, report, problem);
  if (!problem.empty()) log += "\nlightseq: could not dump the source: " + problem;
  details.log = std::move(log);
  throw CompileError(std::move(details));
}

std::vector<char> program_image(nvrtcProgram program, bool is_ptx) {
  size_t size = 0;
  std::vector<char> image;
  if (is_ptx) {
    // The size includes the terminating NUL, which we keep: cuModuleLoadData wants it.
    LIGHTSEQ_NVRTC_CHECK(nvrtcGetPTXSize(program, &size));
    image.resize(size);
    LIGHTSEQ_NVRTC_CHECK(nvrtcGetPTX(program, image.data()));
  } else {
    LIGHTSEQ_NVRTC_CHECK(nvrtcGetCUBINSize(program, &size));
    image.resize(size);
    LIGHTSEQ_NVRTC_CHECK(nvrtcGetCUBIN(program, image.data()));
  }
  return image;
}

std::vector<std::string> options_for(const std::string& canonical_arch_name) {
  const NvrtcTarget target = select_nvrtc_target(canonical_arch_name, supported_archs());
  // Choices, measured with NVRTC 13.0 (seconds of wall time per program, sm_90):
  // Header cost. Tiny kernel, 16-40 programs in one process:
  //   dev machine (2 cores, no GPU): no headers 0.025; + cuda_fp16.h + cuda_bf16.h 0.033-0.045.
  //   H100 host (16 cores):          no headers 0.018; + common/types.cuh (fp16 + bf16) 0.047;
  //                                  + layernorm.cuh 0.055-0.063.
  //   So fp16 + bf16 cost ~0.01-0.03 s per program, not the ~0.15 s once quoted; real programs
  //   take 0.1-1.1 s each (transformer-base: 16 programs for sm_80 + sm_90 in 6.2-6.5 s on the
  //   H100 host with one thread, 2.3-2.8 s with 16: NVRTC runs partly serialized in-process).
  // -default-device: within noise (0.040-0.049 vs 0.042-0.058) -> not used; the templates
  //   annotate every device function anyway. -minimal: within noise -> not used.
  // -pch (automatic precompiled headers, 12.8+): on tiny programs that share one header prefix
  //   it cuts 0.055 -> 0.015 per program, but lightseq's programs are one per template family
  //   (distinct headers, and a PCH is also specific to the options / arch), so it is created and
  //   rarely reused: transformer-base cold, one thread, H100 host: 6.8-7.7 s with -pch vs
  //   6.2-6.5 s without; with a shared "#include common/types.cuh" prefix put first in every
  //   program, 7.0-8.7 s. It also adds ~10 ms of system time per program (PCH heap) and writes
  //   /tmp/__nvrtc_auto_pch_<pid>_*. -> not used.
  // NVRTC 12.9+ keeps its own disk cache (~/.nv/ComputeCache, seen on the GPU host; it is what
  //   makes a second cold `lsc build` with an empty lightseq cache 5x faster there). It is left
  //   on: it only helps. Cold-compile benchmarks must set CUDA_CACHE_DISABLE=1 (or pass
  //   --no-cache), or they measure that cache.
  // -lineinfo: kernels stay attributable in profilers. --fmad=true (the default, spelled out:
  // the options are part of the cache key). No --use_fast_math: its ftz / approximate division
  // and sqrt change results the tests compare against a float64 reference.
  std::vector<std::string> options = {target.arch_option, "-std=c++17"};
  for (const std::string& dir : cuda_include_dirs()) options.push_back("-I" + dir);
  options.push_back("-lineinfo");
  options.push_back("--fmad=true");
  return options;
}

}  // namespace

int parse_arch(const std::string& arch) { return parse_arch_parts(arch).number; }

std::string canonical_arch(const std::string& arch) { return canonical(parse_arch_parts(arch)); }

std::string validate_arch(const std::string& arch) {
  const ArchParts parts = parse_arch_parts(arch);
  if (parts.number < kMinArch) {
    throw Error(
        fmt::format("GPU arch '{}' (sm_{}) is too old: lightseq needs sm_{} (Volta) or "
                    "newer",
                    arch, parts.number, kMinArch));
  }
  return canonical(parts);
}

std::string jit_target(int arch) {
  return arch == 90 ? std::string("sm_90a") : fmt::format("sm_{}", arch);
}

std::string nvrtc_version() {
  static const std::string version = [] {
    int major = 0;
    int minor = 0;
    LIGHTSEQ_NVRTC_CHECK(nvrtcVersion(&major, &minor));
    return fmt::format("{}.{}", major, minor);
  }();
  return version;
}

std::vector<int> nvrtc_supported_archs() { return supported_archs(); }

NvrtcTarget select_nvrtc_target(const std::string& arch, std::span<const int> supported) {
  const ArchParts parts = parse_arch_parts(arch);
  if (std::find(supported.begin(), supported.end(), parts.number) != supported.end()) {
    return NvrtcTarget{.arch_option = "--gpu-architecture=" + canonical(parts), .is_ptx = false};
  }
  int newest_older = 0;
  for (int candidate : supported) {
    if (candidate < parts.number) newest_older = std::max(newest_older, candidate);
  }
  if (newest_older == 0) {
    std::vector<std::string> names;
    for (int candidate : supported) names.push_back("sm_" + std::to_string(candidate));
    std::sort(names.begin(), names.end());
    throw Error(fmt::format(
        "NVRTC {} cannot compile for {}: it supports only {}, none of them older than {}; use an "
        "NVRTC (CUDA toolkit) that supports this GPU",
        nvrtc_version(), canonical(parts), names.empty() ? "no archs" : join(names, ", "),
        canonical(parts)));
  }
  return NvrtcTarget{.arch_option = "--gpu-architecture=compute_" + std::to_string(newest_older),
                     .is_ptx = true};
}

std::string cuda_include_dir() {
  const std::vector<std::string> dirs = cuda_include_dirs();
  return dirs.empty() ? std::string() : dirs.front();
}

std::vector<std::string> nvrtc_options(const std::string& arch) {
  return options_for(validate_arch(arch));
}

fs::path dump_dir() {
  const char* env = std::getenv("LIGHTSEQ_DUMP_DIR");
  if (env != nullptr && *env != '\0') return fs::path(env);
  std::error_code ec;
  fs::path temp = fs::temp_directory_path(ec);
  if (ec) temp = "/tmp";
  return temp / "lightseq-dump";
}

CompiledProgram compile_program(const ProgramSource& program, const std::string& arch) {
  return compile_program(program, arch, templates());
}

namespace {

// compile_program with `extra` options after the usual ones.
CompiledProgram compile_with(const ProgramSource& program, const std::string& arch,
                             std::span<const EmbeddedFile> headers,
                             const std::vector<std::string>& extra);

}  // namespace

CompiledProgram compile_program(const ProgramSource& program, const std::string& arch,
                                std::span<const EmbeddedFile> headers) {
  return compile_with(program, arch, headers, {});
}

std::vector<KernelResources> kernel_resources(const ProgramSource& program,
                                              const std::string& arch) {
  const std::string target_arch = validate_arch(arch);
  if (select_nvrtc_target(target_arch, supported_archs()).is_ptx) {
    throw Error(fmt::format(
        "{}: NVRTC {} builds PTX for it (no ptxas runs, so no register report); name an arch it "
        "compiles to a cubin",
        target_arch, nvrtc_version()));
  }
  const CompiledProgram c = compile_with(program, arch, templates(), {"--ptxas-options=-v"});
  return parse_ptxas_resources(c.log, c.lowered_names, program.labels);
}

std::vector<KernelResources> parse_ptxas_resources(const std::string& log,
                                                   const std::vector<std::string>& lowered_names,
                                                   const std::vector<std::string>& labels) {
  // ptxas -v: per entry function "Compiling entry function '<name>' for 'sm_90'", "Function
  // properties for <name>", "<n> bytes stack frame, <n> bytes spill stores, <n> bytes spill
  // loads", "Used <n> registers, used <n> barriers[, <n> bytes smem][, ...]".
  std::map<std::string, KernelResources> by_name;
  std::string entry, props;
  auto number_before = [](const std::string& line, const std::string& what) -> int64_t {
    const size_t at = line.find(what);
    if (at == std::string::npos) return 0;
    size_t begin = line.find_last_not_of(' ', at - 1);
    if (begin == std::string::npos) return 0;
    size_t first = begin;
    while (first > 0 && std::isdigit(static_cast<unsigned char>(line[first - 1]))) --first;
    return std::stoll(line.substr(first, begin - first + 1));
  };
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);) {
    if (const size_t at = line.find("Compiling entry function '"); at != std::string::npos) {
      const size_t begin = at + std::string("Compiling entry function '").size();
      entry = line.substr(begin, line.find('\'', begin) - begin);
    } else if (const size_t at2 = line.find("Function properties for "); at2 != std::string::npos) {
      props = line.substr(at2 + std::string("Function properties for ").size());
      while (!props.empty() && (props.back() == ' ' || props.back() == '\r')) props.pop_back();
    } else if (line.find("bytes stack frame") != std::string::npos && !props.empty()) {
      KernelResources& r = by_name[props];
      r.stack_frame = number_before(line, "bytes stack frame");
      r.spill_stores = number_before(line, "bytes spill stores");
      r.spill_loads = number_before(line, "bytes spill loads");
    } else if (const size_t at3 = line.find("Potential Performance Loss");
               at3 != std::string::npos) {
      // "... (C7512) Potential Performance Loss: <what> for the function '<name>'"
      const size_t open = line.rfind(" '"), close = line.rfind('\'');
      if (open != std::string::npos && close > open + 2) {
        const size_t code = line.rfind('(', at3);
        std::string note = line.substr(code == std::string::npos ? at3 : code);
        note = note.substr(0, note.rfind(" for the function"));
        by_name[line.substr(open + 2, close - open - 2)].notes.push_back(note);
      }
    } else if (line.find("Used ") != std::string::npos && !entry.empty()) {
      KernelResources& r = by_name[entry];
      r.registers = static_cast<int>(number_before(line, "registers"));
      r.shared = number_before(line, "bytes smem");
    }
  }
  std::vector<KernelResources> out;
  for (size_t i = 0; i < lowered_names.size(); ++i) {
    auto it = by_name.find(lowered_names[i]);
    if (it == by_name.end() || it->second.registers == 0) {
      throw InternalError(fmt::format("ptxas reported no registers for kernel '{}' ({})",
                                      i < labels.size() ? labels[i] : "?", lowered_names[i]));
    }
    KernelResources r = it->second;
    r.label = i < labels.size() ? labels[i] : lowered_names[i];
    out.push_back(std::move(r));
  }
  return out;
}

namespace {

CompiledProgram compile_with(const ProgramSource& program, const std::string& arch,
                             std::span<const EmbeddedFile> headers,
                             const std::vector<std::string>& extra) {
  if (program.labels.size() != program.name_expressions.size()) {
    throw InternalError(fmt::format(
        "program '{}' has {} kernel labels but {} name expressions; they must be parallel",
        program.name, program.labels.size(), program.name_expressions.size()));
  }
  const std::string target_arch = validate_arch(arch);
  const NvrtcTarget target = select_nvrtc_target(target_arch, supported_archs());
  std::vector<std::string> options = options_for(target_arch);
  options.insert(options.end(), extra.begin(), extra.end());
  const std::string stem = program_file_stem(program);
  const std::string file_name = stem + ".cu";

  // NVRTC wants NUL-terminated strings; string_views into the embedded table are not promised
  // to be, so copy (templates are tens of KB: microseconds against a compile's tens of ms).
  std::vector<std::string> header_texts;
  std::vector<std::string> header_names;
  for (const EmbeddedFile& file : headers) {
    header_texts.emplace_back(file.text);
    header_names.emplace_back(file.path);
  }
  std::vector<const char*> header_text_ptrs;
  std::vector<const char*> header_name_ptrs;
  for (size_t i = 0; i < header_texts.size(); ++i) {
    header_text_ptrs.push_back(header_texts[i].c_str());
    header_name_ptrs.push_back(header_names[i].c_str());
  }

  ProgramHandle handle;
  LIGHTSEQ_NVRTC_CHECK(
      nvrtcCreateProgram(handle.out(), program.source.c_str(), file_name.c_str(),
                         static_cast<int>(header_text_ptrs.size()),
                         header_text_ptrs.empty() ? nullptr : header_text_ptrs.data(),
                         header_name_ptrs.empty() ? nullptr : header_name_ptrs.data()));
  for (const std::string& expression : program.name_expressions) {
    LIGHTSEQ_NVRTC_CHECK(nvrtcAddNameExpression(handle.get(), expression.c_str()));
  }

  std::vector<const char*> option_ptrs;
  for (const std::string& option : options) option_ptrs.push_back(option.c_str());
  const nvrtcResult status =
      nvrtcCompileProgram(handle.get(), static_cast<int>(option_ptrs.size()), option_ptrs.data());
  std::string log = program_log(handle.get());
  if (status != NVRTC_SUCCESS) throw_compile_error(program, stem, options, std::move(log), status);

  CompiledProgram compiled;
  compiled.arch = target_arch;
  compiled.is_ptx = target.is_ptx;
  compiled.image = program_image(handle.get(), target.is_ptx);
  for (const std::string& expression : program.name_expressions) {
    const char* lowered = nullptr;
    LIGHTSEQ_NVRTC_CHECK(nvrtcGetLoweredName(handle.get(), expression.c_str(), &lowered));
    compiled.lowered_names.emplace_back(lowered);
  }
  compiled.log = std::move(log);
  return compiled;
}

}  // namespace

}  // namespace lightseq
