// launchers.cpp — argument marshalling of each kernel family (docs/kernels.md): turns a
// KernelStep's named tensor bindings into the kernel's parameter list and launch shape, with the
// launch formulas of templates/common/launch.cuh (the same functions the kernels use).
#include <fmt/format.h>

#include <cstring>

#include "compiler/errors.h"
#include "runtime/frame.h"
#include "runtime/module.h"
#include "common/launch.cuh"
#include "common/philox.cuh"

namespace lightseq {

namespace {

// Kernel parameters packed for cuLaunchKernel: each value copied into aligned storage.
class ArgPack {
 public:
  template <typename T>
  void add(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    used_ = (used_ + alignof(T) - 1) / alignof(T) * alignof(T);
    if (used_ + sizeof(T) > sizeof(storage_)) throw InternalError("ArgPack: too many kernel arguments");
    std::memcpy(storage_ + used_, &v, sizeof(T));
    ptrs_.push_back(storage_ + used_);
    used_ += sizeof(T);
  }
  void** get() { return ptrs_.data(); }

 private:
  alignas(16) unsigned char storage_[512];
  size_t used_ = 0;
  std::vector<void*> ptrs_;
};

int64_t targ(const KernelStep& k, size_t i) { return std::stoll(k.kernel.template_args.at(i)); }
bool targ_on(const KernelStep& k, size_t i) {
  const std::string& a = k.kernel.template_args.at(i);
  return a.size() > 3 && a.compare(a.size() - 3, 3, "kOn") == 0;
}

void* arg(const LayerExecutor::Frame& f, const KernelStep& k, const char* name) {
  auto it = k.args.find(name);
  if (it == k.args.end()) return nullptr;
  // Padding masks are optional (null: nothing is padded); every other tensor must have memory.
  if (f.graph->tensor(it->second).type == ElemType::kU8) return f.ptr.at(it->second);
  return f.at(it->second);
}
int arg_id(const KernelStep& k, const char* name) {
  auto it = k.args.find(name);
  if (it == k.args.end()) throw InternalError(fmt::format("kernel {} lacks argument '{}'", k.kernel.label, name));
  return it->second;
}

kern::DropoutArgs dropout_args(const LayerExecutor::Frame& f, const KernelStep& k) {
  if (k.dropout_site < 0) return kern::make_dropout_args(0, 0, 0.0);
  const DropoutConfig& d = f.dropout;
  const double p = k.dropout_which == "attention"    ? d.attention
                   : k.dropout_which == "activation" ? d.activation
                   : k.dropout_which == "hidden"     ? d.hidden
                   : k.dropout_which == "embedding"  ? d.embedding
                                                     : -1.0;
  if (p < 0) throw InternalError(fmt::format("kernel {}: unknown dropout site kind '{}'", k.kernel.label, k.dropout_which));
  return kern::make_dropout_args(d.seed, d.offset + static_cast<uint64_t>(k.dropout_site), p);
}

// The leading dimension (rows) of a 2-D tensor argument.
int64_t rows_of(const LayerExecutor::Frame& f, int id) {
  const Shape& s = f.graph->tensor(id).shape;
  return f.numel(id) / s.back().factor;
}

float* partial_buffer(LayerExecutor::Frame& f, int64_t blocks, int64_t cols) {
  f.temps.emplace_back(*f.allocator, static_cast<size_t>(std::max<int64_t>(1, blocks * cols)) * sizeof(float), f.stream);
  float* p = static_cast<float*>(f.temps.back().get());
  f.partials = p;
  f.partial_blocks = blocks;
  f.partial_stride = cols;
  return p;
}

}  // namespace

void LayerExecutor::accumulate_into(const void* in, void* out, int64_t n, Frame& f) const {
  const std::string label = fmt::format("accumulate:{}", to_string(precision_));
  auto it = kernels_.find(label);
  if (it == kernels_.end()) throw InternalError(fmt::format("executor: support kernel '{}' was not loaded", label));
  ArgPack a;
  a.add(in);
  a.add(out);
  a.add(n);
  const kern::GridDim grid = kern::accumulate_grid(n);
  if (grid.x == 0) return;
  launch(it->second, Dim3{grid.x, grid.y, grid.z}, Dim3{static_cast<unsigned>(kern::accumulate_block()), 1, 1},
         0, f.stream, a.get(), label);
}

void LayerExecutor::run_kernel(const KernelStep& k, Frame& f) const {
  const std::string& name = k.kernel.kernel;
  const int eb = element_bytes(precision_);
  const CUfunction fn = kernels_.at(k.kernel.label);
  ArgPack a;
  kern::GridDim grid{0, 1, 1};
  int block = 0;
  if (name == "ln_fwd_kernel") {
    const int64_t hidden = targ(k, 1), vec = targ(k, 2);
    const int64_t rows = rows_of(f, arg_id(k, "residual"));
    for (const char* n : {"branch", "bias", "residual", "gamma", "beta", "sum_out", "norm_out", "mean", "rstd"}) {
      a.add(arg(f, k, n));
    }
    a.add(rows);
    a.add(static_cast<float>(k.eps));
    a.add(dropout_args(f, k));
    grid = kern::ln_grid(rows, hidden, static_cast<int>(vec));
    block = kern::ln_block(hidden, static_cast<int>(vec));
  } else if (name == "ln_bwd_kernel") {
    const int64_t hidden = targ(k, 1), vec = targ(k, 2);
    const int64_t rows = rows_of(f, arg_id(k, "grad_out"));
    const int64_t cols = kern::ln_bwd_partial_cols(hidden, targ_on(k, 3) ? kern::Norm::kOn : kern::Norm::kOff,
                                                   targ_on(k, 5) ? kern::BranchOut::kOn : kern::BranchOut::kOff);
    float* partials = cols > 0 ? partial_buffer(f, kern::ln_bwd_blocks(rows), cols) : nullptr;
    f.partial_width = hidden;
    for (const char* n : {"grad_out", "z", "mean", "rstd", "gamma", "grad_residual", "grad_z", "grad_branch"}) {
      a.add(arg(f, k, n));
    }
    a.add(partials);
    a.add(rows);
    a.add(dropout_args(f, k));
    grid = kern::ln_bwd_grid(rows);
    block = kern::ln_bwd_block(hidden, static_cast<int>(vec));
  } else if (name == "bias_act_dropout_fwd_kernel") {
    const int64_t cols = targ(k, 1), vec = targ(k, 2);
    const int64_t rows = rows_of(f, arg_id(k, "x"));
    for (const char* n : {"x", "bias", "out"}) a.add(arg(f, k, n));
    a.add(rows);
    a.add(dropout_args(f, k));
    grid = kern::bad_fwd_grid(rows, cols, static_cast<int>(vec));
    block = kern::bad_fwd_block();
  } else if (name == "bias_act_dropout_bwd_kernel") {
    const int64_t cols = targ(k, 1), vec = targ(k, 2);
    const int64_t rows = rows_of(f, arg_id(k, "x"));
    float* partials = partial_buffer(f, kern::bad_bwd_blocks(rows), cols);
    f.partial_width = cols;
    for (const char* n : {"grad_out", "x", "bias", "grad_x"}) a.add(arg(f, k, n));
    a.add(partials);
    a.add(rows);
    a.add(dropout_args(f, k));
    grid = kern::bad_bwd_grid(rows, cols, static_cast<int>(vec));
    block = kern::bad_bwd_block(cols, static_cast<int>(vec));
  } else if (name == "split_heads_kernel") {
    const int64_t hidden = targ(k, 1), heads = targ(k, 2), parts = targ(k, 3);
    const Shape& out = f.graph->tensor(arg_id(k, "out")).shape;  // [parts, B, heads, seq, d]
    const int64_t seq = out[3].eval(f.shape.batch, f.shape.seq, f.shape.src_seq);
    for (const char* n : {"in", "bias", "out"}) a.add(arg(f, k, n));
    a.add(f.shape.batch);
    a.add(seq);
    grid = kern::split_heads_grid(f.shape.batch * seq, hidden, heads, static_cast<int>(parts), eb);
    block = kern::split_heads_block();
  } else if (name == "merge_heads_kernel") {
    const int64_t hidden = targ(k, 1), heads = targ(k, 2), parts = targ(k, 3);
    const Shape& in = f.graph->tensor(arg_id(k, "in")).shape;
    const int64_t seq = in[3].eval(f.shape.batch, f.shape.seq, f.shape.src_seq);
    const int64_t rows = f.shape.batch * seq;
    float* partials = targ_on(k, 4) ? partial_buffer(f, kern::merge_blocks(rows), parts * hidden) : nullptr;
    f.partial_width = parts * hidden;
    for (const char* n : {"in", "out"}) a.add(arg(f, k, n));
    a.add(partials);
    a.add(f.shape.batch);
    a.add(seq);
    grid = kern::merge_grid(rows, hidden, heads, static_cast<int>(parts), eb);
    block = kern::merge_block(hidden, heads, static_cast<int>(parts), eb);
  } else if (name == "attn_softmax_fwd_kernel") {
    const int threads = static_cast<int>(targ(k, 1));
    const Shape& s = f.graph->tensor(arg_id(k, "probs")).shape;  // [B, heads, q, k]
    const int64_t heads = s[1].factor;
    const int64_t q = s[2].eval(f.shape.batch, f.shape.seq, f.shape.src_seq);
    const int64_t kl = s[3].eval(f.shape.batch, f.shape.seq, f.shape.src_seq);
    for (const char* n : {"scores", "probs", "probs_dropped", "key_padding"}) a.add(arg(f, k, n));
    a.add(f.shape.batch);
    a.add(heads);
    a.add(q);
    a.add(kl);
    a.add(dropout_args(f, k));
    grid = kern::softmax_grid(f.shape.batch * heads * q, kl, threads, eb);
    block = kern::softmax_block(threads);
  } else if (name == "attn_softmax_bwd_kernel") {
    const int threads = static_cast<int>(targ(k, 1));
    const Shape& s = f.graph->tensor(arg_id(k, "probs")).shape;
    const int64_t kl = s[3].eval(f.shape.batch, f.shape.seq, f.shape.src_seq);
    const int64_t rows = f.numel(arg_id(k, "probs")) / kl;
    for (const char* n : {"grad_dropped", "probs", "grad_scores"}) a.add(arg(f, k, n));
    a.add(rows);
    a.add(kl);
    a.add(dropout_args(f, k));
    grid = kern::softmax_grid(rows, kl, threads, eb);
    block = kern::softmax_block(threads);
  } else if (name == "column_sum_kernel") {
    if (!f.partials) throw InternalError(fmt::format("{}: column_sum without partials", k.kernel.label));
    const int64_t cols = f.partial_width;
    a.add(f.partials);
    a.add(f.partial_blocks);
    a.add(f.partial_stride);
    a.add(static_cast<int64_t>(k.partial_block) * cols);
    a.add(cols);
    a.add(arg(f, k, "out"));
    a.add(f.mode == GradMode::kAccumulate ? kern::Accumulate::kAdd : kern::Accumulate::kOverwrite);
    grid = kern::column_sum_grid(cols);
    block = kern::column_sum_block();
  } else {
    throw Error(fmt::format("kernel '{}' ({}) has no launcher in this runtime yet", k.kernel.label, name));
  }
  if (grid.x == 0) return;  // nothing to do (zero rows)
  launch(fn, Dim3{grid.x, grid.y, grid.z}, Dim3{static_cast<unsigned>(block), 1, 1}, 0, f.stream, a.get(),
         k.kernel.label);
}

}  // namespace lightseq
