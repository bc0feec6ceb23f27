#include "runtime/executor.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

#include "compiler/errors.h"
#include "runtime/cuda_check.h"
#include "runtime/driver.h"
#include "runtime/frame.h"

namespace lightseq {

namespace {

int elem_bytes(const Tensor& t, Precision p) {
  switch (t.type) {
    case ElemType::kModel: return element_bytes(p);
    case ElemType::kF32: return 4;
    case ElemType::kI64: return 8;
    case ElemType::kU8: return 1;
  }
  throw InternalError("unknown ElemType");
}

bool given_role(TensorRole r) {
  return r == TensorRole::kInput || r == TensorRole::kParam || r == TensorRole::kGradInput ||
         r == TensorRole::kParamGrad || r == TensorRole::kOutput || r == TensorRole::kGradOutput;
}

void step_tensors(const Step& st, std::set<int>* out) {
  if (const auto* g = std::get_if<GemmStep>(&st)) {
    for (int id : {g->a, g->b, g->c, g->d, g->bias, g->aux, g->bias_grad}) {
      if (id >= 0) out->insert(id);
    }
  } else {
    for (const auto& [name, id] : std::get<KernelStep>(st).args) out->insert(id);
  }
}

}  // namespace

LayerExecutor::LayerExecutor(const LayerPlan& plan, Precision precision, KernelTable kernels,
                             GemmRunner* gemm)
    : plan_(plan), precision_(precision), kernels_(std::move(kernels)), gemm_(gemm) {
  relu_aux_.assign(plan_.layer.graph.tensors().size(), false);
  for (const Step& st : plan_.forward) {
    if (const auto* g = std::get_if<GemmStep>(&st); g && g->epilogue == Epilogue::kReluAuxBias) {
      relu_aux_[g->aux] = true;
    }
  }
  for (const auto* steps : {&plan_.forward, &plan_.backward}) {
    for (const Step& st : *steps) {
      if (const auto* k = std::get_if<KernelStep>(&st); k && !kernels_.count(k->kernel.label)) {
        throw InternalError(fmt::format("executor: kernel '{}' was not loaded", k->kernel.label));
      }
    }
  }
}

std::vector<std::string> LayerExecutor::required_bindings(bool backward) const {
  const Graph& g = plan_.layer.graph;
  std::set<int> used;
  for (const Step& st : backward ? plan_.backward : plan_.forward) step_tensors(st, &used);
  std::vector<std::string> out;
  for (int id : used) {
    const Tensor& t = g.tensor(id);
    if (t.view_of >= 0) continue;
    const bool saved = backward && std::find(plan_.saved.begin(), plan_.saved.end(), id) != plan_.saved.end();
    if (given_role(t.role) && !(saved && t.role != TensorRole::kInput)) out.push_back(t.name);
  }
  return out;
}

namespace {

// Binds caller pointers, checking presence and alignment.
void bind_given(const Graph& g, const std::set<int>& used, const Bindings& given,
                std::vector<void*>* ptr, const std::string& layer, const std::set<int>& from_saved) {
  std::vector<std::string> missing;
  for (int id : used) {
    const Tensor& t = g.tensor(id);
    if (t.view_of >= 0 || !given_role(t.role) || from_saved.count(id)) continue;
    auto it = given.find(t.name);
    if (it == given.end() || it->second == nullptr) {
      // Padding masks are optional: null means no position is padded.
      if (t.type != ElemType::kU8) missing.push_back(t.name);
      continue;
    }
    if (reinterpret_cast<uintptr_t>(it->second) % 16 != 0) {
      throw Error(fmt::format("{}: '{}' at {} is not 16-byte aligned; lightseq's kernels use 16-byte "
                              "vector accesses (allocate with cudaMalloc/torch, and do not pass a view "
                              "at an odd offset)", layer, t.name, it->second));
    }
    (*ptr)[id] = it->second;
  }
  if (!missing.empty()) {
    throw Error(fmt::format("{}: missing or null tensor(s): {}", layer, fmt::join(missing, ", ")));
  }
}

}  // namespace

// Memory for every tensor in `used` that nothing bound: those in `keep` go to `kept` (they outlive
// the call), the rest to the frame. A view points into its parent, allocated whole if needed.
void LayerExecutor::allocate_unbound(const std::set<int>& used, const std::set<int>& keep,
                                     std::map<int, DeviceBuffer>* kept, Frame& f) const {
  const Graph& g = *f.graph;
  auto allocate = [&](int id) {
    const Tensor& t = g.tensor(id);
    int64_t bytes = f.numel(id) * elem_bytes(t, precision_);
    if (relu_aux_[id]) {
      const int64_t n = t.shape.back().factor;
      bytes = relu_mask_bytes(f.numel(id) / n, n);
    }
    DeviceBuffer buf(*f.allocator, static_cast<size_t>(bytes), f.stream);
    f.ptr[id] = buf.get();
    (keep.count(id) ? *kept : f.owned).emplace(id, std::move(buf));
  };
  for (int id : used) {
    const Tensor& t = g.tensor(id);
    if (f.ptr[id] || given_role(t.role)) continue;
    if (t.view_of < 0) {
      allocate(id);
      continue;
    }
    if (!f.ptr[t.view_of]) allocate(t.view_of);
    f.ptr[id] = static_cast<char*>(f.ptr[t.view_of]) + t.part * f.numel(id) * elem_bytes(t, precision_);
  }
}

SavedActivations LayerExecutor::forward(const Bindings& given, const RunShape& shape,
                                        const DropoutConfig& dropout, Allocator& allocator,
                                        CUstream stream) const {
  const Graph& g = plan_.layer.graph;
  if (shape.batch <= 0 || shape.seq <= 0) {
    throw Error(fmt::format("{}: batch ({}) and sequence length ({}) must be positive",
                            plan_.layer.name, shape.batch, shape.seq));
  }
  Frame f(&g, precision_, shape, dropout, GradMode::kOverwrite, &allocator, stream);
  std::set<int> used;
  for (const Step& st : plan_.forward) step_tensors(st, &used);
  bind_given(g, used, given, &f.ptr, plan_.layer.name, {});

  SavedActivations saved;
  saved.shape_ = shape;
  saved.dropout_ = dropout;
  allocate_unbound(used, std::set<int>(plan_.saved.begin(), plan_.saved.end()), &saved.buffers_, f);
  // A padding mask the caller left out means "nothing is padded": the kernels read an all-zero
  // mask (a few bytes per sequence) rather than branching on a null pointer.
  for (int id : used) {
    const Tensor& t = g.tensor(id);
    if (f.ptr[id] || t.type != ElemType::kU8 || t.role != TensorRole::kInput) continue;
    DeviceBuffer zeros(allocator, static_cast<size_t>(f.numel(id)), stream);
    LIGHTSEQ_CU_CHECK(driver().cuMemsetD8Async(zeros.device_ptr(), 0, zeros.bytes(), stream));
    f.ptr[id] = zeros.get();
    f.owned.emplace(id, std::move(zeros));
  }
  for (int id : plan_.saved) {
    if (g.tensor(id).role == TensorRole::kInput) saved.inputs_[id] = f.ptr[id];
  }
  run_steps(plan_.forward, f);
  return saved;
}

void LayerExecutor::backward(const Bindings& given, const SavedActivations& saved, GradMode mode,
                             Allocator& allocator, CUstream stream) const {
  const Graph& g = plan_.layer.graph;
  if (saved.buffers_.empty() && saved.inputs_.empty() && !plan_.saved.empty()) {
    throw Error(fmt::format("{}: backward needs the SavedActivations of a forward of this layer", plan_.layer.name));
  }
  Frame f(&g, precision_, saved.shape_, saved.dropout_, mode, &allocator, stream);
  std::set<int> used, from_saved;
  for (const Step& st : plan_.backward) step_tensors(st, &used);
  for (const auto& [id, buf] : saved.buffers_) f.ptr[id] = const_cast<void*>(buf.get()), from_saved.insert(id);
  for (const auto& [id, p] : saved.inputs_) f.ptr[id] = const_cast<void*>(p), from_saved.insert(id);
  // Inputs the backward reads come from the forward; bind the rest from `given`.
  bind_given(g, used, given, &f.ptr, plan_.layer.name, from_saved);
  allocate_unbound(used, {}, nullptr, f);
  run_steps(plan_.backward, f);
}

void LayerExecutor::run_gemm(const GemmStep& g, Frame& f) const {
  const Graph& graph = *f.graph;
  const OpAttrs& at = g.attrs;
  auto ev = [&](const Dim& d) { return d.eval(f.shape.batch, f.shape.seq, f.shape.src_seq); };
  GemmArgs a;
  a.name = g.name;
  a.dtype = precision_;
  a.trans_a = at.trans_a;
  a.trans_b = at.trans_b;
  a.m = ev(at.m);
  a.n = ev(at.n);
  a.k = ev(at.k);
  a.batch = ev(at.batch);
  a.alpha = static_cast<float>(at.alpha);
  // Contiguous row-major operands; a weight (as many elements as one batch's operand) is shared.
  a.a = f.at(g.a);
  a.lda = at.trans_a == Transpose::kYes ? a.m : a.k;
  a.stride_a = a.batch > 1 && f.numel(g.a) == a.batch * a.m * a.k ? a.m * a.k : 0;
  a.b = f.at(g.b);
  a.ldb = at.trans_b == Transpose::kYes ? a.k : a.n;
  a.stride_b = a.batch > 1 && f.numel(g.b) == a.batch * a.k * a.n ? a.k * a.n : 0;
  a.d = f.at(g.d);
  a.ldd = a.n;
  a.stride_d = a.batch > 1 ? a.m * a.n : 0;
  const bool param_grad = graph.tensor(g.d).role == TensorRole::kParamGrad;
  if (g.c >= 0) {
    a.c = f.at(g.c);
    a.beta = 1.0f;
  } else if (g.accumulate || (param_grad && f.mode == GradMode::kAccumulate)) {
    a.c = a.d;  // D += A·B
    a.beta = 1.0f;
  }
  if (a.c) {
    a.ldc = a.ldd;
    a.stride_c = a.stride_d;
  }
  a.epilogue = g.epilogue;
  if (g.bias >= 0) a.bias = f.at(g.bias);
  if (g.aux >= 0) {
    a.aux = f.at(g.aux);
    a.aux_ld = relu_aux_[g.aux] ? relu_mask_ld(a.n) : gelu_aux_ld(a.n);
  }
  DeviceBuffer bias_grad_temp;
  if (g.bias_grad >= 0) {
    if (f.mode == GradMode::kAccumulate) {
      // cuBLASLt overwrites a bias gradient: write it aside, then add it in.
      bias_grad_temp = DeviceBuffer(*f.allocator, static_cast<size_t>(f.numel(g.bias_grad)) * element_bytes(precision_), f.stream);
      a.bias_grad = bias_grad_temp.get();
    } else {
      a.bias_grad = f.at(g.bias_grad);
    }
  }
  gemm_->run(a, f.stream, *f.allocator);
  if (bias_grad_temp) accumulate_into(bias_grad_temp.get(), f.at(g.bias_grad), f.numel(g.bias_grad), f);
}

void LayerExecutor::run_steps(const std::vector<Step>& steps, Frame& f) const {
  for (const Step& st : steps) {
    if (const auto* g = std::get_if<GemmStep>(&st)) {
      run_gemm(*g, f);
    } else {
      run_kernel(std::get<KernelStep>(st), f);
    }
  }
}

}  // namespace lightseq
