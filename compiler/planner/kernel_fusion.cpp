// kernel_fusion.cpp — pass 2: fusion rules that turn chains of elementwise and row-reduction ops
// into generated kernel launches (docs/kernels.md). A rule is a sequence of op kinds, some
// optional, matched on consecutive unclaimed ops where each reads the previous one's output.
#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>
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

// Pointer arguments a kernel writes (docs/kernels.md); every other bound argument is read.
// "mean", "rstd", "probs", "sum_out" are written by forward kernels and read by backward ones.
bool is_output_arg(const std::string& kernel, const std::string& name) {
  static const std::set<std::string> forward_outputs{
      "sum_out", "norm_out", "mean", "rstd", "out", "probs", "probs_dropped", "loss", "nll", "grad_logits"};
  static const std::set<std::string> backward_outputs{"grad_z", "grad_branch", "grad_x", "grad_scores", "out"};
  const bool backward = kernel.find("_bwd_") != std::string::npos;
  return (backward ? backward_outputs : forward_outputs).count(name) > 0;
}

using Args = std::map<std::string, int>;

void emit(State& s, const Match& m, KernelInstance k, Args args, std::string note = "") {
  KernelStep step;
  step.kernel = std::move(k);
  step.note = std::move(note);
  for (const auto& [name, id] : args) {
    if (id < 0) continue;
    step.args[name] = id;
    (is_output_arg(step.kernel.kernel, name) ? step.writes : step.reads).push_back(id);
  }
  for (const auto& op : m) {
    if (!op) continue;
    const Op& o = s.op(*op);
    step.fused_ops.push_back(o.name);
    if (o.kind == OpKind::kLayerNorm) step.eps = o.attrs.eps;
    if (o.kind == OpKind::kDropout || o.kind == OpKind::kDropoutGrad) {
      step.dropout_site = o.attrs.dropout_site;
      step.dropout_which = o.attrs.dropout_which;
    }
    s.claimed[*op] = 1;
  }
  s.out->push_back(std::move(step));
}

// A launch that belongs to no graph op (finishing partial sums, loss-scaling checks).
KernelStep support_step(KernelInstance k, std::vector<int> reads, std::vector<int> writes, std::string note) {
  KernelStep step;
  step.kernel = std::move(k);
  step.reads = std::move(reads);
  step.writes = std::move(writes);
  step.note = std::move(note);
  return step;
}

// Finishing launches: per-block fp32 partials → parameter gradients (= or +=), one per block of
// columns, in the column order of the partial buffer.
void finish_partials(State& s, const std::vector<int>& param_grads) {
  for (size_t i = 0; i < param_grads.size(); ++i) {
    const int pg = param_grads[i];
    KernelStep step = support_step(codegen::column_sum(s.precision), {}, {pg},
                                   fmt::format("{} = Σ of per-block partials", s.g.tensor(pg).name));
    step.args["out"] = pg;
    step.partial_block = static_cast<int>(i);
    s.out->push_back(std::move(step));
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
                      {{"in", b.inputs[0]}, {"bias", b.inputs[1]}, {"out", sp.outputs[0]}});
               }});
  r.push_back({"mask + softmax + dropout",
               {{K::kAttentionMask, false}, {K::kSoftmax, false}, {K::kDropout, true}}, {},
               [](State& s, const Match& m) {
                 const Op& mask = s.op(*m[0]);
                 mark_internal(s, {m[0]});
                 emit(s, m,
                      codegen::softmax_fwd(s.precision, {mask.attrs.padding_mask, mask.attrs.causal,
                                                         m[2].has_value()}),
                      {{"scores", mask.inputs[0]},
                       {"key_padding", mask.inputs.size() > 1 ? mask.inputs[1] : -1},
                       {"probs", out0(s, m[1])},
                       {"probs_dropped", m[2] ? out0(s, m[2]) : -1}});
               }});
  r.push_back({"merge heads", {{K::kMergeHeads, false}}, {}, [](State& s, const Match& m) {
                 const Op& op = s.op(*m[0]);
                 const Shape& sh = s.g.tensor(op.inputs[0]).shape;
                 const int64_t heads = sh[2].factor, d = sh[4].factor;
                 emit(s, m, codegen::merge_heads(s.precision, {heads * d, heads, op.attrs.parts, false}),
                      {{"in", op.inputs[0]}, {"out", op.outputs[0]}});
               }});
  r.push_back({"bias + dropout + residual + layernorm",
               {{K::kBiasAdd, false}, {K::kDropout, true}, {K::kResidualAdd, false}, {K::kLayerNorm, true}},
               {},
               [](State& s, const Match& m) {
                 const Op& b = s.op(*m[0]);
                 const int branch_end = m[1] ? out0(s, m[1]) : out0(s, m[0]);
                 Args args{{"branch", b.inputs[0]},
                           {"bias", b.inputs[1]},
                           {"residual", other_input(s, *m[2], branch_end)},
                           {"sum_out", out0(s, m[2])}};
                 if (m[3]) {
                   const Op& ln = s.op(*m[3]);
                   args.insert({{"gamma", ln.inputs[1]}, {"beta", ln.inputs[2]}, {"norm_out", ln.outputs[0]},
                                {"mean", ln.outputs[1]}, {"rstd", ln.outputs[2]}});
                 }
                 mark_internal(s, {m[0], m[1]});
                 emit(s, m,
                      codegen::ln_fwd(s.precision, {cols_of(s, b.inputs[0]), true, m[3].has_value(),
                                                    m[1].has_value()}),
                      args);
               }});
  r.push_back({"layernorm", {{K::kLayerNorm, false}}, {}, [](State& s, const Match& m) {
                 const Op& ln = s.op(*m[0]);
                 emit(s, m, codegen::ln_fwd(s.precision, {cols_of(s, ln.inputs[0]), false, true, false}),
                      {{"residual", ln.inputs[0]}, {"gamma", ln.inputs[1]}, {"beta", ln.inputs[2]},
                       {"norm_out", ln.outputs[0]}, {"mean", ln.outputs[1]}, {"rstd", ln.outputs[2]}});
               }});
  r.push_back({"bias + activation + dropout",
               {{K::kBiasAdd, false}, {K::kActivation, false}, {K::kDropout, true}}, {},
               [](State& s, const Match& m) {
                 const Op& b = s.op(*m[0]);
                 mark_internal(s, {m[0]});
                 if (m[2]) mark_internal(s, {m[1]});
                 emit(s, m,
                      codegen::bias_act_dropout_fwd(
                          s.precision, {cols_of(s, b.inputs[0]), s.op(*m[1]).attrs.activation, m[2].has_value()}),
                      {{"x", b.inputs[0]}, {"bias", b.inputs[1]}, {"out", m[2] ? out0(s, m[2]) : out0(s, m[1])}});
               }});
  r.push_back({"embedding + layernorm + dropout",
               {{K::kEmbedding, false}, {K::kLayerNorm, true}, {K::kDropout, true}}, {},
               [](State& s, const Match& m) {
                 const Op& e = s.op(*m[0]);
                 const bool learned = e.inputs.size() > 2;
                 Args args{{"tokens", e.inputs[0]}, {"token_table", e.inputs[1]},
                           {"pos_table", learned ? e.inputs[2] : -1}};
                 int last = out0(s, m[0]);
                 if (m[1]) {
                   const Op& ln = s.op(*m[1]);
                   args.insert({{"gamma", ln.inputs[1]}, {"beta", ln.inputs[2]}, {"sum_out", last},
                                {"mean", ln.outputs[1]}, {"rstd", ln.outputs[2]}});
                   last = ln.outputs[0];
                 }
                 if (m[2]) {
                   s.internal.insert(last);
                   last = out0(s, m[2]);
                 }
                 args["out"] = last;
                 emit(s, m,
                      codegen::embedding_fwd(s.precision,
                                             {cols_of(s, e.inputs[1]),
                                              learned ? PositionKind::kLearned : PositionKind::kSinusoidal,
                                              m[1].has_value(), m[2].has_value()}),
                      args);
               }});
  r.push_back({"cross-entropy forward + backward", {{K::kCrossEntropy, false}}, {},
               [](State& s, const Match& m) {
                 const Op& ce = s.op(*m[0]);
                 emit(s, m, codegen::cross_entropy(s.precision, cols_of(s, ce.inputs[0])),
                      {{"logits", ce.inputs[0]}, {"targets", ce.inputs[1]}, {"loss", ce.outputs[0]},
                       {"nll", ce.outputs[1]}, {"grad_logits", ce.outputs[2]}});
               }});
  r.push_back({"adam", {{K::kAdam, false}}, {}, [](State& s, const Match& m) {
                 const Op& a = s.op(*m[0]);
                 if (s.precision == Precision::kFp16) {
                   KernelStep check = support_step(codegen::check_finite(s.precision), {a.inputs[0]}, {},
                                                   "dynamic loss scaling: an inf/NaN gradient skips the step");
                   check.args["grad"] = a.inputs[0];
                   s.out->push_back(std::move(check));
                 }
                 emit(s, m, codegen::adam(s.precision, a.attrs.optimizer),
                      {{"grad", a.inputs[0]}, {"param", a.inputs[1]}, {"state", a.inputs[2]}, {"out", a.outputs[0]}});
               }});
  // ---- backward ----
  r.push_back({"layernorm grad + residual grad + dropout grad + bias grad",
               {{K::kLayerNormGrad, true}, {K::kGradAdd, true}, {K::kDropoutGrad, true}, {K::kBiasGrad, true}},
               {0, 1, 2},
               [](State& s, const Match& m) {
                 Args args;
                 std::vector<int> finish;
                 int grad_z = -1;
                 int64_t hidden = 0;
                 if (m[0]) {
                   const Op& ln = s.op(*m[0]);
                   args.insert({{"grad_out", ln.inputs[0]}, {"z", ln.inputs[1]}, {"mean", ln.inputs[2]},
                                {"rstd", ln.inputs[3]}, {"gamma", ln.inputs[4]}});
                   grad_z = ln.outputs[0];
                   finish = {ln.outputs[1], ln.outputs[2]};
                   hidden = cols_of(s, ln.inputs[0]);
                 }
                 if (m[1]) {
                   const Op& add = s.op(*m[1]);
                   if (grad_z >= 0) {
                     s.internal.insert(grad_z);
                     args["grad_residual"] = other_input(s, *m[1], grad_z);
                   } else {
                     args["grad_out"] = add.inputs[0];
                     args["grad_residual"] = add.inputs[1];
                   }
                   grad_z = add.outputs[0];
                   hidden = cols_of(s, add.inputs[0]);
                 }
                 if (grad_z >= 0) args["grad_z"] = grad_z;
                 if (m[2]) {
                   const Op& drop = s.op(*m[2]);
                   if (!args.count("grad_out")) args["grad_out"] = drop.inputs[0];
                   args["grad_branch"] = drop.outputs[0];
                   hidden = cols_of(s, drop.inputs[0]);
                 }
                 if (m[3]) finish.push_back(out0(s, m[3]));
                 emit(s, m,
                      codegen::ln_bwd(s.precision, {hidden, m[0].has_value(), m[1].has_value(),
                                                    m[3].has_value(), m[2].has_value()}),
                      args);
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
                      {{"grad_out", grad_in}, {"x", ag.inputs[1]}, {"bias", ag.inputs[2]}, {"grad_x", ag.outputs[0]}});
                 finish_partials(s, {out0(s, m[2])});
               }});
  r.push_back({"merge heads grad", {{K::kMergeHeadsGrad, false}}, {}, [](State& s, const Match& m) {
                 const Op& op = s.op(*m[0]);
                 const Shape& sh = s.g.tensor(op.outputs[0]).shape;
                 const int64_t heads = sh[2].factor, d = sh[4].factor;
                 emit(s, m, codegen::split_heads(s.precision, {heads * d, heads, op.attrs.parts, false}),
                      {{"in", op.inputs[0]}, {"out", op.outputs[0]}});
               }});
  r.push_back({"dropout grad + softmax grad", {{K::kDropoutGrad, true}, {K::kSoftmaxGrad, false}}, {},
               [](State& s, const Match& m) {
                 const Op& sg = s.op(*m[1]);
                 if (m[0]) mark_internal(s, {m[0]});
                 const int grad_in = m[0] ? s.op(*m[0]).inputs[0] : sg.inputs[0];
                 emit(s, m, codegen::softmax_bwd(s.precision, {false, false, m[0].has_value()}),
                      {{"grad_dropped", grad_in}, {"probs", sg.inputs[1]}, {"grad_scores", sg.outputs[0]}});
               }});
  r.push_back({"split heads grad + bias grad", {{K::kSplitHeadsGrad, false}, {K::kBiasGrad, true}}, {},
               [](State& s, const Match& m) {
                 const Op& op = s.op(*m[0]);
                 const Shape& sh = s.g.tensor(op.inputs[0]).shape;
                 const int64_t heads = sh[2].factor, d = sh[4].factor;
                 emit(s, m,
                      codegen::merge_heads(s.precision, {heads * d, heads, op.attrs.parts, m[1].has_value()}),
                      {{"in", op.inputs[0]}, {"out", op.outputs[0]}});
                 if (m[1]) finish_partials(s, {out0(s, m[1])});
               }});
  r.push_back({"dropout grad + layernorm grad + embedding grad",
               {{K::kDropoutGrad, true}, {K::kLayerNormGrad, true}, {K::kEmbeddingGrad, false}}, {},
               [](State& s, const Match& m) {
                 const Op& eg = s.op(*m[2]);
                 const int grad_in = m[0] ? s.op(*m[0]).inputs[0] : (m[1] ? s.op(*m[1]).inputs[0] : eg.inputs[0]);
                 Args args{{"grad_out", grad_in}, {"tokens", eg.inputs[1]}};
                 std::vector<int> ln_grads;
                 if (m[0]) mark_internal(s, {m[0]});
                 if (m[1]) {
                   const Op& ln = s.op(*m[1]);
                   args.insert({{"sum_out", ln.inputs[1]}, {"mean", ln.inputs[2]}, {"rstd", ln.inputs[3]},
                                {"gamma", ln.inputs[4]}});
                   s.internal.insert(ln.outputs[0]);
                   ln_grads = {ln.outputs[1], ln.outputs[2]};
                 }
                 const int64_t hidden = cols_of(s, grad_in);
                 const PositionKind pos = eg.outputs.size() > 1 ? PositionKind::kLearned : PositionKind::kSinusoidal;
                 emit(s, m, codegen::embedding_bwd(s.precision, {hidden, pos, m[1].has_value(), m[0].has_value()}),
                      args, "scatter-adds into fp32 gradient buffers the runtime zeroed");
                 finish_partials(s, ln_grads);
                 for (size_t i = 0; i < eg.outputs.size(); ++i) {
                   const int pg = eg.outputs[i];
                   KernelStep step = support_step(codegen::convert(s.precision), {}, {pg},
                                                  fmt::format("{} (=|+=) fp32 scatter buffer", s.g.tensor(pg).name));
                   step.args["out"] = pg;
                   step.partial_block = static_cast<int>(i);
                   s.out->push_back(std::move(step));
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
