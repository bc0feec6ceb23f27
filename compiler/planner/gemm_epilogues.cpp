// gemm_epilogues.cpp — pass 1: what each GEMM absorbs into its cuBLASLt epilogue.
#include <fmt/format.h>

#include <optional>

#include "compiler/errors.h"
#include "compiler/planner/passes.h"

namespace lightseq::planner {

std::vector<int> State::live_consumers(int tensor) const {
  std::vector<int> out;
  for (int c : g.consumers(tensor)) {
    if (c >= begin && c < end && !claimed[c]) out.push_back(c);
  }
  return out;
}

namespace {

void absorb(State& s, GemmStep& step, int op) {
  s.claimed[op] = 1;
  step.fused_ops.push_back(s.op(op).name);
}

// The cuBLASLt epilogue computing bias + `a` with an aux for its backward, if it has one: ReLU
// (aux: its bit mask) and the tanh GELU (aux: the pre-activation). The exact (erf) GELU has none:
// cuBLASLt's GELU epilogue is the tanh approximation, which differs from it by up to ~5e-4, so it
// stays in a generated kernel.
std::optional<Epilogue> bias_act_epilogue(Activation a) {
  if (a == Activation::kRelu) return Epilogue::kReluAuxBias;
  if (a == Activation::kGeluTanh) return Epilogue::kGeluAuxBias;
  return std::nullopt;
}

// gemm → bias_add → activation with no dropout after it: a bias + activation epilogue with its
// aux (bias_act_epilogue). A bias that no kernel rule can take goes into a plain bias epilogue.
void forward_epilogue(State& s, GemmStep& step) {
  const auto cons = s.live_consumers(step.d);
  if (cons.size() != 1 || s.op(cons[0]).kind != OpKind::kBiasAdd ||
      s.op(cons[0]).inputs[0] != step.d) {
    return;
  }
  const int bias_op = cons[0];
  const int biased = s.op(bias_op).outputs[0];
  const auto act = s.live_consumers(biased);
  const auto epilogue = act.size() == 1 && s.op(act[0]).kind == OpKind::kActivation
                            ? bias_act_epilogue(s.op(act[0]).attrs.activation)
                            : std::nullopt;
  if (epilogue) {
    const int act_out = s.op(act[0]).outputs[0];
    bool dropout_follows = false;
    for (int c : s.live_consumers(act_out)) dropout_follows |= s.op(c).kind == OpKind::kDropout;
    if (!dropout_follows) {
      step.epilogue = *epilogue;
      step.bias = s.op(bias_op).inputs[1];
      step.aux = biased;
      s.internal.insert(step.d);
      s.epilogue_aux[step.d] = biased;
      step.d = act_out;
      absorb(s, step, bias_op);
      absorb(s, step, act[0]);
      return;
    }
  }
  if (!kernel_rule_matches(s, bias_op)) {
    step.epilogue = Epilogue::kBias;
    step.bias = s.op(bias_op).inputs[1];
    s.internal.insert(step.d);
    step.d = biased;
    absorb(s, step, bias_op);
  }
}

// gemm → activation_grad → bias_grad, where the forward activation ran in an epilogue with aux.
void backward_activation_epilogue(State& s, GemmStep& step) {
  const auto cons = s.live_consumers(step.d);
  if (cons.size() != 1 || s.op(cons[0]).kind != OpKind::kActivationGrad) return;
  const Op& ag = s.op(cons[0]);
  if (ag.inputs[0] != step.d) return;
  auto aux = s.epilogue_aux.find(ag.inputs[1]);  // the pre-bias GEMM output of the forward
  if (aux == s.epilogue_aux.end()) return;
  const auto bg = s.live_consumers(ag.outputs[0]);
  int bias_grad_op = -1;
  for (int c : bg) {
    if (s.op(c).kind == OpKind::kBiasGrad) bias_grad_op = c;
  }
  if (bias_grad_op < 0) return;
  step.epilogue =
      ag.attrs.activation == Activation::kRelu ? Epilogue::kDReluBGrad : Epilogue::kDGeluBGrad;
  if (ag.attrs.activation == Activation::kGelu) {
    throw InternalError(fmt::format("{}: the erf GELU has no cuBLASLt epilogue", ag.name));
  }
  step.aux = aux->second;
  s.internal.insert(step.d);
  step.d = ag.outputs[0];
  step.bias_grad = s.op(bias_grad_op).outputs[0];
  absorb(s, step, cons[0]);
  absorb(s, step, bias_grad_op);
}

// gemm → grad_add: the residual gradient becomes C with beta = 1.
void residual_gradient(State& s, GemmStep& step) {
  const auto cons = s.live_consumers(step.d);
  if (cons.size() != 1 || s.op(cons[0]).kind != OpKind::kGradAdd) return;
  const Op& add = s.op(cons[0]);
  step.c = add.inputs[0] == step.d ? add.inputs[1] : add.inputs[0];
  s.internal.insert(step.d);
  step.d = add.outputs[0];
  absorb(s, step, cons[0]);
}

// A bias gradient no kernel took, of this GEMM's transposed A operand (the weight-gradient GEMM).
void bias_gradient_of_a(State& s, GemmStep& step) {
  if (step.attrs.trans_a != Transpose::kYes || step.epilogue != Epilogue::kNone) return;
  auto it = s.deferred_bgrad.find(step.a);
  if (it == s.deferred_bgrad.end()) return;
  step.epilogue = Epilogue::kBGradA;
  step.bias_grad = s.op(it->second).outputs[0];
  absorb(s, step, it->second);
  s.deferred_bgrad.erase(it);
}

}  // namespace

void plan_gemm(State& s, int op) {
  const Op& o = s.op(op);
  GemmStep step;
  step.name = o.name;
  step.attrs = o.attrs;
  step.a = o.inputs[0];
  step.b = o.inputs[1];
  step.d = o.outputs[0];
  step.accumulate = o.attrs.accumulate_output;
  s.claimed[op] = 1;
  forward_epilogue(s, step);
  if (step.epilogue == Epilogue::kNone) backward_activation_epilogue(s, step);
  if (step.epilogue == Epilogue::kNone && !step.accumulate) residual_gradient(s, step);
  bias_gradient_of_a(s, step);
  s.out->push_back(std::move(step));
}

}  // namespace lightseq::planner
