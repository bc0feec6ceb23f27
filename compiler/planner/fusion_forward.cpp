// fusion_forward.cpp — the kernel-fusion rules of the forward (compiler/planner/kernel_fusion.cpp
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
#include "flash_attention.sig.cuh"
#include "layernorm.sig.cuh"
#include "reduce.sig.cuh"
#include "softmax.sig.cuh"

namespace lightseq::planner::fusion {

void add_forward_rules(std::vector<Rule>& r) {
  using K = OpKind;
  using kern::Drop;
  using kern::Norm;
  const Dim B = Dim::batch();
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
  r.push_back(
      {"mask + softmax + dropout",
       {{K::kAttentionMask, false}, {K::kSoftmax, false}, {K::kDropout, true}},
       {},
       [B](State& s, const Match& m) {
         const Op& mask = s.op(*m[0]);
         const Shape probs = s.g.tensor(out0(s, m[1])).shape;  // [B, heads, q, k]
         mark_internal(s, {m[0]});
         emit(s, m,
              instantiate(sig::kSoftmaxFwd, s.precision,
                          {tv("kMask", kern::mask_of(mask.attrs.padding_mask, mask.attrs.causal)),
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
  r.push_back(
      {"fused attention", {{K::kFlashAttention, false}}, {}, [](State& s, const Match& m) {
         const Op& op = s.op(*m[0]);
         // the plans' warps per block (the bench's A/B: kFlashFwdWarpsAlt)
         emit(s, m, flash_instance(s, sig::kFlashFwd, op, {{"kWarps", kern::kFlashFwdWarps}}),
              {{"q", op.inputs[0]},
               {"k", op.inputs[1]},
               {"v", op.inputs[2]},
               {"key_padding", op.inputs.size() > 3 ? op.inputs[3] : -1},
               {"out", op.outputs[0]},
               {"lse", op.outputs[1]}},
              flash_scalars(s, op, {op.inputs[0]}, {op.inputs[1], op.inputs[2]}, {op.outputs[0]}));
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
  r.push_back({"embedding + layernorm + dropout",
               {{K::kEmbedding, false}, {K::kLayerNorm, true}, {K::kDropout, true}},
               {},
               [B](State& s, const Match& m) {
                 const Op& e = s.op(*m[0]);
                 const bool learned = e.attrs.learned_positions, typed = e.attrs.token_types > 0;
                 const size_t types_at =
                     learned ? 3 : 2;  // inputs: tokens, table, [pos], [types, table]
                 Args args{{"tokens", e.inputs[0]},
                           {"token_table", e.inputs[1]},
                           {"pos_table", learned ? e.inputs[2] : -1},
                           {"token_types", typed ? e.inputs[types_at] : -1},
                           {"type_table", typed ? e.inputs[types_at + 1] : -1},
                           {"bad_token", e.outputs[1]},
                           {"pad_mask", e.outputs.size() > 2 ? e.outputs[2] : -1}};
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
                 Scalars scalars = embedding_row_scalars(e.attrs, B, seq);
                 scalars.insert({{"scale", ScalarArg::constant(e.attrs.scale)},
                                 {"eps", ScalarArg::constant(eps)}});
                 emit(s, m,
                      instantiate(sig::kEmbeddingFwd, s.precision,
                                  {{"kHidden", cols_of(s, e.inputs[1])},
                                   tv("kPos", pos_of(learned)),
                                   tv("kPosFrom", pos_from_of(e.attrs.positions_from)),
                                   on_off<Norm>("kNorm", m[1].has_value()),
                                   on_off<Drop>("kDrop", m[2].has_value())}),
                      args, scalars);
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
      {"cross-entropy gradient scale", {{K::kGradScale, false}}, {}, [](State& s, const Match& m) {
         const Op& op = s.op(*m[0]);
         emit(s, m, instantiate(sig::kCeGradScale, s.precision, {}),
              {{"targets", op.inputs[0]},
               {"loss_scale", op.inputs[1]},
               {"total_tokens", op.inputs[2]},
               {"grad_scale", op.outputs[0]},
               {"n_tokens", op.outputs[1]}},
              {{"rows", ScalarArg::size(Dim::tokens())},
               {"vocab", ScalarArg::constant(static_cast<double>(op.attrs.vocab))},
               {"ignore_index", ScalarArg::constant(static_cast<double>(op.attrs.ignore_index))}});
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
         if (h.clip_norm > 0) {
           const int partials = add_scratch(s, a.name + ".norm_partials", ElemType::kF32);
           s.out->push_back(make_step(
               instantiate(sig::kGradNorm, s.precision, {}),
               {{"chunks.grad", a.inputs[kAdamGrads]}, {"partials", partials}},
               {{"n_chunks", ScalarArg::chunks_of(param_index(sig::kGradNorm, "chunks"))}}, nullptr,
               "Σ grad² per chunk, for global-norm clipping"));
           adam_args["norm_partials"] = partials;
         }
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
              {"weight_decay", ScalarArg::constant(h.weight_decay)},
              {"max_norm", ScalarArg::constant(h.clip_norm)}},
             nullptr,
             h.clip_norm > 0 ? "lr, step and loss scale read from device memory; gradients "
                               "clipped to the global norm"
                             : "lr, step and loss scale read from device memory");
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
}

}  // namespace lightseq::planner::fusion
