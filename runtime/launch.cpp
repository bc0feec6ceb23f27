#include "runtime/launch.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/philox.cuh"
#include "compiler/errors.h"
#include "runtime/cuda_check.h"
#include "runtime/driver.h"
#include "runtime/frame.h"

namespace lightseq {

namespace {

struct Layout {
  size_t bytes, align;
};

Layout layout_of(sig::CType c) {
  switch (c) {
    case sig::CType::kI64:
      return {8, 8};
    case sig::CType::kI32:
    case sig::CType::kF32:
    case sig::CType::kAccumulate:
      return {4, 4};
    case sig::CType::kDropoutArgs:
      return {sizeof(kern::DropoutArgs), alignof(kern::DropoutArgs)};
    default:
      if (sig::is_pointer(c)) return {sizeof(void*), alignof(void*)};
      throw Error(fmt::format("lightseq's runtime cannot pack a parameter of C type {} yet",
                              static_cast<int>(c)));
  }
}

// The element type a pointer parameter's tensor must have (kModel for T).
ElemType elem_of(sig::CType c) {
  switch (c) {
    case sig::CType::kTPtr:
    case sig::CType::kConstTPtr:
      return ElemType::kModel;
    case sig::CType::kF32Ptr:
    case sig::CType::kConstF32Ptr:
      return ElemType::kF32;
    case sig::CType::kConstI64Ptr:
      return ElemType::kI64;
    case sig::CType::kConstU8Ptr:
    case sig::CType::kU8Ptr:
      return ElemType::kU8;
    case sig::CType::kI32Ptr:
    case sig::CType::kConstI32Ptr:
      return ElemType::kI32;
    case sig::CType::kOptimStatePtr:
    case sig::CType::kConstOptimStatePtr:
      return ElemType::kOptimState;
    default:
      throw InternalError("elem_of: not a tensor pointer type");
  }
}

template <typename V>
void put(ResolvedLaunch& r, int param, const V& v) {
  std::memcpy(r.storage.data() + r.offsets[param], &v, sizeof(V));
}

// The element count of a tensor list's slots at `shape` (all bound slots agree).
int64_t list_numel(const KernelStep& step, int param, const Graph& graph, const RunShape& shape) {
  const KernelArg& a = step.args.at(param);
  int64_t n = -1;
  for (int id : a.list) {
    if (id < 0) continue;
    const int64_t m =
        shape_numel(graph.tensor(id).shape).eval(shape.batch, shape.seq, shape.src_seq);
    if (n >= 0 && m != n) {
      throw InternalError(
          fmt::format("{}: the tensors of list '{}' differ in size ({} and {} elements)",
                      step.kernel.label, step.kernel.sig->params[param].name, n, m));
    }
    n = m;
  }
  if (n < 0)
    throw InternalError(fmt::format("{}: tensor list with no tensor bound", step.kernel.label));
  return n;
}

}  // namespace

ChunkTables::~ChunkTables() {
  const DriverApi* d = driver_library();
  for (auto& t : tables_) {
    if (d) d->cuMemFree(t.second);  // errors ignored: a destructor, possibly at process exit
  }
}

CUdeviceptr ChunkTables::get(const std::vector<void*>& bases, const std::vector<int>& slot_bytes,
                             int64_t numel, int64_t chunk_elems, CUstream stream,
                             const std::string& label) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& t : tables_) {
    if (t.first == bases) return t.second;
  }
  CUstreamCaptureStatus capture = CU_STREAM_CAPTURE_STATUS_NONE;
  LIGHTSEQ_CU_CHECK(driver().cuStreamIsCapturing(stream, &capture));
  if (capture != CU_STREAM_CAPTURE_STATUS_NONE) {
    throw Error(fmt::format(
        "{}: its chunk table for these tensors is built on first use, which cannot happen "
        "during CUDA graph capture: run the step once with the same tensors before capturing it",
        label));
  }
  const size_t n_slots = bases.size();
  const int64_t n_chunks = (numel + chunk_elems - 1) / chunk_elems;
  std::vector<uint64_t> host(static_cast<size_t>(n_chunks) * (n_slots + 1));
  for (int64_t c = 0; c < n_chunks; ++c) {
    uint64_t* e = host.data() + c * (n_slots + 1);
    for (size_t j = 0; j < n_slots; ++j) {
      e[j] = bases[j] ? reinterpret_cast<uint64_t>(bases[j]) +
                            static_cast<uint64_t>(c * chunk_elems * slot_bytes[j])
                      : 0;
    }
    e[n_slots] = static_cast<uint64_t>(std::min(chunk_elems, numel - c * chunk_elems));
  }
  if (tables_.size() >= kMaxTables) {
    // The oldest table may be in use by queued work: wait for this stream before freeing it.
    LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
    LIGHTSEQ_CU_CHECK(driver().cuMemFree(tables_.front().second));
    tables_.erase(tables_.begin());
  }
  CUdeviceptr dev = 0;
  const size_t bytes = std::max<size_t>(1, host.size() * sizeof(uint64_t));
  LIGHTSEQ_CU_CHECK(driver().cuMemAlloc(&dev, bytes));
  if (!host.empty()) {
    const CUresult r = driver().cuMemcpyHtoD(dev, host.data(), host.size() * sizeof(uint64_t));
    if (r != CUDA_SUCCESS) {
      driver().cuMemFree(dev);
      LIGHTSEQ_CU_CHECK(r);
    }
  }
  tables_.emplace_back(bases, dev);
  return dev;
}

double dropout_probability(const DropoutConfig& d, DropoutKind kind) {
  switch (kind) {
    case DropoutKind::kAttention:
      return d.attention;
    case DropoutKind::kActivation:
      return d.activation;
    case DropoutKind::kHidden:
      return d.hidden;
    case DropoutKind::kEmbedding:
      return d.embedding;
    case DropoutKind::kAttentionOutput:
      return d.attention_output;
  }
  throw InternalError("unknown DropoutKind");
}

ResolvedLaunch resolve_launch(const KernelStep& step, CUfunction fn, const Graph& graph,
                              const RunShape& shape, ScratchExtents& scratch) {
  const sig::Kernel& k = *step.kernel.sig;
  const std::string& label = step.kernel.label;
  if (static_cast<int>(step.args.size()) != k.n_params) {
    throw InternalError(fmt::format("{}: the step binds {} parameters, the signature has {}", label,
                                    step.args.size(), k.n_params));
  }
  ResolvedLaunch r;
  r.fn = fn;
  r.step = &step;
  sig::Values v;
  for (int i = 0; i < k.n_tparams; ++i) v.t[i] = step.kernel.values.at(i);
  // Layout and scalar values first: extents and the launch shape read the scalars.
  size_t used = 0;
  for (int i = 0; i < k.n_params; ++i) {
    const sig::Param& p = k.params[i];
    const Layout l = layout_of(p.type);
    used = (used + l.align - 1) / l.align * l.align;
    if (used + l.bytes > r.storage.size())
      throw InternalError(fmt::format("{}: arguments exceed 512 bytes", label));
    r.offsets.push_back(static_cast<uint16_t>(used));
    used += l.bytes;
    if (p.role != sig::Role::kScalar) continue;
    const ScalarArg& s = step.args[i].scalar;
    double value = 0;
    switch (s.kind) {
      case ScalarArg::Kind::kDim:
        value = static_cast<double>(s.dim.eval(shape.batch, shape.seq, shape.src_seq));
        break;
      case ScalarArg::Kind::kConst:
        value = s.value;
        break;
      case ScalarArg::Kind::kRowsOf:
      case ScalarArg::Kind::kColsOf: {
        const sig::Extent& e = scratch.of.at(s.tensor);
        if (e.rows < 0) {
          throw InternalError(
              fmt::format("{}: '{}' reads the extent of '{}' before a kernel sized it", label,
                          p.name, graph.tensor(s.tensor).name));
        }
        value = static_cast<double>(s.kind == ScalarArg::Kind::kRowsOf ? e.rows : e.cols);
        break;
      }
      case ScalarArg::Kind::kChunksOf: {
        const sig::TensorList* list = k.params[s.tensor].list;
        if (!list)
          throw InternalError(
              fmt::format("{}: '{}' counts the chunks of a non-list", label, p.name));
        const int64_t n = list_numel(step, s.tensor, graph, shape);
        value = static_cast<double>((n + list->chunk_elems - 1) / list->chunk_elems);
        break;
      }
      case ScalarArg::Kind::kUnset:
        throw InternalError(fmt::format("{}: scalar '{}' unset", label, p.name));
    }
    v.f[i] = value;
    v.i[i] = static_cast<int64_t>(std::llround(value));
    if (p.type == sig::CType::kF32) {
      put(r, i, static_cast<float>(value));
    } else if (p.type == sig::CType::kI32) {
      put(r, i, static_cast<int32_t>(v.i[i]));
    } else {
      put(r, i, v.i[i]);
    }
  }
  for (int i = 0; i < k.n_params; ++i) {
    const sig::Param& p = k.params[i];
    const KernelArg& a = step.args[i];
    switch (p.role) {
      case sig::Role::kScalar:
        break;
      case sig::Role::kDropout:
        if (a.dropout_site >= 0) {
          r.dropouts.push_back({r.offsets[i], a.dropout_site, a.dropout_kind});
        } else {
          put(r, i, kern::make_dropout_args(0, 0, 0.0));
        }
        break;
      case sig::Role::kGradMode:
        r.grad_modes.push_back(r.offsets[i]);
        break;
      case sig::Role::kTensorList: {
        ResolvedLaunch::List list;
        list.offset = r.offsets[i];
        list.slots = a.list;
        list.numel = list_numel(step, i, graph, shape);
        list.chunk_elems = p.list->chunk_elems;
        for (int j = 0; j < p.list->n_slots; ++j) {
          const sig::ListSlot& ls = p.list->slots[j];
          const int id = list.slots.at(j);
          if (id >= 0 && graph.tensor(id).type != elem_of(ls.type)) {
            throw InternalError(
                fmt::format("{}: slot '{}.{}' is bound to '{}', a tensor of another element type",
                            label, p.name, ls.name, graph.tensor(id).name));
          }
          list.slot_bytes.push_back(
              id >= 0 ? elem_bytes(graph.tensor(id).type, step.kernel.precision) : 0);
        }
        list.tables = std::make_shared<ChunkTables>();
        r.lists.push_back(std::move(list));
        break;
      }
      default: {
        if (a.tensor < 0) {
          put(r, i, static_cast<void*>(nullptr));
          break;
        }
        const Tensor& t = graph.tensor(a.tensor);
        if (t.type != elem_of(p.type)) {
          throw InternalError(
              fmt::format("{}: '{}' is bound to '{}', a tensor of another element type", label,
                          p.name, t.name));
        }
        r.pointers.push_back({r.offsets[i], a.tensor, p.nullable == sig::Nullable::kYes});
        if (p.role == sig::Role::kScratch) {
          if (p.extent) scratch.of.at(a.tensor) = p.extent(v);
          if (p.init == sig::ScratchInit::kZero) r.zero_first.push_back(a.tensor);
        }
      }
    }
  }
  const sig::Launch l = k.launch(v);
  r.grid = Dim3{l.grid.x, l.grid.y, l.grid.z};
  r.block = Dim3{static_cast<unsigned>(l.block), 1, 1};
  r.smem_bytes = static_cast<unsigned>(l.smem_bytes);
  r.empty = l.grid.x == 0 || l.grid.y == 0 || l.grid.z == 0;
  return r;
}

void enqueue(const ResolvedLaunch& r, const LayerExecutor::Frame& f) {
  if (r.empty) return;
  alignas(16) std::array<unsigned char, 512> storage = r.storage;
  for (const auto& p : r.pointers) {
    void* ptr = p.nullable ? f.ptr.at(p.tensor) : f.at(p.tensor);
    std::memcpy(storage.data() + p.offset, &ptr, sizeof(void*));
  }
  for (const auto& d : r.dropouts) {
    kern::DropoutArgs a =
        kern::make_dropout_args(f.dropout.seed, f.dropout.offset + static_cast<uint64_t>(d.site),
                                dropout_probability(f.dropout, d.kind));
    a.seed_ptr = f.dropout.seed_ptr;
    a.offset_ptr = f.dropout.offset_ptr;
    std::memcpy(storage.data() + d.offset, &a, sizeof(a));
  }
  const kern::Accumulate acc =
      f.mode == GradMode::kAccumulate ? kern::Accumulate::kAdd : kern::Accumulate::kOverwrite;
  for (uint16_t off : r.grad_modes) std::memcpy(storage.data() + off, &acc, sizeof(acc));
  for (const auto& l : r.lists) {
    std::vector<void*> bases;
    for (int id : l.slots) bases.push_back(id >= 0 ? f.at(id) : nullptr);
    const CUdeviceptr table =
        l.tables->get(bases, l.slot_bytes, l.numel, l.chunk_elems, f.stream, r.step->kernel.label);
    std::memcpy(storage.data() + l.offset, &table, sizeof(table));
  }
  for (int id : r.zero_first) {
    LIGHTSEQ_CU_CHECK(driver().cuMemsetD8Async(reinterpret_cast<CUdeviceptr>(f.at(id)), 0,
                                               static_cast<size_t>(f.bytes(id)), f.stream));
  }
  std::array<void*, sig::kMaxParams> args{};
  for (size_t i = 0; i < r.offsets.size(); ++i) args[i] = storage.data() + r.offsets[i];
  launch(r.fn, r.grid, r.block, r.smem_bytes, f.stream, args.data(), r.step->kernel.label);
}

}  // namespace lightseq
