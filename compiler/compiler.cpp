#include "compiler/compiler.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>

#include "compiler/cache/cache_key.h"
#include "compiler/codegen/program.h"
#include "compiler/errors.h"
#include "compiler/parallel.h"

namespace lightseq {

CacheEntry to_cache_entry(const ProgramSource& program, CompiledProgram compiled) {
  return CacheEntry{program.name,
                    compiled.arch,
                    compiled.is_ptx,
                    program.labels,
                    std::move(compiled.lowered_names),
                    std::move(compiled.image)};
}

namespace {
double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

BuildReport build_plan(const ModelPlan& plan, DiskCache& cache, const BuildOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  if (options.archs.empty()) throw Error("no target arch given: pass at least one, e.g. sm_90");
  std::vector<std::string> archs;  // in the order given, each once
  for (const std::string& a : options.archs) {
    std::string arch = validate_arch(a);
    if (std::find(archs.begin(), archs.end(), arch) == archs.end())
      archs.push_back(std::move(arch));
  }
  const std::vector<KernelInstance> kernels = plan.kernels();
  const std::vector<ProgramSource> programs =
      codegen::generate_programs(kernels, plan.spec.precision);
  const std::string version = nvrtc_version();
  // What killed writers left behind goes now (best effort: a failure here costs disk space only).
  if (cache.persistent()) cache.remove_stale_temp_files();

  struct Task {
    const ProgramSource* program;
    std::string arch;
  };
  std::vector<Task> tasks;
  for (const std::string& arch : archs) {
    for (const ProgramSource& p : programs) tasks.push_back({&p, arch});
  }
  // The longest compiles first, so that none starts last and runs alone (a greedy longest-first
  // order): the programs of one expensive kernel, then families by their kernel count. On the
  // 2-core machine transformer-base's grad_k/grad_v (~2.4 s) and softmax (~1.7 s) programs had
  // come last in name order.
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) {
    if (a.program->own != b.program->own) return a.program->own;
    return a.program->labels.size() > b.program->labels.size();
  });
  BuildReport report;
  report.archs = archs;
  report.kernels = static_cast<int>(kernels.size());
  report.programs = static_cast<int>(tasks.size());
  report.modules.resize(tasks.size());

  std::atomic<int> compiled{0}, cached{0};
  std::mutex mu;
  int done = 0;
  parallel_for(tasks.size(), options.jobs, [&](size_t i) {
    const Task& t = tasks[i];
    const auto start = std::chrono::steady_clock::now();
    try {
      const std::vector<std::string> opts = nvrtc_options(t.arch);
      const std::string key = make_cache_key(*t.program, t.arch, opts, version);
      std::optional<CacheEntry> entry = cache.get(key);
      const bool hit = entry.has_value();
      if (!hit) {
        entry = to_cache_entry(*t.program, compile_program(*t.program, t.arch));
        cache.put(key, *entry);
        ++compiled;
      } else {
        ++cached;
      }
      report.modules[i] = CompiledModule{key, std::move(*entry)};
      std::lock_guard<std::mutex> lock(mu);
      ++done;
      if (options.on_progress) {
        options.on_progress(
            {done, static_cast<int>(tasks.size()), t.program->name, t.arch, hit, since(start)});
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      ++done;
      throw;
    }
  });
  report.compiled = compiled;
  report.cached = cached;
  report.seconds = since(t0);
  return report;
}

}  // namespace lightseq
