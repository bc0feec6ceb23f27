// fusion_backward.cpp — the kernel-fusion rules of the backward (compiler/planner/kernel_fusion.cpp
// matches them; fusion_rules.h holds what they share).
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "adam.sig.cuh"
#include "attention.sig.cuh"
#include "bias_act_dropout.sig.cuh"
#include "compiler/errors.h"
#include "compiler/planner/fusion_rules.h"
#include "cross_entropy.sig.cuh"
#include "embedding.sig.cuh"
#include "embedding_grad.sig.cuh"
#include "flash_attention.sig.cuh"
#include "layernorm.sig.cuh"
#include "reduce.sig.cuh"
#include "softmax.sig.cuh"

namespace lightseq::planner::fusion {

namespace {

// The embedding backward: the LayerNorm statistics and parameter partials (with a LayerNorm), then
// for the token table (and a learned position table) the deterministic scatter of
// embedding_grad.cuh: group the rows by key, order each group by row, sum it in that order.
void emit_embedding_backward(State& s, const Match& m, Dim batch) {
  const Op& eg = s.op(*m[2]);
  const int grad_in = m[0] ? s.op(*m[0]).inputs[0] : (m[1] ? s.op(*m[1]).inputs[0] : eg.inputs[0]);
  const std::vector<int> param_grads = eg.outputs;
  const OpAttrs attrs = eg.attrs;
  const std::string name = eg.name;
  const int tokens = eg.inputs[1];
  const int types = eg.attrs.token_types > 0 ? eg.inputs[2] : -1;  // may be bound to null
  const Dim seq = s.g.tensor(tokens).shape[1];
  const Dim rows = rows_of(s, grad_in);
  const int64_t hidden = cols_of(s, grad_in);
  const bool norm = m[1].has_value();
  const Op* dropout_op = m[0] ? &s.op(*m[0]) : nullptr;
  const auto pos_from = tv("kPosFrom", pos_from_of(attrs.positions_from));
  const auto drop = on_off<kern::Drop>("kDrop", m[0].has_value());
  const Scalars rows_scalars = embedding_row_scalars(attrs, batch, seq);
  if (m[0]) mark_internal(s, {m[0]});
  // What the sums read: grad_out, and with a LayerNorm its saved input, statistics and gamma plus
  // the per-row backward statistics.
  Args sum_args{{"grad_out", grad_in}};
  if (norm) {
    const Op& ln = s.op(*m[1]);
    sum_args.insert({{"sum_out", ln.inputs[1]},
                     {"mean", ln.inputs[2]},
                     {"rstd", ln.inputs[3]},
                     {"gamma", ln.inputs[4]}});
    s.internal.insert(ln.outputs[0]);
    const std::vector<int> ln_grads{ln.outputs[1], ln.outputs[2]};
    const int row_stats = add_scratch(s, name + ".row_stats", ElemType::kF32);
    const int partials = add_scratch(s, name + ".partials", ElemType::kF32);
    sum_args["row_stats"] = row_stats;
    Args args = sum_args;
    args.erase("row_stats");
    args.insert({{"tokens", tokens},
                 {"token_types", types},
                 {"row_stats", row_stats},
                 {"partials", partials}});
    emit(s, m, instantiate(sig::kEmbeddingBwd, s.precision, {{"kHidden", hidden}, pos_from, drop}),
         args, rows_scalars, "LayerNorm backward statistics and parameter partials");
    finish_partials(s, partials, ln_grads, hidden);
  }
  // The tables' gradients, in the embed_grad op's order: token, [position], [type].
  std::vector<kern::Key> keys_of{kern::Key::kToken};
  if (attrs.learned_positions) keys_of.push_back(kern::Key::kPosition);
  if (attrs.token_types > 0) keys_of.push_back(kern::Key::kType);
  if (keys_of.size() != param_grads.size())
    throw InternalError("planner: embedding: gradients and tables disagree");
  for (size_t i = 0; i < param_grads.size(); ++i) {
    const kern::Key key = keys_of[i];
    const std::string what = key == kern::Key::kToken      ? "tokens"
                             : key == kern::Key::kPosition ? "positions"
                                                           : "types";
    const auto k = tv("kKey", key);
    const int64_t n_keys =
        kern::embedding_keys(key, attrs.vocab, attrs.max_positions, attrs.token_types);
    const int keys = add_scratch(s, fmt::format("{}.{}.keys", name, what), ElemType::kI32);
    const int groups = add_scratch(s, fmt::format("{}.{}.groups", name, what), ElemType::kI32);
    const int members = add_scratch(s, fmt::format("{}.{}.members", name, what), ElemType::kI32);
    const int order = add_scratch(s, fmt::format("{}.{}.order", name, what), ElemType::kI32);
    const Scalars per_key{{"rows", ScalarArg::size(rows)},
                          {"n_keys", ScalarArg::constant(static_cast<double>(n_keys))}};
    KernelInstance count = instantiate(sig::kEmbeddingGroupCount, s.precision, {k, pos_from});
    const Args count_args{
        {"tokens", tokens}, {"token_types", types}, {"keys", keys}, {"groups", groups}};
    const std::string note = fmt::format("group the rows by {} (deterministic scatter)", what);
    if (!norm && i == 0) {
      emit(s, m, std::move(count), count_args, rows_scalars, note);
    } else {
      s.out->push_back(make_step(std::move(count), count_args, rows_scalars, nullptr, note));
    }
    s.out->push_back(make_step(instantiate(sig::kEmbeddingGroupStart, s.precision, {k}),
                               {{"groups", groups}}, {{"n_keys", per_key.at("n_keys")}}, nullptr,
                               ""));
    s.out->push_back(make_step(instantiate(sig::kEmbeddingGroupPlace, s.precision, {k}),
                               {{"keys", keys}, {"groups", groups}, {"members", members}}, per_key,
                               nullptr, ""));
    s.out->push_back(
        make_step(instantiate(sig::kEmbeddingGroupOrder, s.precision, {k}),
                  {{"keys", keys}, {"groups", groups}, {"members", members}, {"order", order}},
                  per_key, nullptr, "each group sorted by row"));
    Args args = sum_args;
    args.insert({{"groups", groups}, {"order", order}, {"grad", param_grads[i]}});
    const double scale = key == kern::Key::kToken ? attrs.scale : 1.0;  // positions, types: 1
    s.out->push_back(make_step(
        instantiate(sig::kEmbeddingGrad, s.precision,
                    {{"kHidden", hidden}, on_off<kern::Norm>("kNorm", norm), drop}),
        args, {{"n_keys", per_key.at("n_keys")}, {"scale", ScalarArg::constant(scale)}}, dropout_op,
        fmt::format("{} (=|+=) each group's rows summed in row order",
                    s.g.tensor(param_grads[i]).name)));
  }
}

}  // namespace

void add_backward_rules(std::vector<Rule>& r) {
  using K = OpKind;
  using kern::Drop;
  using kern::Norm;
  const Dim B = Dim::batch();
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
  r.push_back(
      {"dropout grad + activation grad + bias grad",
       {{K::kDropoutGrad, true}, {K::kActivationGrad, false}, {K::kBiasGrad, false}},
       {},
       [](State& s, const Match& m) {
         const Op& ag = s.op(*m[1]);
         if (m[0]) mark_internal(s, {m[0]});
         const int grad_in = m[0] ? s.op(*m[0]).inputs[0] : ag.inputs[0];
         const int64_t cols = cols_of(s, ag.inputs[1]);
         const int partials = add_scratch(s, ag.name + ".partials", ElemType::kF32);
         const int bias_grad = out0(s, m[2]);
         if (ag.inputs.size() != 4) {  // graph.h, kActivationGrad
           throw InternalError(
               fmt::format("planner: '{}' has {} inputs, not the 4 of an "
                           "activation gradient",
                           ag.name, ag.inputs.size()));
         }
         // ReLU's derivative from the forward's output (ActFrom::kOutput): the
         // pre-activation is then not saved for the backward at all.
         const bool from_out = ag.attrs.activation == Activation::kRelu;
         if (!from_out && ag.inputs[2] < 0) {  // the kernel's bias is nullable for kOutput only
           throw InternalError(fmt::format(
               "planner: '{}': the activation's derivative at x + bias needs the bias", ag.name));
         }
         emit(s, m,
              instantiate(sig::kBiasActDropoutBwd, s.precision,
                          {{"kCols", cols},
                           tv("kAct", act_of(ag.attrs.activation)),
                           on_off<Drop>("kDrop", m[0].has_value()),
                           tv("kFrom", from_out ? kern::ActFrom::kOutput : kern::ActFrom::kInput)}),
              {{"grad_out", grad_in},
               {"x", from_out ? ag.inputs[3] : ag.inputs[1]},
               {"bias", from_out ? -1 : ag.inputs[2]},
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
  // The fused backward: D = Σ grad·out (no launch where one key block holds every key), grad k, v
  // (and then grad q and D too), grad q (no launch then); flash_attention.sig.cuh's grids decide
  // by k_len at run time.
  r.push_back(
      {"fused attention grad", {{K::kFlashAttentionGrad, false}}, {}, [](State& s, const Match& m) {
         const Op& op = s.op(*m[0]);
         const int q = op.inputs[0], lse = op.inputs[4], ctx = op.inputs[5];
         // The grad_k/grad_v launch writes grad_q too (one key block): grad_q must be a tensor
         // the runtime provides, never a gradient the caller may leave null (the executor skips a
         // step writing one, which would lose grad_k and grad_v).
         if (given_by_caller(s.g.tensor(op.outputs[0]).role)) {
           throw InternalError(fmt::format(
               "planner: '{}': grad_q is a caller's gradient; the fused backward needs it internal",
               op.name));
         }
         // inputs q, k, v, grad_out, lse, out (the forward's context), [key_padding]; outputs
         // grad_q, grad_k, grad_v: all in the token layout
         const Scalars scalars = flash_scalars(
             s, op, {q, op.outputs[0]}, {op.inputs[1], op.inputs[2], op.outputs[1], op.outputs[2]},
             {ctx, op.inputs[3]});
         const int dot = add_scratch(s, op.name + ".dot", ElemType::kF32, s.g.tensor(lse).shape);
         const std::string one_block = fmt::format(
             "launches nothing where the keys fit one block (k_len <= {}): "
             "flash_attn_bwd_dkdv does its work",
             kern::kFlashBwdBlockN);
         emit(s, m, instantiate(sig::kFlashDot, s.precision, {{"kD", op.attrs.attn.head_dim}}),
              {{"out", ctx}, {"grad_out", op.inputs[3]}, {"dot", dot}},
              {{"rows", ScalarArg::size(rows_of(s, ctx) * op.attrs.attn.heads)},
               {"heads", scalars.at("heads")},
               {"q_len", scalars.at("q_len")},
               {"k_len", scalars.at("k_len")}},
              one_block);
         Args args{{"q", q},
                   {"k", op.inputs[1]},
                   {"v", op.inputs[2]},
                   {"grad_out", op.inputs[3]},
                   {"lse", lse},
                   {"dot", dot},
                   {"key_padding", op.inputs.size() > 6 ? op.inputs[6] : -1},
                   {"grad_q", op.outputs[0]}};
         Args kv = args;
         kv.insert({{"out", ctx}, {"grad_k", op.outputs[1]}, {"grad_v", op.outputs[2]}});
         emit(s, m,
              flash_instance(s, sig::kFlashDkDv, op,
                             {{"kBlocks", kern::flash_bwd_blocks(op.attrs.attn.head_dim)}}),
              kv, scalars);
         emit(s, m, flash_instance(s, sig::kFlashDq, op), args, scalars, one_block);
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
  r.push_back({"dropout grad + layernorm grad + embedding grad",
               {{K::kDropoutGrad, true}, {K::kLayerNormGrad, true}, {K::kEmbeddingGrad, false}},
               {},
               [B](State& s, const Match& m) { emit_embedding_backward(s, m, B); }});
}

}  // namespace lightseq::planner::fusion
