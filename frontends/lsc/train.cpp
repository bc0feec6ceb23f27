// lsc train — everything the CPU can check (the spec, the data, the batches, a resumed run's
// state) is checked before the GPU is touched; then the step loop: upload (pinned, no
// synchronization), set_lr, run; stats() (which synchronizes) only at log steps.
#include "frontends/lsc/train.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <memory>
#include <numeric>

#include "compiler/errors.h"
#include "frontends/lsc/batcher.h"
#include "frontends/lsc/data.h"
#include "frontends/lsc/group.h"
#include "frontends/lsc/progress.h"
#include "frontends/lsc/schedule.h"
#include "frontends/lsc/train_state.h"
#include "frontends/lsc/upload.h"
#include "frontends/spec/parse.h"
#include "runtime/cuda_check.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/step.h"

namespace lightseq::lsc {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

// How long the ranks of a group wait for each other to meet (each compiles its kernels first).
constexpr std::chrono::minutes kGroupTimeout{10};

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// The run's data, checked on the CPU: the training stream positioned where the run starts, the
// validation batches, and what identifies the data in a saved state.
struct Data {
  std::unique_ptr<TrainBatches> train;
  std::vector<Example> valid;
  std::vector<std::vector<uint32_t>> valid_batches;
  std::string source;  // "--synthetic copy", "--data /abs/path"
  uint64_t fingerprint = 0;
};

Data prepare_data(const TrainOptions& o, const TokenRules& rules, int64_t max_len) {
  Data d;
  const uint64_t seed = static_cast<uint64_t>(o.seed);
  TrainBatches::ExamplesOf examples_of;
  if (!o.synthetic.empty()) {
    const SyntheticTask task =
        o.synthetic == "copy" ? SyntheticTask::kCopy : SyntheticTask::kReverse;
    const std::vector<int32_t> alphabet = synthetic_alphabet(rules);
    examples_of = [task, rules, max_len, seed](int64_t epoch) {
      return std::make_shared<const std::vector<Example>>(
          synthetic_examples(task, rules, kSyntheticTrainExamples, max_len,
                             stream_seed(seed, "train", static_cast<uint64_t>(epoch))));
    };
    d.valid = synthetic_examples(task, rules, kSyntheticValidExamples, max_len,
                                 stream_seed(seed, "valid"));
    d.source = fmt::format("--synthetic {}", to_string(task));
    std::cout << fmt::format(
        "data: --synthetic {}: {} fresh examples per epoch, {} validation examples; sequences of "
        "1 to {} ids drawn from {} (ids {}..{}), BOS {}\n",
        to_string(task), kSyntheticTrainExamples, kSyntheticValidExamples,
        rules.shape == ModelShape::kLanguageModel ? max_len / 2 : max_len, alphabet.size(),
        alphabet.front(), alphabet.back(), rules.bos);
  } else {
    auto set = std::make_shared<Dataset>(read_examples(o.data, rules, max_len));
    d.source = "--data " + fs::absolute(o.data).lexically_normal().string();
    d.fingerprint = set->fingerprint;
    std::cout << fmt::format(
        "data: {}: {} examples{}\n", o.data, set->examples.size(),
        set->skipped ? fmt::format(" ({} longer than --max-len {} skipped)", set->skipped, max_len)
                     : "");
    auto examples = std::shared_ptr<const std::vector<Example>>(set, &set->examples);
    examples_of = [examples](int64_t) { return examples; };
    if (!o.valid.empty()) {
      Dataset v = read_examples(o.valid, rules, max_len);
      std::cout << fmt::format(
          "valid: {}: {} examples{}\n", o.valid, v.examples.size(),
          v.skipped ? fmt::format(" ({} longer than --max-len {} skipped)", v.skipped, max_len)
                    : "");
      d.valid = std::move(v.examples);
    }
  }
  d.valid_batches = make_batches(d.valid, o.tokens_per_batch, Order::kInOrder, 0);
  d.train = std::make_unique<TrainBatches>(std::move(examples_of), o.tokens_per_batch, seed);
  return d;
}

// The loop's GPU state and its bookkeeping.
class Trainer {
 public:
  Trainer(const TrainOptions& o, const ModelSpec& spec, const TokenRules& rules, Data& data,
          TrainState identity, const std::optional<GroupEnv>& group)
      : o_(o), rules_(rules), data_(data), identity_(std::move(identity)) {
    const Clock::time_point t0 = Clock::now();
    model_ = CompiledModel::load(spec, RuntimeOptions{o.device, std::nullopt});
    const BuildReport& r = model_->build_report();
    std::cout << fmt::format("kernels: {} ({} compiled, {} from the cache) in {:.2f} s\n",
                             r.kernels, r.compiled, r.cached, seconds_since(t0));
    ctx_ = std::make_unique<ScopedContext>(o.device);
    stream_ = std::make_unique<OwnedStream>();
    alloc_ = std::make_unique<StreamOrderedAllocator>(o.device);
    StepOptions so;
    so.seed = static_cast<uint64_t>(o.seed);
    if (group) {  // every rank meets rank 0 (kernels compiled first, in parallel)
      const Clock::time_point t1 = Clock::now();
      const CommId id = exchange_id(*group, &Communicator::new_id, kGroupTimeout);
      comm_ = std::make_shared<const Communicator>(id, group->rank, group->world, o.device);
      // One seed: the weights start equal on every rank; TrainStep gives each rank its own
      // dropout masks (rank_seed).
      so.comm = comm_;
      std::cout << fmt::format(
          "group: {} processes (rank {} reports), their gradients summed through NCCL; joined in "
          "{:.2f} s\n",
          group->world, group->rank, seconds_since(t1));
    }
    so.cuda_graphs = !o.no_graphs;
    step_ = std::make_unique<TrainStep>(model_, so);
    uploader_ = std::make_unique<BatchUploader>(*alloc_, *stream_, 3 * o.tokens_per_batch);
  }

  void start(const std::optional<TrainState>& saved, double peak, int64_t warmup) {
    schedule_ = {peak, warmup};
    if (saved) {
      step_->load(fs::path(o_.resume) / saved->checkpoint, *stream_);
      done_ = saved->step;
      curve_ = saved->curve;
    } else {
      step_->init_parameters(static_cast<uint64_t>(o_.seed));
    }
    const ModelSpec& spec = model_->spec();
    int64_t params = 0;
    for (const ArenaEntry& e : step_->arena().entries) params += e.numel;
    std::cout << fmt::format(
        "lsc train {} on {} ({}), {}, {:.1f}M parameters: steps {}..{} of at most {} tokens, "
        "lr {:.2e} (inverse_sqrt, warmup {}), seed {}, CUDA graphs {}\n",
        spec.name, device_name(o_.device), device_target(o_.device), to_string(spec.precision),
        params / 1e6, done_ + 1, o_.steps, o_.tokens_per_batch, peak, warmup, o_.seed,
        o_.no_graphs ? "off" : "on");
  }

  void run() {
    const int64_t first = done_;
    Clock::time_point segment = Clock::now();
    double interval_s = 0;
    int64_t interval_steps = 0, interval_targets = 0;
    // stops the training clock (after the stream drained) for a validation or a checkpoint
    const auto pause = [&] {
      LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(*stream_));
      const double s = seconds_since(segment);
      interval_s += s, train_s_ += s;
    };
    while (done_ < o_.steps) {
      // Each step takes the stream's next world() batches, one per rank: every rank moves the
      // stream alike, so a saved position means the same on each.
      TrainBatches::Batch b = data_.train->next();
      for (int k = 1; k < world(); ++k) {
        TrainBatches::Batch other = data_.train->next();
        if (k == rank()) b = std::move(other);
      }
      const BatchUploader::Uploaded up = uploader_->upload(*b.examples, b.rows, rules_);
      const int64_t s = ++done_;
      const double lr = schedule_.at(s);
      step_->set_lr(static_cast<float>(lr), *stream_);
      step_->run(up.batch, *stream_);
      ++interval_steps;
      interval_targets += up.targets;
      const bool valid = !data_.valid_batches.empty() &&
                         ((o_.valid_every > 0 && s % o_.valid_every == 0) || s == o_.steps);
      const bool save = !save_dir().empty() && (s % o_.save_every == 0 || s == o_.steps);
      if (s % o_.log_every == 0 || s == o_.steps || valid) {
        const StepStats st = group_stats(step_->stats(*stream_), interval_targets);  // syncs
        const double t = seconds_since(segment);
        interval_s += t, train_s_ += t;
        log(s, st, lr, interval_s, interval_steps, interval_targets, s - first);
        interval_s = 0, interval_steps = 0, interval_targets = 0;
        segment = Clock::now();
      }
      if (valid || save) {
        pause();
        if (valid) validate(s);
        if (save) checkpoint(s);
        segment = Clock::now();
      }
    }
    summary(first);
  }

 private:
  fs::path save_dir() const { return !o_.save.empty() ? o_.save : o_.resume; }
  int world() const { return comm_ ? comm_->world() : 1; }
  int rank() const { return comm_ ? comm_->rank() : 0; }

  // The group's sums of a step's statistics (and of `targets`, the interval's): every rank's
  // loss, NLL and targets; a bad id on any rank. Ranks agree on the rest (one optimizer state).
  StepStats group_stats(StepStats st, int64_t& targets) const {
    if (world() == 1) return st;
    double v[] = {st.loss,
                  st.nll,
                  static_cast<double>(st.tokens),
                  static_cast<double>(targets),
                  st.bad_token ? 1.0 : 0.0,
                  st.bad_target ? 1.0 : 0.0};
    comm_->all_reduce_host(v, std::size(v));
    st.loss = v[0], st.nll = v[1], st.tokens = static_cast<int64_t>(v[2]);
    targets = static_cast<int64_t>(v[3]);
    st.bad_token = v[4] > 0, st.bad_target = v[5] > 0;
    return st;
  }

  void log(int64_t s, const StepStats& st, double lr, double interval_s, int64_t interval_steps,
           int64_t interval_targets, int64_t steps_this_run) {
    const double tokens = std::max<double>(static_cast<double>(st.tokens), 1.0);
    CurvePoint p;
    p.step = s;
    p.loss = st.loss / tokens;
    p.nll = st.nll / tokens;
    p.lr = lr;
    p.ms_per_step = interval_s * 1e3 / static_cast<double>(interval_steps);
    if (!std::isfinite(p.loss) || !std::isfinite(p.nll)) {
      throw Error(fmt::format(
          "step {}: the loss is {} (nll {}): training diverged; lower --lr (now {:.2e}) or raise "
          "--warmup",
          s, p.loss, p.nll, schedule_.peak));
    }
    if (st.bad_token || st.bad_target) {
      throw InternalError(fmt::format("step {}: a {} id outside the vocabulary reached the step", s,
                                      st.bad_token ? "token" : "target"));
    }
    curve_.push_back(p);
    ProgressLine line;
    line.step = s;
    line.steps = o_.steps;
    line.loss = p.loss;
    line.nll = p.nll;
    line.lr = lr;
    line.tokens_per_second = static_cast<double>(interval_targets) / interval_s;
    line.ms_per_step = p.ms_per_step;
    line.eta_seconds =
        train_s_ / static_cast<double>(steps_this_run) * static_cast<double>(o_.steps - s);
    line.loss_scale = st.loss_scale;
    line.skipped_updates = st.skipped_updates;
    std::cout << format_progress(line) << "\n" << std::flush;
  }

  void validate(int64_t s) {
    const Clock::time_point t0 = Clock::now();
    double loss = 0, nll = 0;
    int64_t targets = 0;
    for (size_t i = static_cast<size_t>(rank()); i < data_.valid_batches.size();
         i += static_cast<size_t>(world())) {  // the ranks share the batches
      const BatchUploader::Uploaded up =
          uploader_->upload(data_.valid, data_.valid_batches[i], rules_);
      const StepStats st = step_->evaluate(up.batch, *stream_);
      loss += st.loss, nll += st.nll, targets += st.tokens;
    }
    if (world() > 1) {
      double v[] = {loss, nll, static_cast<double>(targets)};
      comm_->all_reduce_host(v, std::size(v));
      loss = v[0], nll = v[1], targets = static_cast<int64_t>(v[2]);
    }
    const double n = std::max<double>(static_cast<double>(targets), 1.0);
    if (!curve_.empty() && curve_.back().step == s) {
      curve_.back().valid_loss = loss / n;
      curve_.back().valid_nll = nll / n;
    }
    std::cout << format_validation(s, loss / n, nll / n, targets,
                                   static_cast<int64_t>(data_.valid_batches.size()))
              << fmt::format(" | {:.2f} s\n", seconds_since(t0)) << std::flush;
    valid_s_ += seconds_since(t0);
  }

  // The new checkpoint, then the state naming it (atomically), then the old checkpoint removed.
  // In a group rank 0 writes it (every rank holds the same state).
  void checkpoint(int64_t s) {
    if (rank() != 0) return;
    const Clock::time_point t0 = Clock::now();
    const fs::path dir = save_dir();
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) {
      throw Error(
          fmt::format("--save {}: cannot create the directory: {}", dir.string(), ec.message()));
    }
    std::optional<std::string> previous;
    try {
      previous = read_state(dir).checkpoint;
    } catch (const DataError&) {
      // no state yet (or a broken one, replaced now)
    }
    TrainState st = identity_;
    st.step = s;
    st.data = data_.train->position();
    st.checkpoint = checkpoint_name(s);
    st.lr = schedule_.peak;
    st.warmup = schedule_.warmup;
    st.curve = curve_;
    step_->save(dir / st.checkpoint, *stream_);
    write_state(dir, st);
    if (previous && *previous != st.checkpoint) fs::remove(dir / *previous, ec);
    save_s_ += seconds_since(t0);
    std::cout << fmt::format("saved step {} to {} ({:.2f} s)\n", s, (dir / st.checkpoint).string(),
                             seconds_since(t0))
              << std::flush;
  }

  void summary(int64_t first) {
    const int64_t n = o_.steps - first;
    std::vector<double> intervals;
    for (const CurvePoint& p : curve_) {
      if (p.step > first) intervals.push_back(p.ms_per_step);
    }
    std::sort(intervals.begin(), intervals.end());
    const MemoryFigures m = memory_figures(o_.device);
    std::cout << fmt::format(
        "done: steps {}..{} in {:.2f} s of training (validation {:.2f} s, checkpoints {:.2f} s): "
        "{:.2f} ms/step mean, {:.2f} ms/step median of the log intervals; {} batch shapes "
        "({} CUDA graphs captured, {} replays); device memory peak {:.2f} GiB in the pool + {:.2f} "
        "GiB in graphs\n",
        first + 1, o_.steps, train_s_, valid_s_, save_s_, train_s_ * 1e3 / static_cast<double>(n),
        intervals.empty() ? 0.0 : intervals[intervals.size() / 2], uploader_->shapes(),
        step_->graphs_captured(), step_->graph_replays(), m.pool_peak / double(1 << 30),
        m.graph_peak / double(1 << 30));
    std::cout << "loss curve (per target token, nats):\n" << format_curve(curve_) << std::flush;
  }

  const TrainOptions& o_;
  const TokenRules rules_;
  Data& data_;
  TrainState identity_;
  InverseSqrtSchedule schedule_;
  std::shared_ptr<CompiledModel> model_;
  // destroyed in reverse: the uploader and the step return their memory on the stream first
  std::unique_ptr<ScopedContext> ctx_;
  std::unique_ptr<OwnedStream> stream_;
  std::unique_ptr<StreamOrderedAllocator> alloc_;
  std::shared_ptr<const Communicator> comm_;  // the process group, if any
  std::unique_ptr<TrainStep> step_;
  std::unique_ptr<BatchUploader> uploader_;
  int64_t done_ = 0;
  std::vector<CurvePoint> curve_;
  double train_s_ = 0, valid_s_ = 0, save_s_ = 0;
};

}  // namespace

std::string train_usage_error(const TrainOptions& o) {
  if (o.data.empty() == o.synthetic.empty()) {
    return o.data.empty()
               ? "lsc train: give the examples: --data FILE (docs/train.md) or --synthetic "
                 "copy|reverse"
               : "lsc train: --data and --synthetic exclude each other: give one";
  }
  if (!o.valid.empty() && o.data.empty()) {
    return "lsc train: --valid goes with --data; --synthetic makes its own validation set";
  }
  return "";
}

namespace {

// What the CPU can check before a GPU is touched, and what training then starts from.
struct Prepared {
  ModelSpec spec;
  TokenRules rules;
  Data data;
  TrainState identity;
  double peak = 0;
  int64_t warmup = 0;
  std::optional<TrainState> saved;
};

// std::cout dropped for the scope (a group's ranks but one; the launcher's own checks).
class QuietCout {
 public:
  explicit QuietCout(bool quiet) : old_(quiet ? std::cout.rdbuf(nullptr) : nullptr) {}
  ~QuietCout() {
    if (old_) {
      std::cout.rdbuf(old_);
      std::cout.clear();
    }
  }
  QuietCout(const QuietCout&) = delete;
  QuietCout& operator=(const QuietCout&) = delete;

 private:
  std::streambuf* old_;
};

// nullopt: a resumed run that has trained its --steps already (said so).
std::optional<Prepared> prepare(const TrainOptions& o) {
  const ModelSpec spec = parse_spec_file(o.spec);
  const TokenRules rules = token_rules(spec);
  // every length a batch has is rounded up to a multiple of 8 and must stay within the positions
  const int64_t limit = rules.max_positions / kLengthMultiple * kLengthMultiple;
  if (limit < 1) {
    throw Error(fmt::format(
        "{}: embedding.max_positions = {}: lsc train rounds lengths up to a multiple of {} and "
        "needs max_positions >= {}",
        spec.name, rules.max_positions, kLengthMultiple, kLengthMultiple));
  }
  const bool synthetic = !o.synthetic.empty();
  const int64_t max_len = o.max_len > 0 ? o.max_len
                          : synthetic   ? std::min(kSyntheticMaxLen, limit)
                                        : limit;
  if (max_len > limit) {
    throw DataError(fmt::format(
        "--max-len {} is longer than {} takes: lengths are rounded up to a multiple of {} and "
        "embedding.max_positions is {}; give at most {}",
        max_len, spec.name, kLengthMultiple, rules.max_positions, limit));
  }
  if (synthetic && round_up_length(max_len) > o.tokens_per_batch) {
    throw DataError(fmt::format(
        "--tokens-per-batch {} is too small for --max-len {} (a sequence takes {} once rounded up "
        "to a multiple of {}): raise --tokens-per-batch to at least {} or lower --max-len",
        o.tokens_per_batch, max_len, round_up_length(max_len), kLengthMultiple,
        round_up_length(max_len)));
  }
  Data data = prepare_data(o, rules, max_len);

  TrainState identity;
  identity.spec = spec.name;
  identity.seed = static_cast<uint64_t>(o.seed);
  identity.tokens_per_batch = o.tokens_per_batch;
  identity.max_len = max_len;
  identity.data_source = data.source;
  identity.data_fingerprint = data.fingerprint;
  double peak = o.lr > 0 ? o.lr : spec.optimizer->lr;
  int64_t warmup = o.warmup >= 0 ? o.warmup : default_warmup(o.steps);

  std::optional<TrainState> saved;
  if (!o.resume.empty()) {
    saved = read_state(o.resume);
    if (auto why = resume_mismatch(*saved, identity, o.resume)) throw DataError(*why);
    const fs::path file = fs::path(o.resume) / saved->checkpoint;
    if (!fs::exists(file)) {
      throw DataError(fmt::format("--resume {}: {} names the checkpoint {}, which is missing",
                                  o.resume, kStateFile, file.string()));
    }
    if (saved->step >= o.steps) {
      std::cout << fmt::format(
          "{} has trained {} steps already, --steps is {}: nothing to do (raise --steps to go "
          "on)\n",
          o.resume, saved->step, o.steps);
      return std::nullopt;
    }
    data.train->seek(saved->data);
    // the saved schedule goes on unless --lr / --warmup say otherwise
    if (o.lr <= 0) peak = saved->lr;
    if (o.warmup < 0) warmup = saved->warmup;
    if (saved->lr != peak || saved->warmup != warmup) {
      std::cout << fmt::format(
          "note: the saved run used lr {:.2e}, warmup {}; this one lr {:.2e}, warmup {}: its "
          "loss curve goes on differently\n",
          saved->lr, saved->warmup, peak, warmup);
    }
    std::cout << fmt::format("resume: step {} from {} (epoch {}, batch {})\n", saved->step,
                             o.resume, saved->data.epoch, saved->data.batch);
  } else {
    data.train->seek({0, 0});  // batches the first epoch now: a budget error shows before the GPU
  }

  if (!o.save.empty()) {  // a fresh run (or another run's resume) must not replace a saved run
    std::error_code ec;
    const bool same = !o.resume.empty() && fs::equivalent(o.save, o.resume, ec);
    if (!same && fs::exists(fs::path(o.save) / kStateFile, ec)) {
      throw DataError(fmt::format(
          "--save {}: it holds a saved run ({}): continue it with --resume {}, or save into "
          "another directory",
          o.save, kStateFile, o.save));
    }
  }
  return Prepared{spec, rules, std::move(data), std::move(identity), peak, warmup, saved};
}

void check_gpus(const TrainOptions& o, int needed) {
  if (device_count() == 0) {
    throw Error(fmt::format(
        "lsc train needs an NVIDIA GPU: {}; run it on a machine with one (lsc build {} compiles "
        "the kernels without a GPU)",
        no_gpu_reason(), o.spec));
  }
  if (needed > device_count()) {
    throw Error(fmt::format(
        "{}: this machine has {} GPU(s): give 0 to {}",
        o.gpus > 1 ? fmt::format("--gpus {}", o.gpus) : fmt::format("--device {}", o.device),
        device_count(), device_count() - 1));
  }
}

// `--gpus N` outside a group: the CPU checks once here (their errors said once), then N copies of
// this command as the ranks of a group (frontends/lsc/group.h); rank 0 reports.
int launch_group(const TrainOptions& o) {
  bool nothing_to_do = false;
  {  // the checks' data is dropped before the ranks start
    QuietCout quiet(true);
    nothing_to_do = !prepare(o);
  }
  if (nothing_to_do) {
    prepare(o);  // again, aloud: it says why there is nothing to do
    return 0;
  }
  check_gpus(o, o.gpus);
  if (const std::string why = Communicator::unavailable_reason(); !why.empty()) {
    throw Error("--gpus " + std::to_string(o.gpus) + " trains through NCCL: " + why);
  }
  std::cout << fmt::format("lsc train: {} processes, ranks 0..{} on GPUs 0..{}; rank 0 reports\n",
                           o.gpus, o.gpus - 1, o.gpus - 1)
            << std::flush;
  const int status = run_group(o.gpus, "/proc/self/exe", o.args);
  if (status != 0)
    std::cerr << fmt::format("lsc train: a rank failed (status {}); the group stopped\n", status);
  return status;
}

}  // namespace

int run_train(const TrainOptions& given) {
  const std::optional<GroupEnv> group =
      group_env([](const char* name) -> const char* { return std::getenv(name); });
  if (group && given.gpus > 0 && given.gpus != group->world) {
    throw Error(
        fmt::format("--gpus {} but this process is one of a group of WORLD_SIZE={}: leave "
                    "--gpus out under torchrun",
                    given.gpus, group->world));
  }
  if (group && given.device != 0) {
    throw Error(fmt::format(
        "--device {}: a rank of a group trains on the GPU LOCAL_RANK names ({}); leave --device "
        "out (CUDA_VISIBLE_DEVICES chooses a host's GPUs)",
        given.device, group->local_rank));
  }
  if (!group && given.gpus > 1) return launch_group(given);
  TrainOptions o = given;
  if (group) o.device = group->local_rank;
  QuietCout quiet(group && group->rank > 0);
  std::optional<Prepared> p = prepare(o);
  if (!p) return 0;
  check_gpus(o, o.device + 1);
  Trainer trainer(o, p->spec, p->rules, p->data, p->identity, group);
  trainer.start(p->saved, p->peak, p->warmup);
  trainer.run();
  return 0;
}

}  // namespace lightseq::lsc
