#include "compiler/codegen/instances.h"

#include <fmt/format.h>

#include "compiler/errors.h"
#include "common/launch.cuh"

namespace lightseq::codegen {

namespace {

constexpr const char* kNs = "lightseq::kern::";

std::string en(const char* type, const char* value) { return fmt::format("{}{}::{}", kNs, type, value); }
std::string on_off(const char* type, bool on) { return en(type, on ? "kOn" : "kOff"); }
const char* on_off_label(bool on) { return on ? "on" : "off"; }

KernelInstance make(std::string family, std::string kernel, std::vector<std::string> args,
                    std::string label) {
  return KernelInstance{std::move(family), std::move(kernel), std::move(args), std::move(label)};
}

std::string act_arg(Activation a) {
  switch (a) {
    case Activation::kRelu: return en("Act", "kRelu");
    case Activation::kGelu: return en("Act", "kGelu");
  }
  throw InternalError("codegen: unknown activation");
}

}  // namespace

std::string cuda_type(Precision p) {
  switch (p) {
    case Precision::kFp32: return "float";
    case Precision::kFp16: return "__half";
    case Precision::kBf16: return "__nv_bfloat16";
  }
  throw InternalError("codegen: unknown precision");
}

int vec_width(Precision p, int64_t cols) { return kern::vec_width(element_bytes(p), cols); }

KernelInstance ln_fwd(Precision p, const LnFwd& c) {
  const int vec = vec_width(p, c.hidden);
  return make("layernorm", "ln_fwd_kernel",
              {cuda_type(p), std::to_string(c.hidden), std::to_string(vec),
               en("Branch", c.branch ? "kBiasDropoutResidual" : "kNone"), on_off("Norm", c.norm),
               on_off("Drop", c.dropout)},
              fmt::format("ln_fwd:{}:h={}:vec={}:branch={}:norm={}:drop={}", to_string(p), c.hidden,
                          vec, c.branch ? "bias_dropout_residual" : "none", on_off_label(c.norm),
                          on_off_label(c.dropout)));
}

KernelInstance ln_bwd(Precision p, const LnBwd& c) {
  const int vec = vec_width(p, c.hidden);
  return make("layernorm", "ln_bwd_kernel",
              {cuda_type(p), std::to_string(c.hidden), std::to_string(vec), on_off("Norm", c.norm),
               on_off("ResidualIn", c.residual_in), on_off("BranchOut", c.branch_out),
               on_off("Drop", c.dropout)},
              fmt::format("ln_bwd:{}:h={}:vec={}:norm={}:residual_in={}:branch_out={}:drop={}",
                          to_string(p), c.hidden, vec, on_off_label(c.norm),
                          on_off_label(c.residual_in), on_off_label(c.branch_out),
                          on_off_label(c.dropout)));
}

KernelInstance bias_act_dropout_fwd(Precision p, const BiasAct& c) {
  const int vec = vec_width(p, c.cols);
  return make("bias_act_dropout", "bias_act_dropout_fwd_kernel",
              {cuda_type(p), std::to_string(c.cols), std::to_string(vec), act_arg(c.act),
               on_off("Drop", c.dropout)},
              fmt::format("bias_act_dropout_fwd:{}:cols={}:vec={}:act={}:drop={}", to_string(p),
                          c.cols, vec, to_string(c.act), on_off_label(c.dropout)));
}

KernelInstance bias_act_dropout_bwd(Precision p, const BiasAct& c) {
  const int vec = vec_width(p, c.cols);
  return make("bias_act_dropout", "bias_act_dropout_bwd_kernel",
              {cuda_type(p), std::to_string(c.cols), std::to_string(vec), act_arg(c.act),
               on_off("Drop", c.dropout)},
              fmt::format("bias_act_dropout_bwd:{}:cols={}:vec={}:act={}:drop={}", to_string(p),
                          c.cols, vec, to_string(c.act), on_off_label(c.dropout)));
}

KernelInstance split_heads(Precision p, const Heads& c) {
  return make("attention", "split_heads_kernel",
              {cuda_type(p), std::to_string(c.hidden), std::to_string(c.heads),
               std::to_string(c.parts), on_off("BiasAdd", c.bias)},
              fmt::format("split_heads:{}:h={}:heads={}:parts={}:bias={}", to_string(p), c.hidden,
                          c.heads, c.parts, on_off_label(c.bias)));
}

KernelInstance merge_heads(Precision p, const Heads& c) {
  return make("attention", "merge_heads_kernel",
              {cuda_type(p), std::to_string(c.hidden), std::to_string(c.heads),
               std::to_string(c.parts), on_off("BiasGrad", c.bias)},
              fmt::format("merge_heads:{}:h={}:heads={}:parts={}:bias_grad={}", to_string(p),
                          c.hidden, c.heads, c.parts, on_off_label(c.bias)));
}

KernelInstance softmax_fwd(Precision p, const Softmax& c) {
  const char* mask = c.padding ? (c.causal ? "kPaddingCausal" : "kPadding")
                               : (c.causal ? "kCausal" : "kNone");
  const char* mask_label = c.padding ? (c.causal ? "padding+causal" : "padding")
                                     : (c.causal ? "causal" : "none");
  return make("softmax", "attn_softmax_fwd_kernel",
              {cuda_type(p), std::to_string(kern::kSoftmaxDefaultThreads), en("Mask", mask),
               on_off("Drop", c.dropout)},
              fmt::format("attn_softmax_fwd:{}:threads={}:mask={}:drop={}", to_string(p),
                          kern::kSoftmaxDefaultThreads, mask_label, on_off_label(c.dropout)));
}

KernelInstance softmax_bwd(Precision p, const Softmax& c) {
  return make("softmax", "attn_softmax_bwd_kernel",
              {cuda_type(p), std::to_string(kern::kSoftmaxDefaultThreads), on_off("Drop", c.dropout)},
              fmt::format("attn_softmax_bwd:{}:threads={}:drop={}", to_string(p), kern::kSoftmaxDefaultThreads,
                          on_off_label(c.dropout)));
}

namespace {
KernelInstance embedding(Precision p, const Embedding& c, const char* kernel, const char* tag) {
  const int vec = vec_width(p, c.hidden);
  const char* pos = c.positions == PositionKind::kLearned ? "kLearned" : "kSinusoidal";
  return make("embedding", kernel,
              {cuda_type(p), std::to_string(c.hidden), std::to_string(vec), en("Pos", pos),
               on_off("Norm", c.layernorm), on_off("Drop", c.dropout)},
              fmt::format("{}:{}:h={}:vec={}:pos={}:norm={}:drop={}", tag, to_string(p), c.hidden,
                          vec, to_string(c.positions), on_off_label(c.layernorm),
                          on_off_label(c.dropout)));
}
}  // namespace

KernelInstance embedding_fwd(Precision p, const Embedding& c) {
  return embedding(p, c, "embedding_fwd_kernel", "embedding_fwd");
}
KernelInstance embedding_bwd(Precision p, const Embedding& c) {
  return embedding(p, c, "embedding_bwd_kernel", "embedding_bwd");
}

KernelInstance cross_entropy(Precision p, int64_t vocab) {
  const int vec = vec_width(p, vocab);
  const int threads = kern::ce_threads(vocab, vec);
  return make("cross_entropy", "cross_entropy_kernel",
              {cuda_type(p), std::to_string(vocab), std::to_string(threads), std::to_string(vec)},
              fmt::format("cross_entropy:{}:vocab={}:threads={}:vec={}", to_string(p), vocab,
                          threads, vec));
}

KernelInstance adam(Precision p, OptimizerKind kind) {
  const char* mode = kind == OptimizerKind::kAdamW ? "kAdamW" : "kAdam";
  return make("adam", "adam_kernel", {cuda_type(p), en("AdamMode", mode)},
              fmt::format("adam:{}:mode={}", to_string(p), to_string(kind)));
}

KernelInstance check_finite(Precision p) {
  return make("adam", "check_finite_kernel", {cuda_type(p)},
              fmt::format("check_finite:{}", to_string(p)));
}

KernelInstance column_sum(Precision p) {
  return make("reduce", "column_sum_kernel", {cuda_type(p)},
              fmt::format("column_sum:{}", to_string(p)));
}

KernelInstance convert(Precision p) {
  return make("reduce", "convert_kernel", {cuda_type(p)}, fmt::format("convert:{}", to_string(p)));
}

KernelInstance accumulate(Precision p) {
  return make("reduce", "accumulate_kernel", {cuda_type(p)}, fmt::format("accumulate:{}", to_string(p)));
}

}  // namespace lightseq::codegen
