// kernel.h — a kernel instance: one kernel signature (templates/<family>.sig.cuh) with its template
// values. Its name expression, readable label and C++ template arguments are derived from the
// signature; nothing else in the compiler knows a kernel's template parameter order.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/signature.cuh"
#include "compiler/spec/model_spec.h"

namespace lightseq {

namespace sig = kern::sig;

struct KernelInstance {
  const sig::Kernel* sig = nullptr;
  Precision precision = Precision::kFp32;
  std::vector<int64_t> values;             // per template parameter (T: its element bytes)
  std::string family;                      // template file: "layernorm" → templates/layernorm.cuh
  std::string kernel;                      // "ln_fwd_kernel"
  std::vector<std::string> template_args;  // C++ template arguments, in order
  std::string label;                       // "ln_fwd:bf16:h=512:vec=8:branch=none:norm=on:drop=off"
  std::string name_expression() const;  // "&lightseq::kern::ln_fwd_kernel<__nv_bfloat16, 512, ...>"
  // The value of template parameter `name` (InternalError if the signature has none).
  int64_t value(std::string_view name) const;
  bool operator==(const KernelInstance& o) const { return label == o.label && sig == o.sig; }
};

using TemplateValue = std::pair<std::string_view, int64_t>;

// An enumerator as a template value: tv("kNorm", kern::Norm::kOn).
template <class E>
requires std::is_enum_v<E> TemplateValue tv(std::string_view name, E e) {
  return {name, static_cast<int64_t>(e)};
}
// kOn / kOff of an on/off enum.
template <class E>
TemplateValue on_off(std::string_view name, bool on) {
  return tv(name, on ? E::kOn : E::kOff);
}

// `k` for precision `p`: every template parameter that is not derived must be given exactly once
// (by name); derived ones (vector widths, thread counts) are computed from the others. Throws
// InternalError naming the kernel and the parameter for a missing, unknown, repeated or
// out-of-range value.
KernelInstance instantiate(const sig::Kernel& k, Precision p,
                           std::span<const TemplateValue> values);
inline KernelInstance instantiate(const sig::Kernel& k, Precision p,
                                  std::initializer_list<TemplateValue> values) {
  return instantiate(k, p, std::span<const TemplateValue>(values.begin(), values.size()));
}

// Every kernel signature of templates/ (generated from templates/*.sig.cuh by the build).
std::span<const sig::Kernel* const> all_kernel_signatures();

// The position of a run-time parameter in `k`'s signature; InternalError if it has none.
int param_index(const sig::Kernel& k, std::string_view name);

// Every signature as a Markdown list (`lsc kernels`; the generated section of docs/kernels.md):
// template parameters (derived ones marked), then each run-time parameter's C type, name and role.
std::string format_signatures();

std::string cuda_type(Precision p);        // "float", "__half", "__nv_bfloat16"
int vec_width(Precision p, int64_t cols);  // elements per 16-byte access that divide `cols`

}  // namespace lightseq
