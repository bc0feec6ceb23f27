// lsc — the lightseq command line: build (fill the kernel cache ahead of time), plan (show the
// fusion plan), kernels, cache ls|clear, bench (time layer stacks or the whole step), train (a
// whole model, frontends/lsc/train.h). Thin: parses arguments, calls the compiler and the runtime,
// translates errors.
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>

#include "compiler/codegen/program.h"
#include "compiler/compiler.h"
#include "compiler/errors.h"
#include "compiler/ir/kernel.h"
#include "compiler/parallel.h"
#include "compiler/planner/planner.h"
#include "frontends/lsc/args.h"
#include "frontends/lsc/bench.h"
#include "frontends/lsc/train.h"
#include "frontends/spec/parse.h"

namespace lightseq::lsc {
namespace {

std::vector<std::string> split_archs(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// `--arch` must name at least one arch ("", "," do not); bad names are reported by the build.
CLI::Validator arch_list() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        return split_archs(text).empty()
                   ? fmt::format("no arch in '{}': give one or more, e.g. sm_80,sm_90", text)
                   : "";
      },
      "");
}

DiskCache open_cache(const std::string& dir, CacheAccess access = CacheAccess::kReadWrite) {
  return DiskCache(dir.empty() ? std::nullopt : std::optional<std::filesystem::path>(dir), {},
                   access);
}

int cmd_build(const std::string& spec_path, const std::string& archs, const std::string& cache_dir,
              int jobs, bool quiet) {
  const ModelSpec spec = parse_spec_file(spec_path);
  const ModelPlan plan = plan_model(spec);
  DiskCache cache = open_cache(cache_dir);
  BuildOptions options;
  options.archs = split_archs(archs);
  options.jobs = jobs;
  const bool tty = isatty(fileno(stderr)) && !quiet;
  if (tty) {
    options.on_progress = [](const BuildProgress& p) {
      std::fprintf(stderr, "\r\033[K[%d/%d] %s %s for %s (%.2f s)", p.done, p.total,
                   p.cached ? "loaded" : "compiled", p.program.c_str(), p.arch.c_str(), p.seconds);
      std::fflush(stderr);
    };
  }
  BuildReport r;
  try {
    r = build_plan(plan, cache, options);
  } catch (...) {
    if (tty) std::fprintf(stderr, "\r\033[K");
    throw;
  }
  if (tty) std::fprintf(stderr, "\r\033[K");
  if (!quiet) {
    std::cout << fmt::format(
        "{}: {} kernels in {} programs for {}: {} compiled, {} from cache, {:.2f} s\ncache: {}{}\n",
        spec.name, r.kernels, r.programs, fmt::join(r.archs, ","), r.compiled, r.cached, r.seconds,
        cache.dir().string(), cache.persistent() ? "" : " (not writable: kept in memory)");
  }
  return 0;
}

// lsc build --resources: every kernel of the spec compiled with ptxas's report (no cache, no
// GPU): registers, stack frame, spills, static shared memory, per arch.
int cmd_resources(const std::string& spec_path, const std::string& archs, int jobs) {
  const ModelSpec spec = parse_spec_file(spec_path);
  const ModelPlan plan = plan_model(spec);
  const std::vector<ProgramSource> programs =
      codegen::generate_programs(plan.kernels(), spec.precision);
  std::vector<std::string> targets;
  for (const std::string& arch : split_archs(archs)) targets.push_back(validate_arch(arch));
  // every (arch, program) compiled in parallel (--jobs), printed in order
  std::vector<std::vector<KernelResources>> found(targets.size() * programs.size());
  parallel_for(found.size(), jobs, [&](size_t i) {
    found[i] = kernel_resources(programs[i % programs.size()], targets[i / programs.size()]);
  });
  for (size_t a = 0; a < targets.size(); ++a) {
    std::cout << fmt::format("{} for {} (ptxas -v; bytes):\n{:<72} {:>5} {:>6} {:>7} {:>7} {:>7}\n",
                             spec.name, targets[a], "kernel", "regs", "frame", "spill-st",
                             "spill-ld", "smem");
    for (size_t p = 0; p < programs.size(); ++p) {
      for (const KernelResources& r : found[a * programs.size() + p]) {
        std::cout << fmt::format("{:<72} {:>5} {:>6} {:>7} {:>7} {:>7}\n", r.label, r.registers,
                                 r.stack_frame, r.spill_stores, r.spill_loads, r.shared);
        for (const std::string& note : r.notes) std::cout << "    ptxas: " << note << "\n";
      }
    }
  }
  return 0;
}

int cmd_plan(const std::string& spec_path) {
  std::cout << format_plan(plan_model(parse_spec_file(spec_path)));
  return 0;
}

int cmd_cache_ls(const std::string& cache_dir) {
  DiskCache cache = open_cache(cache_dir, CacheAccess::kInspect);
  std::error_code ec;
  if (!std::filesystem::exists(cache.dir(), ec)) {
    std::cout << fmt::format("cache {}: 0 entries (the directory does not exist)\n",
                             cache.dir().string());
    return 0;
  }
  const auto entries = cache.list();
  int64_t total = 0;
  std::cout << fmt::format("cache {}: {} entries\n", cache.dir().string(), entries.size());
  if (!entries.empty()) {
    std::cout << fmt::format("{:<16} {:<7} {:>7} {:>10}  {}\n", "key", "arch", "kernels", "bytes",
                             "program");
  }
  for (const CacheEntryInfo& e : entries) {
    total += e.bytes;
    std::cout << fmt::format(
        "{:<16} {:<7} {:>7} {:>10}  {}{}\n", e.key.substr(0, 16), e.arch, e.kernels, e.bytes,
        e.program, e.valid ? "" : fmt::format("  (invalid: {}; replaced on next use)", e.problem));
  }
  std::cout << fmt::format("total {} bytes\n", total);
  const std::vector<CacheTempFile> temps = cache.temp_files();
  if (!temps.empty()) {
    std::cout << fmt::format(
        "{} temp files (writes in progress, or left by killed writers; `lsc build` and `lsc cache "
        "clear` remove those older than {} minutes):\n",
        temps.size(), DiskCache::kStaleTempAge.count());
  }
  for (const CacheTempFile& t : temps) {
    std::cout << fmt::format("  {} {} bytes{}\n", t.path.string(), t.bytes,
                             t.stale ? " (stale: left by a killed writer)" : "");
  }
  return 0;
}

int cmd_cache_clear(const std::string& cache_dir) {
  DiskCache cache = open_cache(cache_dir, CacheAccess::kInspect);
  const int64_t n = cache.clear();
  std::cout << fmt::format("removed {} entries from {}\n", n, cache.dir().string());
  return 0;
}

}  // namespace

int run(int argc, char** argv) {
  // A cache write past `ulimit -f` then fails with EFBIG and the cache falls back to memory,
  // instead of SIGXFSZ killing lsc.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app{
      "lsc — the lightseq kernel compiler.\n"
      "Compiles the CUDA kernels a Transformer spec needs for training and keeps them in\n"
      "the disk cache ($LIGHTSEQ_CACHE_DIR, else $XDG_CACHE_HOME/lightseq, else\n"
      "~/.cache/lightseq).",
      "lsc"};
  app.set_version_flag("--version", std::string("lsc ") + LIGHTSEQ_VERSION);
  app.require_subcommand(1);

  std::string spec, archs = jit_target(90), cache_dir;  // what an H100 or H200 runs
  int jobs = 0;
  bool quiet = false;
  const CLI::Validator cache_check =
      non_empty("give a directory, or leave --cache out for the default (see lsc --help)");
  const CLI::Validator positive = whole_number_at_least(1);
  const CLI::Validator non_negative = whole_number_at_least(0);
  auto* build = app.add_subcommand("build", "Compile every kernel the spec needs for training.");
  build->add_option("spec", spec, "Model spec (JSON, see docs/spec.md)")->required();
  build
      ->add_option(
          "--arch", archs,
          "Comma-separated GPU archs, e.g. sm_80,sm_90a (Hopper: the runtime compiles for sm_90a)")
      ->check(arch_list())
      ->capture_default_str();
  build->add_option("--cache", cache_dir, "Cache directory (default: see above)")
      ->check(cache_check);
  build->add_option("-j,--jobs", jobs, "Parallel compiles (default: one per core)")
      ->check(whole_number_at_least(0, "0 = one per core"));
  build->add_flag("-q,--quiet", quiet, "Print nothing on success");
  bool resources = false;
  build->add_flag("--resources", resources,
                  "Instead of filling the cache, compile every kernel with ptxas's report and "
                  "print each one's registers, stack frame, spill bytes and static shared memory "
                  "(no GPU needed)");

  auto* plan =
      app.add_subcommand("plan", "Print the fusion plan: kernels, fused ops, GEMMs and epilogues.");
  plan->add_option("spec", spec, "Model spec (JSON)")->required();

  auto* kernels = app.add_subcommand(
      "kernels", "Print every kernel signature (templates/*.sig.cuh) as Markdown.");

  auto* cache = app.add_subcommand("cache", "Inspect or clear the kernel cache.");
  cache->require_subcommand(1);
  auto* ls = cache->add_subcommand("ls", "List cache entries (key, arch, kernels, size, program).");
  ls->add_option("--cache", cache_dir, "Cache directory")->check(cache_check);
  auto* clear =
      cache->add_subcommand("clear", "Remove every cache entry (other files are left alone).");
  clear->add_option("--cache", cache_dir, "Cache directory")->check(cache_check);

  BenchOptions bench_opts;
  auto* bench = app.add_subcommand("bench",
                                   "Time training steps (forward + backward) of the spec's encoder "
                                   "and decoder stacks on a GPU.");
  bench->add_option("spec", bench_opts.spec, "Model spec (JSON)")->required();
  bench->add_option("--batch", bench_opts.batch, "Sequences per batch")
      ->check(positive)
      ->capture_default_str();
  bench->add_option("--seq", bench_opts.seq, "Sequence length")
      ->check(positive)
      ->capture_default_str();
  bench
      ->add_option("--src-seq", bench_opts.src_seq,
                   "Encoder positions a decoder stack attends to (default: --seq)")
      ->check(positive);
  bench->add_option("--iters", bench_opts.iters, "Timed steps")
      ->check(positive)
      ->capture_default_str();
  bench->add_option("--warmup", bench_opts.warmup, "Untimed steps first")
      ->check(non_negative)
      ->capture_default_str();
  bench->add_option("--device", bench_opts.device, "GPU ordinal")
      ->check(non_negative)
      ->capture_default_str();
  bench->add_flag("--step", bench_opts.step,
                  "Time the whole training step instead (TrainStep: embedding, stacks, criterion, "
                  "backward, optimizer) on a batch of --tokens, rows of --seq");
  bench->add_option("--tokens", bench_opts.tokens, "With --step: tokens per batch")
      ->check(positive)
      ->capture_default_str();
  bench->add_flag("--no-graphs", bench_opts.no_graphs,
                  "Time eager calls only: no layer calls replayed from CUDA graphs (with --step: "
                  "the eager step)");
  bench
      ->add_option("--attention", bench_opts.attention,
                   "Run every stack's attention unfused, fused (flash_attention.cuh) or auto (per "
                   "call by its lengths), whatever the spec says")
      ->check(CLI::IsMember(names_of(kAttentionBackends)));

  TrainOptions train_opts;
  auto* train = app.add_subcommand(
      "train",
      "Train the spec's whole model on a GPU from tokenized examples (docs/train.md) or a "
      "synthetic task.");
  train
      ->add_option("spec", train_opts.spec,
                   "Model spec (JSON) with embedding, criterion, optimizer")
      ->type_name("SPEC")
      ->required();
  train
      ->add_option("--data", train_opts.data,
                   "Training examples, one per line: 'source ids ||| target ids' (docs/train.md)")
      ->type_name("FILE")
      ->check(non_empty("give a file of examples (docs/train.md)"));
  train
      ->add_option("--valid", train_opts.valid,
                   "Validation examples, the same format (with --data)")
      ->type_name("FILE")
      ->check(non_empty("give a file of examples (docs/train.md)"));
  train
      ->add_option("--synthetic", train_opts.synthetic,
                   "A synthetic task instead of --data: copy or reverse")
      ->type_name("TASK")
      ->check(one_of({"copy", "reverse"}));
  train->add_option("--steps", train_opts.steps, "Optimizer steps in all (a resumed run included)")
      ->check(positive)
      ->capture_default_str();
  train
      ->add_option("--tokens-per-batch", train_opts.tokens_per_batch,
                   "Token budget of a batch: rows × length rounded up to a multiple of 8")
      ->check(whole_number_at_least(8))
      ->capture_default_str();
  train
      ->add_option(
          "--lr", train_opts.lr,
          "Peak learning rate of the inverse_sqrt schedule (default: the spec's optimizer.lr; "
          "with --resume, the saved run's)")
      ->check(positive_number("5e-4"));
  train
      ->add_option("--warmup", train_opts.warmup,
                   "Linear warm-up steps before the inverse-sqrt decay (default: --steps / 10, at "
                   "most 4000; with --resume, the saved run's)")
      ->check(non_negative);
  train->add_option("--save", train_opts.save, "Checkpoint directory (default: --resume's)")
      ->type_name("DIR")
      ->check(non_empty("give a directory, or leave --save out for no checkpoints"));
  train
      ->add_option("--save-every", train_opts.save_every,
                   "Steps between checkpoints (and the last)")
      ->check(positive)
      ->capture_default_str();
  train
      ->add_option("--resume", train_opts.resume,
                   "Continue the run saved in DIR, bit for bit (same spec, data, seed, budget)")
      ->type_name("DIR")
      ->check(non_empty("give a directory written by --save"));
  train
      ->add_option("--valid-every", train_opts.valid_every,
                   "Steps between validations (0: only after the last step)")
      ->check(non_negative)
      ->capture_default_str();
  train
      ->add_option("--seed", train_opts.seed, "Seed of the initial weights, dropout and data order")
      ->check(non_negative)
      ->capture_default_str();
  train
      ->add_option("--max-len", train_opts.max_len,
                   "Longest sequence (default: 32 for --synthetic; for --data the embedding's "
                   "max_positions; longer examples are skipped)")
      ->check(positive);
  train->add_option("--log-every", train_opts.log_every, "Steps between progress lines")
      ->check(positive)
      ->capture_default_str();
  train->add_flag("--no-graphs", train_opts.no_graphs, "Run every step eagerly (no CUDA graphs)");
  train->add_option("--device", train_opts.device, "GPU ordinal")
      ->check(non_negative)
      ->capture_default_str();
  train
      ->add_option("--gpus", train_opts.gpus,
                   "Train on N GPUs, one process each (GPUs 0..N-1), each on its own batches of "
                   "--tokens-per-batch, their gradients summed through NCCL; under torchrun "
                   "the group comes from its environment instead")
      ->check(positive);
  train_opts.args.assign(argv + 1, argv + argc);

  try {
    app.parse(argc, argv);
  } catch (const CLI::RequiredError& e) {
    const std::string message = subcommand_error(app);
    if (message.empty()) return app.exit(e) == 0 ? 0 : 2;
    std::cerr << message << "\nRun with --help for more information.\n";
    return 2;
  } catch (const CLI::ParseError& e) {
    // app.exit prints the message (or the help); a usage error exits 2 whatever CLI11's own code
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (*train) {
    const std::string usage = train_usage_error(train_opts);
    if (!usage.empty()) {
      std::cerr << usage << "\nRun with --help for more information.\n";
      return 2;
    }
  }
  // A rank of a group (lsc train --gpus N, torchrun) says which it is.
  const char* rank = std::getenv("WORLD_SIZE") ? std::getenv("RANK") : nullptr;
  const std::string lsc = rank ? fmt::format("lsc (rank {})", rank) : "lsc";
  try {
    if (*build && resources) {
      if (!cache_dir.empty()) {
        std::cerr << "lsc build: --resources compiles each kernel afresh for ptxas's report and "
                     "neither reads nor fills a cache: leave out --cache\n";
        return 2;
      }
      return cmd_resources(spec, archs, jobs);
    }
    if (*build) return cmd_build(spec, archs, cache_dir, jobs, quiet);
    if (*plan) return cmd_plan(spec);
    if (*kernels) {
      std::cout << format_signatures();
      return 0;
    }
    if (*ls) return cmd_cache_ls(cache_dir);
    if (*clear) return cmd_cache_clear(cache_dir);
    if (*bench) return run_bench(bench_opts);
    if (*train) return run_train(train_opts);
  } catch (const SpecError& e) {
    std::cerr << lsc << ": error: " << e.what() << "\n";
    return 1;
  } catch (const CompileError& e) {
    std::cerr << lsc << ": error: " << e.what() << "\n";
    return 1;
  } catch (const Error& e) {
    std::cerr << lsc << ": error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << lsc << ": internal error: " << e.what() << "\n";
    return 3;
  }
  return 2;
}

}  // namespace lightseq::lsc

int main(int argc, char** argv) { return lightseq::lsc::run(argc, argv); }
