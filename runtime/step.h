// step.h — the whole-model training step of a spec: embedding → encoder stacks → decoder stacks →
// output projection + cross-entropy → backward → optimizer, as one schedule of the model's layer
// executors over flat arenas, with no host synchronization inside a step.
//
//   auto model = lightseq::CompiledModel::load(spec, {.device = 0});
//   lightseq::TrainStep step(model, {.seed = 1});
//   step.init_parameters(/*seed=*/1);             // or set_parameter(name, ...) per tensor
//   step.set_lr(5e-4f, stream);
//   step.run({.src_tokens = s, .tokens = t, .targets = y, .batch = B, .src_len = S, .len = T},
//            stream);
//   lightseq::StepStats st = step.stats(stream);  // synchronizes: loss, nll, tokens, loss scale
//
// Parameters live in one arena in PyTorch's state_dict layout (param_arena.h: nn.Transformer's
// "encoder.layers.i.*" / "decoder.layers.i.*", "embed_tokens.weight"), their gradients in a second
// one of the same layout, the optimizer's moments (and fp32 master weights for 16-bit models) in
// arenas of the same offsets. Everything that changes from step to step lives in device memory —
// the learning rate, the optimizer's step count and loss scale, the dropout seed and offset — so
// the step is captured as a CUDA graph the second time a shape is seen and replayed from then on
// (the first run of a shape resolves its launches and GEMM heuristics, which capture cannot).
// A shape is (batch, src_len, len): a caller that rounds lengths up to a few buckets and pads
// (padding_idx tokens, ignore_index targets) replays a few graphs.
#pragma once

#include <cuda.h>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "compiler/graph/param_arena.h"
#include "runtime/comm.h"
#include "runtime/model.h"

namespace lightseq {

struct StepOptions {
  uint64_t seed = 0;                // the dropout stream's Philox seed
  std::optional<float> loss_scale;  // the initial loss scale; default 65536 for fp16, else 1
  bool cuda_graphs = true;          // capture each shape's step and replay it
  // Data parallelism (runtime/comm.h): each process of the group runs its own batch, and every
  // step's gradient is the mean over all of the group's batches (their targets counted over the
  // group), summed through NCCL as the backward produces it: each stack layer's span of the
  // gradient arena as soon as its backward has run, beside the following layers' backward (and
  // then its early update), the rest once the backward ends. Every process must run the same
  // steps in the same order, with parameters equal at the start (init_parameters with one seed,
  // or one checkpoint). Give every process the same `seed`: each draws its dropout masks from a
  // seed derived from it and its rank (rank_seed), also after load() of rank 0's checkpoint.
  std::shared_ptr<const Communicator> comm;
};

// One batch, in device memory: int64 token ids, rows batch-major (b · len + t). Padding is the
// embedding's padding_idx in the token streams and the criterion's ignore_index in the targets.
struct StepBatch {
  // [batch, src_len]: the encoder's input in a model with decoder stacks (null otherwise).
  const int64_t* src_tokens = nullptr;
  // [batch, len]: the input of the stack the criterion reads (the decoder's input in an
  // encoder-decoder model, the encoder's in an encoder-only one).
  const int64_t* tokens = nullptr;
  const int64_t* targets = nullptr;  // [batch, len]
  int64_t batch = 0, src_len = 0, len = 0;
  // [batch, len]: the token types of `tokens` (a model with embedding.token_types, BERT's
  // segments); null: every token type 0. A source stream's tokens are type 0.
  const int64_t* token_types = nullptr;
};

// What the last step computed (read back by stats(), which synchronizes).
struct StepStats {
  double loss = 0;       // Σ label-smoothed loss over the counted targets
  double nll = 0;        // Σ negative log-likelihood over them
  int64_t tokens = 0;    // the counted targets (not ignore_index)
  int64_t updates = 0;   // optimizer updates applied so far (skipped fp16 overflows excluded)
  float loss_scale = 1;  // the loss scale after the step
  int64_t skipped_updates = 0;  // steps whose update was skipped (inf/NaN gradients, fp16)
  bool bad_token = false;       // some token id was outside [0, vocab) (its rows were zeros)
  bool bad_target = false;      // some target was outside [0, vocab) and not ignore_index
};

class TrainStep {
 public:
  // Throws Error when the spec cannot train as a whole: no embedding, criterion or optimizer, or
  // stacks in an order the step does not run (encoder stacks, then decoder stacks).
  TrainStep(std::shared_ptr<const CompiledModel> model, const StepOptions& options = {});
  ~TrainStep();
  TrainStep(const TrainStep&) = delete;
  TrainStep& operator=(const TrainStep&) = delete;

  const CompiledModel& model() const { return *model_; }
  const ParamArena& arena() const { return arena_; }
  // Device addresses of the arenas (elements of the model's dtype for params and grads).
  void* params() const;
  void* grads() const;
  // The optimizer's arenas, at the parameter arena's offsets, fp32: the master weights (null for
  // an fp32 model, whose parameters are their own masters) and Adam's two moments.
  void* masters() const;
  void* exp_avg() const;
  void* exp_avg_sq() const;

  // Where the last run() left its results on the device, valid until the next run() of the same
  // shape (the next step on the same stream may read them first, as the Python frontend does):
  // per target row (batch·len of them) the label-smoothed loss and the NLL, 0 on ignored rows,
  // and the count of targets that are not ignore_index (one float). Throws before the first run.
  struct Outputs {
    const float* loss = nullptr;
    const float* nll = nullptr;
    int64_t rows = 0;
    const float* tokens = nullptr;
  };
  Outputs last_outputs() const;

  // Deterministic initialization from `seed`: Xavier-uniform weight matrices, zero biases, unit
  // LayerNorm weights, N(0, hidden^-1/2) token embeddings with a zero padding row, N(0, 0.02)
  // learned positions; master weights copied, moments and the step count zeroed.
  void init_parameters(uint64_t seed);
  // One parameter by its state_dict name, in the model's dtype, from / to host memory (`bytes`
  // must be the tensor's size). set_parameter also resets its fp32 master copy. Synchronous.
  void set_parameter(std::string_view name, const void* host, size_t bytes);
  void get_parameter(std::string_view name, void* host, size_t bytes) const;
  // The gradient of the last step (model dtype), for tests.
  void get_gradient(std::string_view name, void* host, size_t bytes) const;
  const ArenaEntry& entry(std::string_view name) const;  // throws Error listing near names

  // The learning rate the next steps use (device memory, set on `stream`: a replay reads it).
  void set_lr(float lr, CUstream stream);

  // One training step on `stream`: forward, backward and optimizer update. Enqueues only.
  void run(const StepBatch& batch, CUstream stream);
  // The loss of a batch without training (dropout off, nothing updated); synchronizes.
  StepStats evaluate(const StepBatch& batch, CUstream stream);
  // Of the last run(); synchronizes `stream`.
  StepStats stats(CUstream stream) const;
  int64_t steps_run() const { return steps_run_; }
  // How many graphs were captured / replays launched (for tests and `lsc bench`).
  int64_t graphs_captured() const { return graphs_captured_; }
  int64_t graph_replays() const { return graph_replays_; }
  // Whether stack layers' parameters are updated as soon as their backward has run (step.h's
  // early_updates_ below).
  bool early_updates() const { return early_updates_; }

  // Training state (parameters, master weights, moments, optimizer state, the dropout stream's
  // position) as one file, written atomically (temp file, fsync, rename); load() restores it so
  // that training continues where it stopped (bit for bit up to the embedding backward's fp32
  // atomics, whose summation order varies). load() refuses a file of another model.
  void save(const std::filesystem::path& file, CUstream stream) const;
  void load(const std::filesystem::path& file, CUstream stream);

  // The dropout stream's seed this process draws from: options.seed, offset by the rank in a
  // process group (rank 0: options.seed itself).
  uint64_t rank_seed() const;

  struct Bucket;  // one shape's buffers and graph (step.cpp)
  struct Call;    // one layer call's bound arguments (step.cpp)

 private:
  Bucket& bucket_for(const StepBatch& b);
  std::unique_ptr<Bucket> make_bucket(const StepBatch& b, CUstream stream) const;
  void copy_inputs(Bucket& bk, const StepBatch& b, CUstream stream) const;
  StepStats read_stats(const Bucket& bk, CUstream stream) const;
  struct Arenas;
  std::vector<DeviceBuffer*> state_blobs() const;  // what a checkpoint holds, in file order
  void enqueue(Bucket& bk, bool train, CUstream stream);
  void check_batch(const StepBatch& b) const;     // sizes and pointers (a new shape)
  void check_pointers(const StepBatch& b) const;  // every run

  std::shared_ptr<const CompiledModel> model_;
  StepOptions options_;
  ParamArena arena_;
  std::unique_ptr<StreamOrderedAllocator> allocator_;
  std::unique_ptr<Arenas> mem_;
  std::vector<Call> calls_;  // the layer calls of a step, in forward order
  std::map<std::array<int64_t, 3>, std::unique_ptr<Bucket>> buckets_;
  Bucket* last_ = nullptr;
  CUstream capture_stream_ = nullptr;  // where graphs are captured
  int64_t steps_run_ = 0;
  int64_t updates_base_ = 0;  // the optimizer's step count when steps_run_ was 0
  int64_t graphs_captured_ = 0, graph_replays_ = 0;
  // Stack layers' parameters updated as soon as their backward has run (step_enqueue.cpp): with
  // the gradient lane (runtime/grad_lane.h: LIGHTSEQ_GRAD_LANE), unless LIGHTSEQ_EARLY_UPDATES=0
  // or the optimizer needs every gradient first (clipping, fp16 loss scaling).
  bool early_updates_ = false;
  // With a process group: the criterion's forward steps [0, count_steps_) count the targets.
  size_t count_steps_ = 0;
  // Side lanes in use (the gradient lane, a process group): captured by priority (step.cpp).
  bool prioritized_ = false;
};

}  // namespace lightseq
