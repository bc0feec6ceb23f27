// fusion_rules.h — what the kernel-fusion rules share (internal to compiler/planner): a rule's
// shape, the by-name binding of a kernel step, and the helpers the rules' emitters use.
#pragma once

#include <functional>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/enums.cuh"
#include "compiler/planner/passes.h"

namespace lightseq::planner::fusion {

using Match = std::vector<std::optional<int>>;  // one entry per rule element

struct Element {
  OpKind kind;
  bool optional;
};

struct Rule {
  const char* name;
  std::vector<Element> elements;
  // The match must include at least one of these elements (indices); empty: all required ones.
  std::vector<int> needs_one_of;
  std::function<void(State&, const Match&)> emit;
};

using Args = std::map<std::string, int>;           // pointer parameters by name → tensor id
using Scalars = std::map<std::string, ScalarArg>;  // scalar parameters by name

int out0(const State& s, const std::optional<int>& op);
// The input of `op` that is not `other`.
int other_input(const State& s, int op, int other);
int64_t cols_of(const State& s, int tensor);
// A step of `k`: its parameters bound by name ("<list>.<slot>" for a tensor list's slot), checked
// against the signature (an unknown name, a missing scalar, a null required pointer are planner
// bugs), reads and writes from the roles, the dropout parameter from the matched dropout op.
KernelStep make_step(KernelInstance k, const Args& args, const Scalars& scalars,
                     const Op* dropout_op, std::string note);
// make_step for the matched ops (claimed, named in the step), appended to the direction's steps.
void emit(State& s, const Match& m, KernelInstance k, const Args& args, const Scalars& scalars,
          std::string note = "");
// A scratch tensor the planner adds (shape empty: sized by the kernel that writes it).
int add_scratch(State& s, const std::string& name, ElemType type, Shape shape = {});
Dim rows_of(const State& s, int tensor);
void finish_partials(State& s, int partials, const std::vector<int>& param_grads, int64_t width);
void mark_internal(State& s, std::initializer_list<std::optional<int>> tensors_of_ops);
kern::Act act_of(Activation a);
// The fused attention ops (kFlashAttention*, whose q and k are inputs 0 and 1, [B, heads, T | S,
// d] views): kernel `k` of flash_attention.cuh for the op's head dim, masks and dropout, then the
// kernel's own template values `extra` (the forward's warps per block), and the shape scalars
// (batch, heads, q_len, k_len, scale).
KernelInstance flash_instance(const State& s, const sig::Kernel& k, const Op& op,
                              std::initializer_list<TemplateValue> extra = {});
// The fused attention kernels' scalars: sizes, the row strides of the query side (q, grad_q) and
// the key side (k, v, grad_k, grad_v) of the token layout; `merged` (out, grad_out) checked to be
// [B·T, heads·d].
Scalars flash_scalars(const State& s, const Op& op, const std::vector<int>& q_side,
                      const std::vector<int>& kv_side, const std::vector<int>& merged);
kern::Pos pos_of(bool learned);
kern::PosFrom pos_from_of(PositionsFrom p);
// The scalars every embedding kernel's row rule reads (embedding.cuh's embedding_row): batch, seq,
// vocab, padding_idx, zero_padding (PaddingRows::kZero), max_positions, n_types, from the
// embedding op's attributes.
Scalars embedding_row_scalars(const OpAttrs& a, Dim batch, Dim seq);

// The rules, longest first within each direction.
void add_forward_rules(std::vector<Rule>& r);
void add_backward_rules(std::vector<Rule>& r);

}  // namespace lightseq::planner::fusion
