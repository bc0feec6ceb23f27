#include "runtime/launch.h"

#include <fmt/format.h>

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
    case sig::CType::kI64: return {8, 8};
    case sig::CType::kI32:
    case sig::CType::kF32:
    case sig::CType::kAccumulate: return {4, 4};
    case sig::CType::kDropoutArgs: return {sizeof(kern::DropoutArgs), alignof(kern::DropoutArgs)};
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
    case sig::CType::kConstTPtr: return ElemType::kModel;
    case sig::CType::kF32Ptr:
    case sig::CType::kConstF32Ptr: return ElemType::kF32;
    case sig::CType::kConstI64Ptr: return ElemType::kI64;
    case sig::CType::kConstU8Ptr: return ElemType::kU8;
    case sig::CType::kI32Ptr: return ElemType::kI32;
    default: throw InternalError("elem_of: not a tensor pointer type");
  }
}

template <typename V>
void put(ResolvedLaunch& r, int param, const V& v) {
  std::memcpy(r.storage.data() + r.offsets[param], &v, sizeof(V));
}

}  // namespace

double dropout_probability(const DropoutConfig& d, DropoutKind kind) {
  switch (kind) {
    case DropoutKind::kAttention: return d.attention;
    case DropoutKind::kActivation: return d.activation;
    case DropoutKind::kHidden: return d.hidden;
    case DropoutKind::kEmbedding: return d.embedding;
  }
  throw InternalError("unknown DropoutKind");
}

ResolvedLaunch resolve_launch(const KernelStep& step, CUfunction fn, const Graph& graph, const RunShape& shape,
                              ScratchExtents& scratch) {
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
    if (p.role == sig::Role::kTensorList) {
      throw Error(fmt::format("kernel {}: its parameter '{}' is a tensor list, which lightseq's runtime "
                              "cannot launch yet", label, p.name));
    }
    const Layout l = layout_of(p.type);
    used = (used + l.align - 1) / l.align * l.align;
    if (used + l.bytes > r.storage.size()) throw InternalError(fmt::format("{}: arguments exceed 512 bytes", label));
    r.offsets.push_back(static_cast<uint16_t>(used));
    used += l.bytes;
    if (p.role != sig::Role::kScalar) continue;
    const ScalarArg& s = step.args[i].scalar;
    double value = 0;
    switch (s.kind) {
      case ScalarArg::Kind::kDim: value = static_cast<double>(s.dim.eval(shape.batch, shape.seq, shape.src_seq)); break;
      case ScalarArg::Kind::kConst: value = s.value; break;
      case ScalarArg::Kind::kRowsOf:
      case ScalarArg::Kind::kColsOf: {
        const sig::Extent& e = scratch.of.at(s.tensor);
        if (e.rows < 0) {
          throw InternalError(fmt::format("{}: '{}' reads the extent of '{}' before a kernel sized it", label,
                                          p.name, graph.tensor(s.tensor).name));
        }
        value = static_cast<double>(s.kind == ScalarArg::Kind::kRowsOf ? e.rows : e.cols);
        break;
      }
      case ScalarArg::Kind::kUnset: throw InternalError(fmt::format("{}: scalar '{}' unset", label, p.name));
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
      case sig::Role::kScalar: break;
      case sig::Role::kDropout:
        if (a.dropout_site >= 0) {
          r.dropouts.push_back({r.offsets[i], a.dropout_site, a.dropout_kind});
        } else {
          put(r, i, kern::make_dropout_args(0, 0, 0.0));
        }
        break;
      case sig::Role::kGradMode: r.grad_modes.push_back(r.offsets[i]); break;
      default: {
        if (a.tensor < 0) {
          put(r, i, static_cast<void*>(nullptr));
          break;
        }
        const Tensor& t = graph.tensor(a.tensor);
        if (t.type != elem_of(p.type)) {
          throw InternalError(fmt::format("{}: '{}' is bound to '{}', a tensor of another element type", label,
                                          p.name, t.name));
        }
        r.pointers.push_back({r.offsets[i], a.tensor});
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
    void* ptr = f.at(p.tensor);
    std::memcpy(storage.data() + p.offset, &ptr, sizeof(void*));
  }
  for (const auto& d : r.dropouts) {
    const kern::DropoutArgs a = kern::make_dropout_args(f.dropout.seed, f.dropout.offset + static_cast<uint64_t>(d.site),
                                                        dropout_probability(f.dropout, d.kind));
    std::memcpy(storage.data() + d.offset, &a, sizeof(a));
  }
  const kern::Accumulate acc = f.mode == GradMode::kAccumulate ? kern::Accumulate::kAdd : kern::Accumulate::kOverwrite;
  for (uint16_t off : r.grad_modes) std::memcpy(storage.data() + off, &acc, sizeof(acc));
  for (int id : r.zero_first) {
    LIGHTSEQ_CU_CHECK(driver().cuMemsetD8Async(reinterpret_cast<CUdeviceptr>(f.at(id)), 0,
                                               static_cast<size_t>(f.bytes(id)), f.stream));
  }
  std::array<void*, sig::kMaxParams> args{};
  for (size_t i = 0; i < r.offsets.size(); ++i) args[i] = storage.data() + r.offsets[i];
  launch(r.fn, r.grid, r.block, r.smem_bytes, f.stream, args.data(), r.step->kernel.label);
}

}  // namespace lightseq
