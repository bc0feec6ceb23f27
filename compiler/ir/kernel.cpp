#include "compiler/ir/kernel.h"

#include <fmt/format.h>

#include "compiler/errors.h"

namespace lightseq {

std::string cuda_type(Precision p) {
  switch (p) {
    case Precision::kFp32:
      return "float";
    case Precision::kFp16:
      return "__half";
    case Precision::kBf16:
      return "__nv_bfloat16";
  }
  throw InternalError("unknown precision");
}

int vec_width(Precision p, int64_t cols) { return kern::vec_width(element_bytes(p), cols); }

std::string KernelInstance::name_expression() const {
  return fmt::format("&lightseq::kern::{}<{}>", kernel, fmt::join(template_args, ", "));
}

int64_t KernelInstance::value(std::string_view name) const {
  for (int i = 0; i < sig->n_tparams; ++i) {
    if (name == sig->tparams[i].name) return values.at(i);
  }
  throw InternalError(fmt::format("kernel {} has no template parameter '{}'", kernel, name));
}

namespace {

const char* ctype_text(sig::CType c) {
  switch (c) {
    case sig::CType::kTPtr:
      return "T*";
    case sig::CType::kConstTPtr:
      return "const T*";
    case sig::CType::kF32Ptr:
      return "float*";
    case sig::CType::kConstF32Ptr:
      return "const float*";
    case sig::CType::kConstI64Ptr:
      return "const int64_t*";
    case sig::CType::kConstU8Ptr:
      return "const uint8_t*";
    case sig::CType::kU8Ptr:
      return "uint8_t*";
    case sig::CType::kI32Ptr:
      return "int*";
    case sig::CType::kConstI32Ptr:
      return "const int*";
    case sig::CType::kConstAdamChunkPtr:
      return "const AdamChunk<T>*";
    case sig::CType::kOptimStatePtr:
      return "OptimState*";
    case sig::CType::kConstOptimStatePtr:
      return "const OptimState*";
    case sig::CType::kI64:
      return "int64_t";
    case sig::CType::kI32:
      return "int";
    case sig::CType::kF32:
      return "float";
    case sig::CType::kDropoutArgs:
      return "DropoutArgs";
    case sig::CType::kAccumulate:
      return "Accumulate";
  }
  return "?";
}

const char* role_text(const sig::Param& p) {
  switch (p.role) {
    case sig::Role::kIn:
      return "in";
    case sig::Role::kOut:
      return "out =";
    case sig::Role::kOutAcc:
      return "out +=";
    case sig::Role::kScratch:
      return p.init == sig::ScratchInit::kZero ? "scratch, zeroed" : "scratch";
    case sig::Role::kErrorFlag:
      return "error flag";
    case sig::Role::kScalar:
      return "scalar";
    case sig::Role::kDropout:
      return "dropout";
    case sig::Role::kGradMode:
      return "= or += by grad mode";
    case sig::Role::kTensorList:
      return "tensor list";
  }
  return "?";
}

}  // namespace

std::string format_signatures() {
  std::string out;
  for (const sig::Kernel* k : all_kernel_signatures()) {
    std::vector<std::string> t, p;
    for (int i = 0; i < k->n_tparams; ++i) {
      const sig::TParam& tp = k->tparams[i];
      std::string type = tp.kind == sig::TKind::kDType ? "typename"
                         : tp.kind == sig::TKind::kInt ? "int"
                                                       : tp.enum_info->type;
      t.push_back(type + " " + tp.name + (tp.derive ? " (derived)" : ""));
    }
    for (int i = 0; i < k->n_params; ++i) {
      const sig::Param& pp = k->params[i];
      std::string slots;
      if (pp.list) {
        std::vector<std::string> s;
        for (int j = 0; j < pp.list->n_slots; ++j) {
          const sig::ListSlot& ls = pp.list->slots[j];
          s.push_back(fmt::format("{} {}{}", ls.name, ls.role == sig::Role::kIn ? "in" : "+=",
                                  ls.nullable == sig::Nullable::kYes ? "?" : ""));
        }
        slots = fmt::format(" of {} per chunk: {}", pp.list->chunk_elems, fmt::join(s, ", "));
      }
      p.push_back(fmt::format("{} {} [{}{}{}]", ctype_text(pp.type), pp.name, role_text(pp), slots,
                              pp.nullable == sig::Nullable::kYes ? ", may be null" : ""));
    }
    out += fmt::format("- `{}.cuh`: `{}<{}>`\n  ({})\n", k->family, k->name, fmt::join(t, ", "),
                       fmt::join(p, ", "));
  }
  return out;
}

int param_index(const sig::Kernel& k, std::string_view name) {
  for (int i = 0; i < k.n_params; ++i) {
    if (name == k.params[i].name) return i;
  }
  throw InternalError(fmt::format("kernel {} has no run-time parameter '{}'", k.name, name));
}

KernelInstance instantiate(const sig::Kernel& k, Precision p,
                           std::span<const TemplateValue> given) {
  KernelInstance inst;
  inst.sig = &k;
  inst.precision = p;
  inst.family = k.family;
  inst.kernel = k.name;
  sig::Values v;
  std::vector<int> seen(k.n_tparams, 0);
  for (const auto& [name, value] : given) {
    int i = 0;
    while (i < k.n_tparams && name != k.tparams[i].name) ++i;
    if (i == k.n_tparams) {
      throw InternalError(fmt::format("kernel {} has no template parameter '{}'", k.name, name));
    }
    const sig::TParam& t = k.tparams[i];
    if (t.kind == sig::TKind::kDType || t.derive) {
      throw InternalError(
          fmt::format("kernel {}: template parameter {} is not set by hand", k.name, name));
    }
    if (seen[i]++)
      throw InternalError(
          fmt::format("kernel {}: template parameter {} given twice", k.name, name));
    if (t.kind == sig::TKind::kEnum && (value < 0 || value >= t.enum_info->count)) {
      throw InternalError(fmt::format("kernel {}: {} = {} is not an enumerator of {}", k.name, name,
                                      value, t.enum_info->type));
    }
    v.t[i] = value;
  }
  std::string label = k.name;
  constexpr std::string_view kSuffix = "_kernel";
  if (label.ends_with(kSuffix)) label.resize(label.size() - kSuffix.size());
  label += fmt::format(":{}", to_string(p));
  for (int i = 0; i < k.n_tparams; ++i) {
    const sig::TParam& t = k.tparams[i];
    if (t.kind == sig::TKind::kDType) {
      v.t[i] = element_bytes(p);
      inst.template_args.push_back(cuda_type(p));
      continue;
    }
    if (t.derive) {
      v.t[i] = t.derive(v);
    } else if (!seen[i]) {
      throw InternalError(
          fmt::format("kernel {}: template parameter {} is not given", k.name, t.name));
    }
    std::string shown = std::to_string(v.t[i]);
    if (t.kind == sig::TKind::kEnum) {
      inst.template_args.push_back(
          fmt::format("lightseq::kern::{}::{}", t.enum_info->type, t.enum_info->names[v.t[i]]));
      shown = t.enum_info->labels[v.t[i]];
    } else {
      inst.template_args.push_back(shown);
    }
    if (t.label) label += fmt::format(":{}={}", t.label, shown);
  }
  if (k.reject != nullptr) {
    if (const char* why = k.reject(v)) {
      throw InternalError(
          fmt::format("kernel {}: these template values cannot be instantiated: {}", label, why));
    }
  }
  inst.values.assign(v.t, v.t + k.n_tparams);
  inst.label = std::move(label);
  return inst;
}

}  // namespace lightseq
