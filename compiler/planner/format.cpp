// format.cpp — the readable plan printed by `lsc plan` (and pinned by the golden tests).
#include <fmt/format.h>

#include "compiler/errors.h"
#include "compiler/planner/lanes.h"
#include "compiler/planner/planner.h"

namespace lightseq {

namespace {

std::string operand(const Graph& g, int id, Transpose t) {
  return g.tensor(id).name + (t == Transpose::kYes ? "ᵀ" : "");
}

std::string format_gemm(const Graph& g, const GemmStep& s) {
  const OpAttrs& a = s.attrs;
  std::string batch =
      a.batch == Dim::constant(1) ? "" : fmt::format("batch {} × ", a.batch.to_string());
  std::string line = fmt::format("gemm    {:<24} {}[{} × {}] = {} · {}  (k = {})", s.name, batch,
                                 a.m.to_string(), a.n.to_string(), operand(g, s.a, a.trans_a),
                                 operand(g, s.b, a.trans_b), a.k.to_string());
  if (a.alpha != 1.0)
    line += fmt::format(", alpha {}",
                        a.alpha_text.empty() ? fmt::format("{:g}", a.alpha) : a.alpha_text);
  if (s.c >= 0) line += fmt::format(", + {}", g.tensor(s.c).name);
  if (s.accumulate) line += ", += into output";
  line += fmt::format("\n        {:<24} → {}, epilogue {}", "", g.tensor(s.d).name,
                      to_string(s.epilogue));
  if (s.bias >= 0) line += fmt::format(", bias {}", g.tensor(s.bias).name);
  if (s.aux >= 0) line += fmt::format(", aux {}", g.tensor(s.aux).name);
  if (s.bias_grad >= 0) line += fmt::format(", bias grad {}", g.tensor(s.bias_grad).name);
  if (!s.fused_ops.empty())
    line += fmt::format("\n        {:<24} fuses {}", "", fmt::join(s.fused_ops, " → "));
  return line;
}

std::string format_kernel(const Graph& g, const KernelStep& k) {
  std::string line = fmt::format("kernel  {}", k.kernel.label);
  if (!k.fused_ops.empty())
    line += fmt::format("\n        fuses {}", fmt::join(k.fused_ops, " → "));
  if (!k.note.empty()) line += fmt::format("\n        {}", k.note);
  return line;
}

// Bytes per token (B·T) of the tensors kept from forward to backward, for the plan's summary.
std::string saved_summary(const LayerPlan& lp, Precision p) {
  const Graph& g = lp.layer.graph;
  std::vector<std::string> names;
  int64_t per_token = 0;
  std::string other;
  for (int id : lp.saved) {
    const Tensor& t = g.tensor(id);
    names.push_back(t.name);
    const Dim n = shape_numel(t.shape);
    const int bytes = elem_bytes(t.type, p);
    if (n.b == 1 && n.t == 1 && n.s == 0) {
      per_token += n.factor * bytes;
    } else if (!(n.is_constant())) {
      other += fmt::format(" + {}·{} bytes", n.to_string(), bytes);
    }
  }
  if (names.empty()) return "saved for backward: nothing";
  return fmt::format("saved for backward: {}\n    ({} bytes per token{})", fmt::join(names, ", "),
                     per_token, other);
}

}  // namespace

// "forward binds x, key_padding_mask (optional), y (out) and 12 parameters": the tensors a call
// binds (LayerPlan::manifest), parameters and their gradients counted rather than listed.
std::string manifest_summary(const std::vector<ManifestEntry>& m, const char* direction) {
  std::vector<std::string> named;
  int params = 0, grads = 0;
  for (const ManifestEntry& e : m) {
    if (e.role == TensorRole::kParam) {
      ++params;
    } else if (e.role == TensorRole::kParamGrad) {
      ++grads;
    } else {
      const bool out = e.role == TensorRole::kOutput || e.role == TensorRole::kGradOutput;
      named.push_back(e.name + (e.optional ? " (optional)" : "") +
                      (e.accumulates ? " (+=)"
                       : out         ? " (out)"
                                     : ""));
    }
  }
  std::vector<std::string> parts = named;
  if (params) parts.push_back(fmt::format("{} parameter{}", params, params == 1 ? "" : "s"));
  if (grads) parts.push_back(fmt::format("{} parameter gradient{}", grads, grads == 1 ? "" : "s"));
  return fmt::format("{} binds {}", direction,
                     parts.empty() ? "nothing" : fmt::format("{}", fmt::join(parts, ", ")));
}

std::string format_plan(const ModelPlan& plan) {
  const ModelSpec& spec = plan.spec;
  std::string out;
  // Per training step: launches and GEMMs with each layer's first plan ([0]), and with the "auto"
  // layers' fused plans instead ([1]).
  size_t launches[2] = {0, 0}, gemms[2] = {0, 0};
  bool any_fused = false;
  for (const LayerPlan& l : plan.layers) {
    const std::vector<const LayerPlan*> v = l.plans();
    any_fused = any_fused || v.size() > 1;
    for (int f = 0; f < 2; ++f) {
      const LayerPlan* runs = f == 0 ? v.front() : v.back();
      for (const auto* steps : {&runs->forward, &runs->backward}) {
        for (const Step& st : *steps)
          (std::holds_alternative<GemmStep>(st) ? gemms : launches)[f] += l.layer.count;
      }
    }
  }
  out += fmt::format(
      "model {} ({}): {} distinct kernels; per training step {} kernel launches and {} GEMMs{}\n",
      spec.name, to_string(spec.precision), plan.kernels().size(), launches[0], gemms[0],
      any_fused ? fmt::format(" ({} and {} where the \"auto\" layers run their fused plans)",
                              launches[1], gemms[1])
                : "");
  out += "shapes: B = batch, T = sequence length, S = source length (cross-attention)\n";
  std::vector<std::pair<const LayerPlan*, std::string>> shown;  // every plan, with its heading
  for (const LayerPlan& l : plan.layers) {
    for (const LayerPlan* v : l.plans()) {
      shown.emplace_back(
          v, v == &l ? fmt::format("{} — {}", l.layer.name, l.layer.description)
                     : fmt::format("{}, its fused plan — the calls whose batch is at most {} and "
                                   "whose attentions have at most {} keys",
                                   l.layer.name, l.fused_rule.max_batch, l.fused_rule.max_keys));
    }
  }
  for (const auto& [lp, heading] : shown) {
    const LayerPlan& l = *lp;
    const Graph& g = l.layer.graph;
    out += fmt::format("\n{}\n", heading);
    for (const AttentionChoice& a : l.attention) {
      out += fmt::format("  attention {}: {} ({})\n", a.op, a.backend, a.reason);
    }
    for (auto [title, steps] :
         {std::pair{"forward", &l.forward}, std::pair{"backward", &l.backward}}) {
      if (steps->empty()) continue;
      // The backward's parameter-gradient lane (compiler/planner/lanes.h), marked ∥.
      const LaneSchedule lanes = steps == &l.backward ? schedule_lanes(g, *steps) : LaneSchedule{};
      out += fmt::format("  {}{}\n", title,
                         lanes.any_side() ? " (∥: on the parameter-gradient lane, a second stream "
                                            "beside the input-gradient chain)"
                                          : "");
      for (size_t i = 0; i < steps->size(); ++i) {
        const Step& st = (*steps)[i];
        const bool side = lanes.any_side() && lanes.side[i];
        if (lanes.any_side() && lanes.join_before[i])
          out += "    (the chain waits for the parameter-gradient lane here)\n";
        if (steps == &l.forward && l.row_chunks.max_rows > 0 && i == l.row_chunks.begin) {
          out += fmt::format(
              "    fused linear + cross-entropy: the steps below (forward and backward) run over "
              "chunks of at most {} token rows\n    (whole sequences; logits and their gradient "
              "never exceed {} MiB each)\n",
              l.row_chunks.max_rows, l.row_chunks.budget_bytes >> 20);
        }
        std::string text = std::holds_alternative<GemmStep>(st)
                               ? format_gemm(g, std::get<GemmStep>(st))
                               : format_kernel(g, std::get<KernelStep>(st));
        size_t pos = 0;
        while (true) {
          size_t nl = text.find('\n', pos);
          out += (side && pos == 0 ? "  ∥ " : "    ") +
                 text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos) + "\n";
          if (nl == std::string::npos) break;
          pos = nl + 1;
        }
      }
    }
    out += "  " + saved_summary(l, spec.precision) + "\n";
    out += "  " + manifest_summary(l.manifest[0], "forward") + "\n";
    if (!l.backward.empty()) out += "  " + manifest_summary(l.manifest[1], "backward") + "\n";
  }
  return out;
}

}  // namespace lightseq
