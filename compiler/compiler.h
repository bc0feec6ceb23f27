// compiler.h — the compiler's front door: spec → plan → programs → NVRTC → disk cache.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "compiler/cache/disk_cache.h"
#include "compiler/nvrtc/nvrtc_compiler.h"
#include "compiler/planner/plan.h"

namespace lightseq {

struct BuildProgress {
  int done = 0, total = 0;  // programs × archs finished / in all
  std::string program;      // the one that just finished
  std::string arch;
  bool cached = false;  // came from the cache
  double seconds = 0;   // its compile (or load) time
};

struct BuildOptions {
  std::vector<std::string> archs{"sm_90"};
  int jobs = 0;  // parallel NVRTC compiles; 0 = hardware concurrency
  std::function<void(const BuildProgress&)> on_progress;  // called under a lock, in any thread
};

// What the cache keeps of one NVRTC compile of `program`: its name, labels, lowered names, image.
CacheEntry to_cache_entry(const ProgramSource& program, CompiledProgram compiled);

// One compiled program for one arch, with its kernels' lowered names.
struct CompiledModule {
  std::string key;
  CacheEntry entry;
};

struct BuildReport {
  std::vector<std::string> archs;  // the archs built for: canonical names, duplicates removed
  int kernels = 0;                 // distinct kernel instances
  int programs = 0;                // programs × archs
  int compiled = 0;                // compiled by NVRTC in this build
  int cached = 0;                  // loaded from the cache
  double seconds = 0;
  std::vector<CompiledModule> modules;
};

// Compiles (or loads from `cache`) every kernel of `plan` for every arch in options.archs, and
// removes the cache's stale temp files (DiskCache::remove_stale_temp_files).
// Throws CompileError for a rejected program (after the other programs finished), Error for a bad
// arch.
BuildReport build_plan(const ModelPlan& plan, DiskCache& cache, const BuildOptions& options);

}  // namespace lightseq
