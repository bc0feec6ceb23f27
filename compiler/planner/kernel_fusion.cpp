// kernel_fusion.cpp — pass 2: fusion rules that turn chains of elementwise and row-reduction ops
// into generated kernel launches (docs/kernels.md). A rule is a sequence of op kinds, some
// optional, matched on consecutive unclaimed ops where each reads the previous one's output. The
// rules are fusion_forward.cpp's and fusion_backward.cpp's; this file holds what they share
// (fusion_rules.h) and the matcher.
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "compiler/errors.h"
#include "compiler/planner/fusion_rules.h"
#include "flash_attention.sig.cuh"
#include "reduce.sig.cuh"

namespace lightseq::planner::fusion {

int out0(const State& s, const std::optional<int>& op) { return s.op(*op).outputs.at(0); }

// The input of `op` that is not `other`.
int other_input(const State& s, int op, int other) {
  for (int in : s.op(op).inputs) {
    if (in != other) return in;
  }
  throw InternalError(fmt::format("planner: op '{}' has no second input", s.op(op).name));
}

int64_t cols_of(const State& s, int tensor) {
  const Shape& sh = s.g.tensor(tensor).shape;
  if (sh.empty() || !sh.back().is_constant()) {
    throw InternalError(
        fmt::format("planner: '{}' has no constant last dimension", s.g.tensor(tensor).name));
  }
  return sh.back().factor;
}

// A step of `k`: its parameters bound by name, checked against the signature (an unknown name, a
// missing scalar, a null required pointer are planner bugs), reads and writes from the roles, the
// dropout parameter from the matched dropout op.
KernelStep make_step(KernelInstance k, const Args& args, const Scalars& scalars,
                     const Op* dropout_op, std::string note) {
  const sig::Kernel& sg = *k.sig;
  KernelStep step;
  step.args.resize(sg.n_params);
  for (const auto& [name, id] : args) {
    // "<list>.<slot>" binds one slot of a tensor-list parameter.
    const size_t dot = name.find('.');
    const int pi = param_index(sg, dot == std::string::npos ? name : name.substr(0, dot));
    const sig::Param& p = sg.params[pi];
    if (dot != std::string::npos) {
      if (!p.list)
        throw InternalError(fmt::format("planner: {}: '{}' is not a tensor list", k.label, p.name));
      int slot = 0;
      while (slot < p.list->n_slots && name.substr(dot + 1) != p.list->slots[slot].name) ++slot;
      if (slot == p.list->n_slots) {
        throw InternalError(fmt::format("planner: {}: tensor list '{}' has no slot '{}'", k.label,
                                        p.name, name.substr(dot + 1)));
      }
      step.args[pi].list.resize(p.list->n_slots, -1);
      step.args[pi].list[slot] = id;
      continue;
    }
    if (!sig::is_pointer(p.type) || p.list) {
      throw InternalError(
          fmt::format("planner: {}: '{}' is not a pointer parameter", k.label, name));
    }
    step.args[pi].tensor = id;
  }
  for (const auto& [name, value] : scalars) {
    if (sg.params[param_index(sg, name)].role != sig::Role::kScalar) {
      throw InternalError(
          fmt::format("planner: {}: '{}' is not a scalar parameter", k.label, name));
    }
    step.args[param_index(sg, name)].scalar = value;
  }
  for (int i = 0; i < sg.n_params; ++i) {
    const sig::Param& p = sg.params[i];
    KernelArg& a = step.args[i];
    switch (p.role) {
      case sig::Role::kScalar:
        if (a.scalar.kind == ScalarArg::Kind::kUnset) {
          throw InternalError(
              fmt::format("planner: {}: scalar '{}' has no value", k.label, p.name));
        }
        break;
      case sig::Role::kDropout:
        if (dropout_op) {
          a.dropout_site = dropout_op->attrs.dropout_site;
          a.dropout_kind = dropout_op->attrs.dropout_kind;
        }
        break;
      case sig::Role::kGradMode:
        break;
      case sig::Role::kTensorList:
        a.list.resize(p.list->n_slots, -1);
        for (int j = 0; j < p.list->n_slots; ++j) {
          const sig::ListSlot& ls = p.list->slots[j];
          if (a.list[j] < 0) {
            if (ls.nullable == sig::Nullable::kNo) {
              throw InternalError(
                  fmt::format("planner: {}: slot '{}.{}' is not bound", k.label, p.name, ls.name));
            }
            continue;
          }
          step.reads.push_back(a.list[j]);
          if (ls.role == sig::Role::kOutAcc) step.writes.push_back(a.list[j]);  // updated in place
        }
        break;
      default:
        if (a.tensor < 0) {
          if (p.nullable == sig::Nullable::kNo) {
            throw InternalError(fmt::format("planner: {}: '{}' is not bound", k.label, p.name));
          }
          break;
        }
        if (p.role == sig::Role::kIn) {
          step.reads.push_back(a.tensor);
        } else {
          step.writes.push_back(
              a.tensor);  // kOut, kOutAcc (into a buffer made ready before), kScratch, kErrorFlag
        }
    }
  }
  step.kernel = std::move(k);
  step.note = std::move(note);
  return step;
}

void emit(State& s, const Match& m, KernelInstance k, const Args& args, const Scalars& scalars,
          std::string note) {
  const Op* dropout_op = nullptr;
  std::vector<std::string> fused;
  for (const auto& op : m) {
    if (!op) continue;
    const Op& o = s.op(*op);
    fused.push_back(o.name);
    // a dropout op, or an op with a dropout site of its own (the fused attention)
    if (o.attrs.dropout_site >= 0) dropout_op = &o;
    s.claimed[*op] = 1;
  }
  KernelStep step = make_step(std::move(k), args, scalars, dropout_op, std::move(note));
  step.fused_ops = std::move(fused);
  s.out->push_back(std::move(step));
}

// A scratch tensor for the kernel step about to be emitted: a fixed shape, or (empty shape) sized
// by the kernel's signature at run time.
int add_scratch(State& s, const std::string& name, ElemType type, Shape shape) {
  Tensor t{name, std::move(shape), TensorRole::kScratch, type};
  t.sized_by_kernel = t.shape.empty();
  return s.g.add_tensor(std::move(t));
}

// The rows of a [rows, cols] tensor: the product of all but its last dimension.
Dim rows_of(const State& s, int tensor) {
  const Shape& sh = s.g.tensor(tensor).shape;
  return shape_numel(Shape(sh.begin(), sh.end() - 1));
}

// Finishing launches: per-block fp32 partials (a scratch tensor whose rows are the blocks) →
// parameter gradients (= or +=), each `width` columns wide, in the column order of the partials.
// One column_sum launch finishes up to kColumnSumMaxOuts consecutive gradients.
void finish_partials(State& s, int partials, const std::vector<int>& param_grads, int64_t width) {
  constexpr size_t kMaxOuts = kern::kColumnSumMaxOuts;
  for (size_t first = 0; first < param_grads.size(); first += kMaxOuts) {
    const size_t n = std::min(kMaxOuts, param_grads.size() - first);
    Args args{{"partials", partials}};
    std::vector<std::string> names;
    for (size_t j = 0; j < n; ++j) {
      args[fmt::format("out{}", j)] = param_grads[first + j];
      names.push_back(s.g.tensor(param_grads[first + j]).name);
    }
    s.out->push_back(
        make_step(instantiate(sig::kColumnSum, s.precision, {}), args,
                  {{"n_blocks", ScalarArg::rows_of(partials)},
                   {"stride", ScalarArg::cols_of(partials)},
                   {"col_offset", ScalarArg::constant(static_cast<double>(first) * width)},
                   {"cols", ScalarArg::constant(static_cast<double>(width))},
                   {"n_out", ScalarArg::constant(static_cast<double>(n))}},
                  nullptr, fmt::format("{} = Σ of per-block partials", fmt::join(names, ", "))));
  }
}

void mark_internal(State& s, std::initializer_list<std::optional<int>> tensors_of_ops) {
  for (const auto& op : tensors_of_ops) {
    if (op) s.internal.insert(out0(s, op));
  }
}

KernelInstance flash_instance(const State& s, const sig::Kernel& k, const Op& op,
                              std::initializer_list<TemplateValue> extra) {
  const OpAttrs::Attention& a = op.attrs.attn;
  std::vector<TemplateValue> values{{"kD", a.head_dim},
                                    tv("kMask", kern::mask_of(a.padding, a.causal)),
                                    on_off<kern::Drop>("kDrop", a.dropout_site >= 0)};
  values.insert(values.end(), extra.begin(), extra.end());
  return instantiate(k, s.precision, values);
}

namespace {

// The sequence length of token rows B·T (or B·S): T (S).
Dim seq_of_rows(const State& s, int tensor) {
  const Tensor& t = s.g.tensor(tensor);
  const Dim rows = t.shape.at(0);
  if (t.shape.size() != 2 || rows.factor != 1 || rows.b != 1) {
    throw InternalError(fmt::format("planner: '{}' {} is not token rows [B·T, cols]", t.name,
                                    shape_to_string(t.shape)));
  }
  return Dim{1, 0, rows.t, rows.s};
}

// The elements from one row of a token-layout tensor to the next: a column slice's parent's row,
// or the tensor's own.
int64_t row_elems(const State& s, int tensor) {
  const Tensor& t = s.g.tensor(tensor);
  return t.row_stride > 0 ? t.row_stride : cols_of(s, tensor);
}

}  // namespace

Scalars flash_scalars(const State& s, const Op& op, const std::vector<int>& q_side,
                      const std::vector<int>& kv_side, const std::vector<int>& merged) {
  const OpAttrs::Attention& a = op.attrs.attn;
  // Each side's tensors share one row stride and one length (the kernels take one of each per
  // side); the output and its gradient are the heads merged, [B·T, heads·d], of the q side's rows.
  const Dim q_len = seq_of_rows(s, q_side.at(0));
  auto ld_of = [&](const std::vector<int>& side) {
    const int64_t ld = row_elems(s, side.at(0));
    const Dim len = seq_of_rows(s, side.at(0));
    for (int t : side) {
      if (row_elems(s, t) != ld || seq_of_rows(s, t) != len ||
          cols_of(s, t) != a.heads * a.head_dim || !kern::flash_ld_ok(ld) ||
          !kern::flash_aligned(std::max<int64_t>(s.g.tensor(t).view_offset, 0))) {
        throw InternalError(fmt::format(
            "planner: '{}': '{}' is not a [B·T, {}] token-layout slice with the row stride {} of "
            "its side (a multiple of 8)",
            op.name, s.g.tensor(t).name, a.heads * a.head_dim, ld));
      }
    }
    return ld;
  };
  for (int out : merged) {
    if (cols_of(s, out) != a.heads * a.head_dim || row_elems(s, out) != cols_of(s, out) ||
        seq_of_rows(s, out) != q_len) {
      throw InternalError(fmt::format("planner: '{}': '{}' is not the merged heads [B·T, {}]",
                                      op.name, s.g.tensor(out).name, a.heads * a.head_dim));
    }
  }
  return {{"batch", ScalarArg::size(Dim::batch())},
          {"heads", ScalarArg::constant(static_cast<double>(a.heads))},
          {"q_len", ScalarArg::size(q_len)},
          {"k_len", ScalarArg::size(seq_of_rows(s, kv_side.at(0)))},
          {"ld_q", ScalarArg::constant(static_cast<double>(ld_of(q_side)))},
          {"ld_kv", ScalarArg::constant(static_cast<double>(ld_of(kv_side)))},
          {"scale", ScalarArg::constant(a.scale)}};
}

kern::Act act_of(Activation a) {
  switch (a) {
    case Activation::kRelu:
      return kern::Act::kRelu;
    case Activation::kGelu:
      return kern::Act::kGelu;
    case Activation::kGeluTanh:
      return kern::Act::kGeluTanh;
  }
  throw InternalError(fmt::format("act_of: unknown activation {}", static_cast<int>(a)));
}
kern::Pos pos_of(bool learned) { return learned ? kern::Pos::kLearned : kern::Pos::kSinusoidal; }
kern::PosFrom pos_from_of(PositionsFrom p) {
  return p == PositionsFrom::kTokens ? kern::PosFrom::kTokens : kern::PosFrom::kIndex;
}

Scalars embedding_row_scalars(const OpAttrs& a, Dim batch, Dim seq) {
  auto constant = [](int64_t v) { return ScalarArg::constant(static_cast<double>(v)); };
  return {{"batch", ScalarArg::size(batch)},
          {"seq", ScalarArg::size(seq)},
          {"vocab", constant(a.vocab)},
          {"padding_idx", constant(a.padding_idx)},
          {"zero_padding", constant(a.padding_rows == PaddingRows::kZero ? 1 : 0)},
          {"max_positions", constant(a.max_positions)},
          {"n_types", constant(a.token_types)}};
}

const std::vector<Rule>& rules() {
  static const std::vector<Rule> r = [] {
    std::vector<Rule> all;
    add_forward_rules(all);
    add_backward_rules(all);
    return all;
  }();
  return r;
}

std::optional<Match> match(const State& s, const Rule& rule, int start) {
  Match m(rule.elements.size());
  int next = start;
  int prev_out = -1;
  for (size_t e = 0; e < rule.elements.size(); ++e) {
    bool ok = next < s.end && !s.claimed[next] && s.op(next).kind == rule.elements[e].kind;
    if (ok && prev_out >= 0) {
      const auto& in = s.op(next).inputs;
      ok = std::find(in.begin(), in.end(), prev_out) != in.end();
    }
    if (ok) {
      m[e] = next;
      // An op that only updates in place (the optimizer) ends any chain.
      prev_out = s.op(next).outputs.empty() ? -2 : s.op(next).outputs[0];
      ++next;
    } else if (!rule.elements[e].optional) {
      return std::nullopt;
    }
  }
  if (next == start) return std::nullopt;  // nothing matched (all elements optional)
  if (!rule.needs_one_of.empty()) {
    bool found = false;
    for (int i : rule.needs_one_of) found = found || m[i].has_value();
    if (!found) return std::nullopt;
  }
  return m;
}

}  // namespace lightseq::planner::fusion

namespace lightseq::planner {

using namespace fusion;

bool kernel_rule_matches(const State& s, int op) {
  for (const Rule& r : rules()) {
    if (match(s, r, op)) return true;
  }
  return false;
}

bool plan_kernel(State& s, int op) {
  const Rule* best = nullptr;
  std::optional<Match> best_match;
  int best_len = 0;
  for (const Rule& r : rules()) {
    auto m = match(s, r, op);
    if (!m) continue;
    int len = 0;
    for (const auto& x : *m) len += x.has_value();
    if (len > best_len) best = &r, best_match = m, best_len = len;
  }
  if (!best) return false;
  best->emit(s, *best_match);
  return true;
}

}  // namespace lightseq::planner
