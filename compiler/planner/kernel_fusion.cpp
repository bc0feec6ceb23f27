// kernel_fusion.cpp — pass 2: fusion rules that turn chains of elementwise and row-reduction ops
// into generated kernel launches (docs/kernels.md). A rule is a sequence of op kinds, some
// optional, matched on consecutive unclaimed ops where each reads the previous one's output.
#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <optional>

#include "compiler/codegen/instances.h"
#include "compiler/errors.h"
#include "compiler/planner/passes.h"

namespace lightseq::planner {

namespace {

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
    throw InternalError(fmt::format("planner: '{}' has no constant last dimension", s.g.tensor(tensor).name));
  }
  return sh.back().factor;
}

void emit(State& s, const Match& m, KernelInstance k, std::vector<int> reads,
          std::vector<int> writes, std::string note = "") {
  KernelStep step{std::move(k), {}, std::move(reads), std::move(writes), std::move(note)};
  for (const auto& op : m) {
    if (!op) continue;
    step.fused_ops.push_back(s.op(*op).name);
    s.claimed[*op] = 1;
  }
  s.out->push_back(std::move(step));
}

// Finishing launches: per-block fp32 partials → parameter gradients (= or +=).
void finish_partials(State& s, const std::vector<int>& param_grads) {
  for (int pg : param_grads) {
    s.out->push_back(KernelStep{codegen::column_sum(s.precision), {}, {}, {pg},
                                fmt::format("{} = Σ of per-block partials", s.g.tensor(pg).name)});
  }
}

void mark_internal(State& s, std::initializer_list<std::optional<int>> tensors_of_ops) {
  for (const auto& op : tensors_of_ops) {
    if (op) s.internal.insert(out0(s, op));
  }
}

std::vector<Rule> make_rules() {
  using K = OpKind;
  std::vector<Rule> r;
  // ---- forward ----
  r.push_back({"bias + split heads", {{K::kBiasAdd, false}, {K::kSplitHeads, false}}, {},
               [](State& s, const Match& m) {
                 const Op& b = s.op(*m[0]);
                 const Op& sp = s.op(*m[1]);
                 const int64_t hidden = cols_of(s, b.inputs[0]) / sp.attrs.parts;
                 const int64_t heads = s.g.tensor(sp.outputs[0]).shape[2].factor;
                 mark_internal(s, {m[0]});
                 emit(s, m, codegen::split_heads(s.precision, {hidden, heads, sp.attrs.parts, true}),
                      {b.inputs[0], b.inputs[1]}, {sp.outputs[0]});
               }});
  r.push_back({"mask + softmax + dropout",
               {{K::kAttentionMask, false}, {K::kSoftmax, false}, {K::kDropout, true}}, {},
               [](State& s, const Match& m) {
                 const Op& mask = s.op(*m[0]);
                 mark_internal(s, {m[0]});
                 std::vector<int> writes{out0(s, m[1])};
                 if (m[2]) writes.push_back(out0(s, m[2]));
                 emit(s, m,
                      codegen::softmax_fwd(s.precision, {mask.attrs.padding_mask, mask.attrs.causal,
                                                         m[2].has_value()}),
                      mask.inputs, writes);
               }});
  r.push_back({"merge heads", {{K::kMergeHeads, false}}, {}, [](State& s, const Match& m) {
                 const Op& op = s.op(*m[0]);
                 const Shape& sh = s.g.tensor(op.inputs[0]).shape;
                 const int64_t heads = sh[2].factor, d = sh[4].factor;
                 emit(s, m, codegen::merge_heads(s.precision, {heads * d, heads, op.attrs.parts, false}),
                      op.inputs, op.outputs);
               }});
  r.push_back({"bias + dropout + residual + layernorm",
               {{K::kBiasAdd, false}, {K::kDropout, true}, {K::kResidualAdd, false}, {K::kLayerNorm, true}},
               {},
               [](State& s, const Match& m) {
                 const Op& b = s.op(*m[0]);
                 const int branch_end = m[1] ? out0(s, m[1]) : out0(s, m[0]);
                 const int residual = other_input(s, *m[2], branch_end);
                 std::vector<int> reads{b.inputs[0], b.inputs[1], residual};
                 std::vector<int> writes{out0(s, m[2])};
                 if (m[3]) {
                   const Op& ln = s.op(*m[3]);
                   reads.push_back(ln.inputs[1]);
                   reads.push_back(ln.inputs[2]);
                   writes.insert(writes.end(), ln.outputs.begin(), ln.outputs.end());
                 }
                 mark_internal(s, {m[0], m[1]});
                 emit(s, m,
                      codegen::ln_fwd(s.precision, {cols_of(s, b.inputs[0]), true, m[3].has_value(),
                                                    m[1].has_value()}),
                      reads, writes);
               }});
  r.push_back({"layernorm", {{K::kLayerNorm, false}}, {}, [](State& s, const Match& m) {
                 const Op& ln = s.op(*m[0]);
                 emit(s, m, codegen::ln_fwd(s.precision, {cols_of(s, ln.inputs[0]), false, true, false}),
                      ln.inputs, ln.outputs);
               }});
  r.push_back({"bias + activation + dropout",
               {{K::kBiasAdd, false}, {K::kActivation, false}, {K::kDropout, true}}, {},
               [](State& s, const Match& m) {
                 const Op& b = s.op(*m[0]);
                 const int out = m[2] ? out0(s, m[2]) : out0(s, m[1]);
                 mark_internal(s, {m[0]});
                 if (m[2]) mark_internal(s, {m[1]});
                 emit(s, m,
                      codegen::bias_act_dropout_fwd(
                          s.precision, {cols_of(s, b.inputs[0]), s.op(*m[1]).attrs.activation,
                                        m[2].has_value()}),
                      {b.inputs[0], b.inputs[1]}, {out});
               }});
  r.push_back({"embedding + layernorm + dropout",
               {{K::kEmbedding, false}, {K::kLayerNorm, true}, {K::kDropout, true}}, {},
               [](State& s, const Match& m) {
                 const Op& e = s.op(*m[0]);
                 std::vector<int> reads = e.inputs;
                 std::vector<int> writes;
                 int last = out0(s, m[0]);
                 if (m[1]) {
                   const Op& ln = s.op(*m[1]);
                   reads.push_back(ln.inputs[1]);
                   reads.push_back(ln.inputs[2]);
                   writes = {out0(s, m[0]), ln.outputs[1], ln.outputs[2]};
                   last = ln.outputs[0];
                 }
                 if (m[2]) {
                   s.internal.insert(last);
                   last = out0(s, m[2]);
                 }
                 writes.insert(writes.begin(), last);
                 const bool learned = e.inputs.size() > 2;
                 emit(s, m,
                      codegen::embedding_fwd(s.precision,
                                             {cols_of(s, e.inputs[1]),
                                              learned ? PositionKind::kLearned : PositionKind::kSinusoidal,
                                              m[1].has_value(), m[2].has_value()}),
                      reads, writes);
               }});
  r.push_back({"cross-entropy forward + backward", {{K::kCrossEntropy, false}}, {},
               [](State& s, const Match& m) {
                 const Op& ce = s.op(*m[0]);
                 emit(s, m, codegen::cross_entropy(s.precision, cols_of(s, ce.inputs[0])), ce.inputs,
                      ce.outputs);
               }});
  r.push_back({"adam", {{K::kAdam, false}}, {}, [](State& s, const Match& m) {
                 const Op& a = s.op(*m[0]);
                 if (s.precision == Precision::kFp16) {
                   s.out->push_back(KernelStep{codegen::check_finite(s.precision), {}, {a.inputs[0]}, {},
                                               "dynamic loss scaling: an inf/NaN gradient skips the step"});
                 }
                 emit(s, m, codegen::adam(s.precision, a.attrs.optimizer), a.inputs, a.outputs);
               }});
  // ---- backward ----
  r.push_back({"layernorm grad + residual grad + dropout grad + bias grad",
               {{K::kLayerNormGrad, true}, {K::kGradAdd, true}, {K::kDropoutGrad, true}, {K::kBiasGrad, true}},
               {0, 1, 2},
               [](State& s, const Match& m) {
                 std::vector<int> reads, writes, finish;
                 int grad_z = -1;
                 if (m[0]) {
                   const Op& ln = s.op(*m[0]);
                   reads = {ln.inputs[0], ln.inputs[1], ln.inputs[2], ln.inputs[3], ln.inputs[4]};
                   grad_z = ln.outputs[0];
                   finish = {ln.outputs[1], ln.outputs[2]};
                 }
                 if (m[1]) {
                   const Op& add = s.op(*m[1]);
                   if (grad_z >= 0) s.internal.insert(grad_z);
                   reads.push_back(grad_z >= 0 ? other_input(s, *m[1], grad_z) : add.inputs[0]);
                   if (grad_z < 0) reads.push_back(add.inputs[1]);
                   grad_z = add.outputs[0];
                 }
                 if (grad_z >= 0) writes.push_back(grad_z);
                 if (m[2]) {
                   if (grad_z < 0) reads.push_back(s.op(*m[2]).inputs[0]);
                   writes.push_back(out0(s, m[2]));
                 }
                 if (m[3]) finish.push_back(out0(s, m[3]));
                 const int64_t hidden = cols_of(s, reads.at(0));
                 emit(s, m,
                      codegen::ln_bwd(s.precision, {hidden, m[0].has_value(),
                                                    m[1].has_value(), m[3].has_value(), m[2].has_value()}),
                      reads, writes);
                 finish_partials(s, finish);
               }});
  r.push_back({"dropout grad + activation grad + bias grad",
               {{K::kDropoutGrad, true}, {K::kActivationGrad, false}, {K::kBiasGrad, false}}, {},
               [](State& s, const Match& m) {
                 const Op& ag = s.op(*m[1]);
                 if (m[0]) mark_internal(s, {m[0]});
                 const int grad_in = m[0] ? s.op(*m[0]).inputs[0] : ag.inputs[0];
                 emit(s, m,
                      codegen::bias_act_dropout_bwd(
                          s.precision, {cols_of(s, ag.inputs[1]), ag.attrs.activation, m[0].has_value()}),
                      {grad_in, ag.inputs[1], ag.inputs[2]}, {ag.outputs[0]});
                 finish_partials(s, {out0(s, m[2])});
               }});
  r.push_back({"merge heads grad", {{K::kMergeHeadsGrad, false}}, {}, [](State& s, const Match& m) {
                 const Op& op = s.op(*m[0]);
                 const Shape& sh = s.g.tensor(op.outputs[0]).shape;
                 const int64_t heads = sh[2].factor, d = sh[4].factor;
                 emit(s, m, codegen::split_heads(s.precision, {heads * d, heads, op.attrs.parts, false}),
                      op.inputs, op.outputs);
               }});
  r.push_back({"dropout grad + softmax grad", {{K::kDropoutGrad, true}, {K::kSoftmaxGrad, false}}, {},
               [](State& s, const Match& m) {
                 const Op& sg = s.op(*m[1]);
                 if (m[0]) mark_internal(s, {m[0]});
                 const int grad_in = m[0] ? s.op(*m[0]).inputs[0] : sg.inputs[0];
                 emit(s, m, codegen::softmax_bwd(s.precision, {false, false, m[0].has_value()}),
                      {grad_in, sg.inputs[1]}, sg.outputs);
               }});
  r.push_back({"split heads grad + bias grad", {{K::kSplitHeadsGrad, false}, {K::kBiasGrad, true}}, {},
               [](State& s, const Match& m) {
                 const Op& op = s.op(*m[0]);
                 const Shape& sh = s.g.tensor(op.inputs[0]).shape;
                 const int64_t heads = sh[2].factor, d = sh[4].factor;
                 emit(s, m,
                      codegen::merge_heads(s.precision, {heads * d, heads, op.attrs.parts, m[1].has_value()}),
                      op.inputs, op.outputs);
                 if (m[1]) finish_partials(s, {out0(s, m[1])});
               }});
  r.push_back({"dropout grad + layernorm grad + embedding grad",
               {{K::kDropoutGrad, true}, {K::kLayerNormGrad, true}, {K::kEmbeddingGrad, false}}, {},
               [](State& s, const Match& m) {
                 const Op& eg = s.op(*m[2]);
                 std::vector<int> reads{m[0] ? s.op(*m[0]).inputs[0] : (m[1] ? s.op(*m[1]).inputs[0] : eg.inputs[0]),
                                        eg.inputs[1]};
                 std::vector<int> ln_grads;
                 if (m[0]) mark_internal(s, {m[0]});
                 if (m[1]) {
                   const Op& ln = s.op(*m[1]);
                   reads.insert(reads.end(), {ln.inputs[1], ln.inputs[2], ln.inputs[3], ln.inputs[4]});
                   s.internal.insert(ln.outputs[0]);
                   ln_grads = {ln.outputs[1], ln.outputs[2]};
                 }
                 const int64_t hidden = cols_of(s, reads[0]);
                 const PositionKind pos = eg.outputs.size() > 1 ? PositionKind::kLearned : PositionKind::kSinusoidal;
                 emit(s, m, codegen::embedding_bwd(s.precision, {hidden, pos, m[1].has_value(), m[0].has_value()}),
                      reads, {}, "scatter-adds into fp32 gradient buffers the caller zeroed");
                 finish_partials(s, ln_grads);
                 for (int pg : eg.outputs) {
                   s.out->push_back(KernelStep{codegen::convert(s.precision), {}, {}, {pg},
                                               fmt::format("{} (=|+=) fp32 scatter buffer", s.g.tensor(pg).name)});
                 }
               }});
  return r;
}

const std::vector<Rule>& rules() {
  static const std::vector<Rule> r = make_rules();
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
      prev_out = s.op(next).outputs.at(0);
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

}  // namespace

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
