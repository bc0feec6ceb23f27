// kernel_fusion.cpp — pass 2: fusion rules that turn chains of elementwise and row-reduction ops
// into generated kernel launches (docs/kernels.md). A rule is a sequence of op kinds, some
// optional, matched on consecutive unclaimed ops where each reads the previous one's output.
#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <optional>
#include <set>

#include "adam.sig.cuh"
#include "attention.sig.cuh"
#include "bias_act_dropout.sig.cuh"
#include "compiler/errors.h"
#include "compiler/planner/passes.h"
#include "cross_entropy.sig.cuh"
#include "embedding.sig.cuh"
#include "layernorm.sig.cuh"
#include "reduce.sig.cuh"
#include "softmax.sig.cuh"

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
    throw InternalError(
        fmt::format("planner: '{}' has no constant last dimension", s.g.tensor(tensor).name));
  }
  return sh.back().factor;
}

using Args = std::map<std::string, int>;           // pointer parameters by name → tensor id
using Scalars = std::map<std::string, ScalarArg>;  // scalar parameters by name

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
          std::string note = "") {
  const Op* dropout_op = nullptr;
  std::vector<std::string> fused;
  for (const auto& op : m) {
    if (!op) continue;
    const Op& o = s.op(*op);
    fused.push_back(o.name);
    if (o.kind == OpKind::kDropout || o.kind == OpKind::kDropoutGrad) dropout_op = &o;
    s.claimed[*op] = 1;
  }
  KernelStep step = make_step(std::move(k), args, scalars, dropout_op, std::move(note));
  step.fused_ops = std::move(fused);
  s.out->push_back(std::move(step));
}

// A scratch tensor for the kernel step about to be emitted: a fixed shape, or (empty shape) sized
// by the kernel's signature at run time.
int add_scratch(State& s, const std::string& name, ElemType type, Shape shape = {}) {
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
void finish_partials(State& s, int partials, const std::vector<int>& param_grads, int64_t width) {
  for (size_t i = 0; i < param_grads.size(); ++i) {
    const int pg = param_grads[i];
    s.out->push_back(make_step(
        instantiate(sig::kColumnSum, s.precision, {}), {{"partials", partials}, {"out", pg}},
        {{"n_blocks", ScalarArg::rows_of(partials)},
         {"stride", ScalarArg::cols_of(partials)},
         {"col_offset", ScalarArg::constant(static_cast<double>(i) * width)},
         {"cols", ScalarArg::constant(static_cast<double>(width))}},
        nullptr, fmt::format("{} = Σ of per-block partials", s.g.tensor(pg).name)));
  }
}

void mark_internal(State& s, std::initializer_list<std::optional<int>> tensors_of_ops) {
  for (const auto& op : tensors_of_ops) {
    if (op) s.internal.insert(out0(s, op));
  }
}

kern::Act act_of(Activation a) {
  return a == Activation::kRelu ? kern::Act::kRelu : kern::Act::kGelu;
}
kern::Pos pos_of(bool learned) { return learned ? kern::Pos::kLearned : kern::Pos::kSinusoidal; }

std::vector<Rule> make_rules() {
  using K = OpKind;
  using kern::Drop;
  using kern::Norm;
  const Dim B = Dim::batch();
  std::vector<Rule> r;
  // ---- forward ----
  r.push_back({"bias + split heads",
               {{K::kBiasAdd, false}, {K::kSplitHeads, false}},
               {},
               [B](State& s, const Match& m) {
                 const Op& b = s.op(*m[0]);
                 const Op& sp = s.op(*m[1]);
                 const Shape out = s.g.tensor(sp.outputs[0]).shape;  // [parts, B, heads, seq, d]
                 const int64_t hidden = cols_of(s, b.inputs[0]) / sp.attrs.parts;
                 mark_internal(s, {m[0]});
                 emit(s, m,
                      instantiate(sig::kSplitHeads, s.precision,
                                  {{"kHidden", hidden},
                                   {"kHeads", out[2].factor},
                                   {"kParts", sp.attrs.parts},
                                   tv("kBias", kern::BiasAdd::kOn)}),
                      {{"in", b.inputs[0]}, {"bias", b.inputs[1]}, {"out", sp.outputs[0]}},
                      {{"batch", ScalarArg::size(B)}, {"seq", ScalarArg::size(out[3])}});
               }});
  r.push_back({"mask + softmax + dropout",
               {{K::kAttentionMask, false}, {K::kSoftmax, false}, {K::kDropout, true}},
               {},
               [B](State& s, const Match& m) {
                 const Op& mask = s.op(*m[0]);
                 const Shape probs = s.g.tensor(out0(s, m[1])).shape;  // [B, heads, q, k]
                 const int bits = (mask.attrs.padding_mask ? 1 : 0) | (mask.attrs.causal ? 2 : 0);
                 mark_internal(s, {m[0]});
                 emit(s, m,
                      instantiate(sig::kSoftmaxFwd, s.precision,
                                  {tv("kMask", static_cast<kern::Mask>(bits)),
                                   on_off<Drop>("kDrop", m[2].has_value())}),
                      {{"scores", mask.inputs[0]},
                       {"key_padding", mask.inputs.size() > 1 ? mask.inputs[1] : -1},
                       {"probs", out0(s, m[1])},
                       {"probs_dropped", m[2] ? out0(s, m[2]) : -1}},
                      {{"batch", ScalarArg::size(B)},
                       {"heads", ScalarArg::constant(static_cast<double>(probs[1].factor))},
                       {"q_len", ScalarArg::size(probs[2])},
                       {"k_len", ScalarArg::size(probs[3])}});
               }});
  r.push_back({"merge heads", {{K::kMergeHeads, false}}, {}, [B](State& s, const Match& m) {
                 const Op& op = s.op(*m[0]);
                 const Shape in = s.g.tensor(op.inputs[0]).shape;  // [parts, B, heads, seq, d]
                 emit(s, m,
                      instantiate(sig::kMergeHeads, s.precision,
                                  {{"kHidden", in[2].factor * in[4].factor},
                                   {"kHeads", in[2].factor},
                                   {"kParts", op.attrs.parts},
                                   tv("kBiasGrad", kern::BiasGrad::kOff)}),
                      {{"in", op.inputs[0]}, {"out", op.outputs[0]}},
                      {{"batch", ScalarArg::size(B)}, {"seq", ScalarArg::size(in[3])}});
               }});
  r.push_back(
      {"bias + dropout + residual + layernorm",
       {{K::kBiasAdd, false}, {K::kDropout, true}, {K::kResidualAdd, false}, {K::kLayerNorm, true}},
       {},
       [](State& s, const Match& m) {
         const Op& b = s.op(*m[0]);
         const int branch_end = m[1] ? out0(s, m[1]) : out0(s, m[0]);
         Args args{{"branch", b.inputs[0]},
                   {"bias", b.inputs[1]},
                   {"residual", other_input(s, *m[2], branch_end)},
                   {"sum_out", out0(s, m[2])}};
         double eps = 0;
         if (m[3]) {
           const Op& ln = s.op(*m[3]);
           args.insert({{"gamma", ln.inputs[1]},
                        {"beta", ln.inputs[2]},
                        {"norm_out", ln.outputs[0]},
                        {"mean", ln.outputs[1]},
                        {"rstd", ln.outputs[2]}});
           eps = ln.attrs.eps;
         }
         mark_internal(s, {m[0], m[1]});
         emit(s, m,
              instantiate(sig::kLnFwd, s.precision,
                          {{"kHidden", cols_of(s, b.inputs[0])},
                           tv("kBranch", kern::Branch::kBiasDropoutResidual),
                           on_off<Norm>("kNorm", m[3].has_value()),
                           on_off<Drop>("kDrop", m[1].has_value())}),
              args,
              {{"rows", ScalarArg::size(rows_of(s, b.inputs[0]))},
               {"eps", ScalarArg::constant(eps)}});
       }});
  r.push_back({"layernorm", {{K::kLayerNorm, false}}, {}, [](State& s, const Match& m) {
                 const Op& ln = s.op(*m[0]);
                 emit(s, m,
                      instantiate(sig::kLnFwd, s.precision,
                                  {{"kHidden", cols_of(s, ln.inputs[0])},
                                   tv("kBranch", kern::Branch::kNone),
                                   tv("kNorm", Norm::kOn),
                                   tv("kDrop", Drop::kOff)}),
                      {{"residual", ln.inputs[0]},
                       {"gamma", ln.inputs[1]},
                       {"beta", ln.inputs[2]},
                       {"norm_out", ln.outputs[0]},
                       {"mean", ln.outputs[1]},
                       {"rstd", ln.outputs[2]}},
                      {{"rows", ScalarArg::size(rows_of(s, ln.inputs[0]))},
                       {"eps", ScalarArg::constant(ln.attrs.eps)}});
               }});
  r.push_back({"bias + activation + dropout",
               {{K::kBiasAdd, false}, {K::kActivation, false}, {K::kDropout, true}},
               {},
               [](State& s, const Match& m) {
                 const Op& b = s.op(*m[0]);
                 mark_internal(s, {m[0]});
                 if (m[2]) mark_internal(s, {m[1]});
                 emit(s, m,
                      instantiate(sig::kBiasActDropoutFwd, s.precision,
                                  {{"kCols", cols_of(s, b.inputs[0])},
                                   tv("kAct", act_of(s.op(*m[1]).attrs.activation)),
                                   on_off<Drop>("kDrop", m[2].has_value())}),
                      {{"x", b.inputs[0]},
                       {"bias", b.inputs[1]},
                       {"out", m[2] ? out0(s, m[2]) : out0(s, m[1])}},
                      {{"rows", ScalarArg::size(rows_of(s, b.inputs[0]))}});
               }});
  r.push_back(
      {"embedding + layernorm + dropout",
       {{K::kEmbedding, false}, {K::kLayerNorm, true}, {K::kDropout, true}},
       {},
       [B](State& s, const Match& m) {
         const Op& e = s.op(*m[0]);
         const bool learned = e.inputs.size() > 2;
         Args args{{"tokens", e.inputs[0]},
                   {"token_table", e.inputs[1]},
                   {"pos_table", learned ? e.inputs[2] : -1},
                   {"bad_token", e.outputs[1]}};
         int last = out0(s, m[0]);
         double eps = 0;
         if (m[1]) {
           const Op& ln = s.op(*m[1]);
           args.insert({{"gamma", ln.inputs[1]},
                        {"beta", ln.inputs[2]},
                        {"sum_out", last},
                        {"mean", ln.outputs[1]},
                        {"rstd", ln.outputs[2]}});
           last = ln.outputs[0];
           eps = ln.attrs.eps;
         }
         if (m[2]) {
           s.internal.insert(last);
           last = out0(s, m[2]);
         }
         args["out"] = last;
         const Dim seq = s.g.tensor(e.inputs[0]).shape[1];
         emit(s, m,
              instantiate(sig::kEmbeddingFwd, s.precision,
                          {{"kHidden", cols_of(s, e.inputs[1])},
                           tv("kPos", pos_of(learned)),
                           on_off<Norm>("kNorm", m[1].has_value()),
                           on_off<Drop>("kDrop", m[2].has_value())}),
              args,
              {{"batch", ScalarArg::size(B)},
               {"seq", ScalarArg::size(seq)},
               {"vocab", ScalarArg::constant(static_cast<double>(e.attrs.vocab))},
               {"padding_idx", ScalarArg::constant(static_cast<double>(e.attrs.padding_idx))},
               {"max_positions", ScalarArg::constant(static_cast<double>(e.attrs.max_positions))},
               {"scale", ScalarArg::constant(e.attrs.scale)},
               {"eps", ScalarArg::constant(eps)}});
       }});
  r.push_back(
      {"cross-entropy forward + backward",
       {{K::kCrossEntropy, false}},
       {},
       [](State& s, const Match& m) {
         const Op& ce = s.op(*m[0]);
         emit(s, m,
              instantiate(sig::kCrossEntropy, s.precision, {{"kVocab", cols_of(s, ce.inputs[0])}}),
              {{"logits", ce.inputs[0]},
               {"targets", ce.inputs[1]},
               {"loss", ce.outputs[0]},
               {"nll", ce.outputs[1]},
               {"grad_logits", ce.outputs[2]},
               {"bad_target", ce.outputs[3]},
               {"grad_scale", ce.inputs[2]}},
              {{"rows", ScalarArg::size(rows_of(s, ce.inputs[0]))},
               {"ignore_index", ScalarArg::constant(static_cast<double>(ce.attrs.ignore_index))},
               {"label_smoothing", ScalarArg::constant(ce.attrs.label_smoothing)}});
       }});
  r.push_back(
      {"adam", {{K::kAdam, false}}, {}, [](State& s, const Match& m) {
         const Op& a = s.op(*m[0]);
         const OpAttrs::Adam& h = a.attrs.adam;
         const int state = a.inputs[kAdamState];
         // One chunk table over the flat arenas (Role::kTensorList), built by the runtime.
         Args list{{"chunks.param", a.inputs[kAdamParams]},
                   {"chunks.grad", a.inputs[kAdamGrads]},
                   {"chunks.exp_avg", a.inputs[kAdamExpAvg]},
                   {"chunks.exp_avg_sq", a.inputs[kAdamExpAvgSq]}};
         if (a.inputs.size() > kAdamMaster) list["chunks.master"] = a.inputs[kAdamMaster];
         const int chunks = param_index(sig::kAdam, "chunks");
         s.claimed[*m[0]] = 1;
         if (h.growth_interval > 0) {
           s.out->push_back(make_step(
               instantiate(sig::kCheckFinite, s.precision, {}),
               {{"chunks.grad", a.inputs[kAdamGrads]}, {"state", state}},
               {{"n_chunks", ScalarArg::chunks_of(param_index(sig::kCheckFinite, "chunks"))}},
               nullptr, "dynamic loss scaling: an inf/NaN gradient skips the step"));
         }
         Args adam_args = list;
         adam_args.insert({{"lr", a.inputs[kAdamLr]}, {"state", state}});
         KernelStep step = make_step(
             instantiate(
                 sig::kAdam, s.precision,
                 {tv("kMode", a.attrs.optimizer == OptimizerKind::kAdamW ? kern::AdamMode::kAdamW
                                                                         : kern::AdamMode::kAdam)}),
             adam_args,
             {{"n_chunks", ScalarArg::chunks_of(chunks)},
              {"beta1", ScalarArg::constant(h.beta1)},
              {"beta2", ScalarArg::constant(h.beta2)},
              {"eps", ScalarArg::constant(h.eps)},
              {"weight_decay", ScalarArg::constant(h.weight_decay)}},
             nullptr, "lr, step and loss scale read from device memory");
         step.fused_ops = {a.name};
         s.out->push_back(std::move(step));
         s.out->push_back(make_step(
             instantiate(sig::kOptimFinish, s.precision, {}), {{"state", state}},
             {{"growth_factor", ScalarArg::constant(h.growth_factor)},
              {"backoff_factor", ScalarArg::constant(h.backoff_factor)},
              {"growth_interval", ScalarArg::constant(h.growth_interval)}},
             nullptr,
             h.growth_interval > 0 ? "step += 1 or loss scale backed off; found_inf cleared"
                                   : "step += 1"));
       }});
  // ---- backward ----
  r.push_back({"layernorm grad + residual grad + dropout grad + bias grad",
               {{K::kLayerNormGrad, true},
                {K::kGradAdd, true},
                {K::kDropoutGrad, true},
                {K::kBiasGrad, true}},
               {0, 1, 2},
               [](State& s, const Match& m) {
                 Args args;
                 std::vector<int> finish;
                 int grad_z = -1;
                 int64_t hidden = 0;
                 if (m[0]) {
                   const Op& ln = s.op(*m[0]);
                   args.insert({{"grad_out", ln.inputs[0]},
                                {"z", ln.inputs[1]},
                                {"mean", ln.inputs[2]},
                                {"rstd", ln.inputs[3]},
                                {"gamma", ln.inputs[4]}});
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
                 const int first = *(m[0] ? m[0] : m[1] ? m[1] : m[2] ? m[2] : m[3]);
                 const int partials =
                     finish.empty()
                         ? -1
                         : add_scratch(s, s.op(first).name + ".partials", ElemType::kF32);
                 if (partials >= 0) args["partials"] = partials;
                 const Dim rows = rows_of(s, args.at("grad_out"));
                 emit(s, m,
                      instantiate(sig::kLnBwd, s.precision,
                                  {{"kHidden", hidden},
                                   on_off<Norm>("kNorm", m[0].has_value()),
                                   on_off<kern::ResidualIn>("kRes", m[1].has_value()),
                                   on_off<kern::BranchOut>("kBranchOut", m[3].has_value()),
                                   on_off<Drop>("kDrop", m[2].has_value())}),
                      args, {{"rows", ScalarArg::size(rows)}});
                 if (partials >= 0) finish_partials(s, partials, finish, hidden);
               }});
  r.push_back({"dropout grad + activation grad + bias grad",
               {{K::kDropoutGrad, true}, {K::kActivationGrad, false}, {K::kBiasGrad, false}},
               {},
               [](State& s, const Match& m) {
                 const Op& ag = s.op(*m[1]);
                 if (m[0]) mark_internal(s, {m[0]});
                 const int grad_in = m[0] ? s.op(*m[0]).inputs[0] : ag.inputs[0];
                 const int64_t cols = cols_of(s, ag.inputs[1]);
                 const int partials = add_scratch(s, ag.name + ".partials", ElemType::kF32);
                 const int bias_grad = out0(s, m[2]);
                 emit(s, m,
                      instantiate(sig::kBiasActDropoutBwd, s.precision,
                                  {{"kCols", cols},
                                   tv("kAct", act_of(s.op(*m[1]).attrs.activation)),
                                   on_off<Drop>("kDrop", m[0].has_value())}),
                      {{"grad_out", grad_in},
                       {"x", ag.inputs[1]},
                       {"bias", ag.inputs[2]},
                       {"grad_x", ag.outputs[0]},
                       {"partials", partials}},
                      {{"rows", ScalarArg::size(rows_of(s, ag.inputs[1]))}});
                 finish_partials(s, partials, {bias_grad}, cols);
               }});
  r.push_back(
      {"merge heads grad", {{K::kMergeHeadsGrad, false}}, {}, [B](State& s, const Match& m) {
         const Op& op = s.op(*m[0]);
         const Shape out = s.g.tensor(op.outputs[0]).shape;  // [parts, B, heads, seq, d]
         emit(s, m,
              instantiate(sig::kSplitHeads, s.precision,
                          {{"kHidden", out[2].factor * out[4].factor},
                           {"kHeads", out[2].factor},
                           {"kParts", op.attrs.parts},
                           tv("kBias", kern::BiasAdd::kOff)}),
              {{"in", op.inputs[0]}, {"out", op.outputs[0]}},
              {{"batch", ScalarArg::size(B)}, {"seq", ScalarArg::size(out[3])}});
       }});
  r.push_back(
      {"dropout grad + softmax grad",
       {{K::kDropoutGrad, true}, {K::kSoftmaxGrad, false}},
       {},
       [](State& s, const Match& m) {
         const Op& sg = s.op(*m[1]);
         if (m[0]) mark_internal(s, {m[0]});
         const int grad_in = m[0] ? s.op(*m[0]).inputs[0] : sg.inputs[0];
         const Shape probs = s.g.tensor(sg.inputs[1]).shape;  // [B, heads, q, k]
         emit(s, m,
              instantiate(sig::kSoftmaxBwd, s.precision, {on_off<Drop>("kDrop", m[0].has_value())}),
              {{"grad_dropped", grad_in}, {"probs", sg.inputs[1]}, {"grad_scores", sg.outputs[0]}},
              {{"rows", ScalarArg::size(rows_of(s, sg.inputs[1]))},
               {"k_len", ScalarArg::size(probs[3])}});
       }});
  r.push_back({"split heads grad + bias grad",
               {{K::kSplitHeadsGrad, false}, {K::kBiasGrad, true}},
               {},
               [B](State& s, const Match& m) {
                 const Op& op = s.op(*m[0]);
                 const Shape in = s.g.tensor(op.inputs[0]).shape;  // [parts, B, heads, seq, d]
                 const int64_t hidden = in[2].factor * in[4].factor;
                 Args args{{"in", op.inputs[0]}, {"out", op.outputs[0]}};
                 const int partials =
                     m[1] ? add_scratch(s, op.name + ".partials", ElemType::kF32) : -1;
                 if (partials >= 0) args["partials"] = partials;
                 emit(s, m,
                      instantiate(sig::kMergeHeads, s.precision,
                                  {{"kHidden", hidden},
                                   {"kHeads", in[2].factor},
                                   {"kParts", op.attrs.parts},
                                   on_off<kern::BiasGrad>("kBiasGrad", m[1].has_value())}),
                      args, {{"batch", ScalarArg::size(B)}, {"seq", ScalarArg::size(in[3])}});
                 if (m[1]) finish_partials(s, partials, {out0(s, m[1])}, op.attrs.parts * hidden);
               }});
  r.push_back(
      {"dropout grad + layernorm grad + embedding grad",
       {{K::kDropoutGrad, true}, {K::kLayerNormGrad, true}, {K::kEmbeddingGrad, false}},
       {},
       [B](State& s, const Match& m) {
         const Op& eg = s.op(*m[2]);
         const int grad_in =
             m[0] ? s.op(*m[0]).inputs[0] : (m[1] ? s.op(*m[1]).inputs[0] : eg.inputs[0]);
         const std::vector<int> param_grads = eg.outputs;
         const OpAttrs attrs = eg.attrs;
         const std::string name = eg.name;
         const int tokens = eg.inputs[1];
         const Dim seq = s.g.tensor(tokens).shape[1];
         const int64_t hidden = cols_of(s, grad_in);
         Args args{{"grad_out", grad_in}, {"tokens", tokens}};
         std::vector<int> ln_grads;
         if (m[0]) mark_internal(s, {m[0]});
         if (m[1]) {
           const Op& ln = s.op(*m[1]);
           args.insert({{"sum_out", ln.inputs[1]},
                        {"mean", ln.inputs[2]},
                        {"rstd", ln.inputs[3]},
                        {"gamma", ln.inputs[4]}});
           s.internal.insert(ln.outputs[0]);
           ln_grads = {ln.outputs[1], ln.outputs[2]};
         }
         const bool learned = param_grads.size() > 1;
         // fp32 scatter targets, zeroed by the runtime, then converted into the gradients.
         std::vector<int> scatter;
         for (int pg : param_grads) {
           scatter.push_back(
               add_scratch(s, s.g.tensor(pg).name + ".fp32", ElemType::kF32, s.g.tensor(pg).shape));
         }
         args["grad_table"] = scatter[0];
         if (learned) args["grad_pos"] = scatter[1];
         const int partials = m[1] ? add_scratch(s, name + ".partials", ElemType::kF32) : -1;
         if (partials >= 0) args["partials"] = partials;
         emit(s, m,
              instantiate(sig::kEmbeddingBwd, s.precision,
                          {{"kHidden", hidden},
                           tv("kPos", pos_of(learned)),
                           on_off<Norm>("kNorm", m[1].has_value()),
                           on_off<Drop>("kDrop", m[0].has_value())}),
              args,
              {{"batch", ScalarArg::size(B)},
               {"seq", ScalarArg::size(seq)},
               {"vocab", ScalarArg::constant(static_cast<double>(attrs.vocab))},
               {"padding_idx", ScalarArg::constant(static_cast<double>(attrs.padding_idx))},
               {"max_positions", ScalarArg::constant(static_cast<double>(attrs.max_positions))},
               {"scale", ScalarArg::constant(attrs.scale)}},
              "scatter-adds into fp32 gradient buffers the runtime zeroed");
         if (partials >= 0) finish_partials(s, partials, ln_grads, hidden);
         for (size_t i = 0; i < param_grads.size(); ++i) {
           const int pg = param_grads[i];
           s.out->push_back(make_step(
               instantiate(sig::kConvert, s.precision, {}), {{"in", scatter[i]}, {"out", pg}},
               {{"n", ScalarArg::size(shape_numel(s.g.tensor(pg).shape))}}, nullptr,
               fmt::format("{} (=|+=) fp32 scatter buffer", s.g.tensor(pg).name)));
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
