// lsc bench --step — times the whole training step (TrainStep::run: embedding → stacks → output
// projection + criterion → backward → optimizer) on a random batch: GPU time between CUDA events
// (median of --iters), the host's time to issue one run(), tokens/s and peak device memory. The
// first run of a shape is eager and the second captures its CUDA graph, so both are warm-up; with
// --no-graphs every run is eager.
#include <fmt/format.h>

#include <algorithm>
#include <iostream>

#include "compiler/errors.h"
#include "frontends/lsc/bench.h"
#include "frontends/lsc/data.h"
#include "frontends/lsc/timing.h"
#include "frontends/lsc/upload.h"
#include "frontends/spec/parse.h"
#include "runtime/cuda_check.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/grad_lane.h"
#include "runtime/step.h"

namespace lightseq::lsc {

namespace {

double gib(uint64_t bytes) { return static_cast<double>(bytes) / static_cast<double>(1ull << 30); }

// [batch, src_len] sources (when src_len > 0), [batch, len] inputs and targets, in StepBatch's
// layout; half the rows (the even ones) with their last eighth padded, as `lsc bench` pads.
// Returns the targets that count.
int64_t random_batch(const TokenRules& rules, int64_t batch, int64_t src_len, int64_t len,
                     std::vector<int64_t>& out) {
  Rng rng(1234);
  const auto id = [&] {
    for (;;) {
      const auto v = static_cast<int64_t>(rng.below(static_cast<uint64_t>(rules.vocab)));
      if (v != rules.padding_idx && v != rules.ignore_index) return v;
    }
  };
  out.assign(batch * (src_len + 2 * len), 0);
  int64_t* src = out.data();
  int64_t* tokens = src + batch * src_len;
  int64_t* targets = tokens + batch * len;
  int64_t counted = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t real_src = b % 2 == 0 ? src_len - src_len / 8 : src_len;
    const int64_t real = b % 2 == 0 ? len - len / 8 : len;
    for (int64_t t = 0; t < src_len; ++t) src[b * src_len + t] = t < real_src ? id() : rules.pad;
    for (int64_t t = 0; t < len; ++t) {
      tokens[b * len + t] = t < real ? id() : rules.pad;
      targets[b * len + t] = t < real ? id() : rules.ignore_index;
    }
    counted += real;
  }
  return counted;
}

}  // namespace

int run_step_bench(const BenchOptions& o) {
  const ModelSpec parsed = bench_spec(o);
  const TokenRules rules = token_rules(parsed);  // refuses a spec without embedding, criterion...
  const bool two = rules.shape == ModelShape::kEncoderDecoder;
  const int64_t len = o.seq, src_len = two ? (o.src_seq > 0 ? o.src_seq : o.seq) : 0;
  const int64_t batch = std::max<int64_t>(1, o.tokens / len);
  for (int64_t l : {len, src_len}) {
    if (l > rules.max_positions) {
      throw Error(fmt::format(
          "--seq/--src-seq {} is longer than {}'s embedding.max_positions {}: give at most {}", l,
          parsed.name, rules.max_positions, rules.max_positions));
    }
  }
  if (device_count() == 0) {
    throw Error(fmt::format(
        "lsc bench needs an NVIDIA GPU: {}; run it on a machine with one (lsc build {} compiles "
        "the kernels without a GPU)",
        no_gpu_reason(), o.spec));
  }
  const auto model = CompiledModel::load(parsed, RuntimeOptions{o.device, std::nullopt});
  const ModelSpec& spec = model->spec();
  ScopedContext ctx(o.device);
  OwnedStream stream;
  StreamOrderedAllocator alloc(o.device);
  LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
  reset_memory_peaks(o.device);

  std::vector<int64_t> host;
  const int64_t counted = random_batch(rules, batch, src_len, len, host);
  DeviceBuffer dev(alloc, host.size() * sizeof(int64_t), stream);
  LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(dev.device_ptr(), host.data(),
                                               host.size() * sizeof(int64_t), stream));
  LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));  // `host` may go after this
  StepBatch b;
  b.src_tokens = two ? dev.as<int64_t>() : nullptr;
  b.tokens = dev.as<int64_t>() + batch * src_len;
  b.targets = b.tokens + batch * len;
  b.batch = batch, b.src_len = src_len, b.len = len;

  StepOptions so;
  so.seed = 1;
  so.cuda_graphs = !o.no_graphs;
  TrainStep step(model, so);
  step.init_parameters(1);
  step.set_lr(static_cast<float>(spec.optimizer->lr), stream);
  std::cout << fmt::format(
                   "lsc bench --step {} on {} ({}), {}: batch {} × len {}{} ({} tokens, {} "
                   "targets; half the batch with its last eighth padded), {}\n",
                   spec.name, device_name(o.device), device_target(o.device),
                   to_string(spec.precision), batch, len,
                   two ? fmt::format(", source len {}", src_len) : "", batch * len, counted,
                   std::string(o.no_graphs ? "eager (--no-graphs)" : "CUDA graphs") +
                       (grad_lane_enabled() ? ", parameter-gradient lane" : "") +
                       (step.early_updates() ? ", early updates" : ""))
            << std::flush;

  // the first run of the shape is eager, the second captures its graph: both warm up
  step.run(b, stream);
  step.run(b, stream);
  const Timing t = time_steps(o.warmup, o.iters, stream, [&] { step.run(b, stream); });
  const StepStats st = step.stats(stream);
  // random targets: the loss says the step ran, not that it learns (the timing holds either way)
  const double loss = st.loss / std::max<double>(1.0, static_cast<double>(st.tokens));
  const MemoryFigures m = memory_figures(o.device);
  std::cout << fmt::format(
                   "step: {:.3f} ms (GPU time between CUDA events, median of {}, min {:.3f}); "
                   "host issue {:.3f} ms per run(); {:.0f} tokens/s\n"
                   "memory: peak {:.2f} GiB in the pool + {:.2f} GiB in graphs; device {:.2f} of "
                   "{:.2f} GiB in use\n"
                   "graphs: {} captured, {} replays; loss {:.4f} per target after {} steps\n",
                   t.median, t.count, t.min, t.host_median,
                   static_cast<double>(batch * len) / (t.median / 1e3), gib(m.pool_peak),
                   gib(m.graph_peak), gib(m.device_used), gib(m.device_total),
                   step.graphs_captured(), step.graph_replays(), loss, step.steps_run())
            << std::flush;
  return 0;
}

}  // namespace lightseq::lsc
