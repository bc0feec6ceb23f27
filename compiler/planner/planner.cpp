#include "compiler/planner/planner.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

#include "compiler/errors.h"
#include "compiler/planner/attention_backend.h"
#include "compiler/planner/passes.h"
#include "reduce.sig.cuh"

namespace lightseq {

int KernelStep::tensor(std::string_view name) const {
  return args.at(param_index(*kernel.sig, name)).tensor;
}

std::string_view to_string(Epilogue e) {
  switch (e) {
    case Epilogue::kNone:
      return "none";
    case Epilogue::kBias:
      return "bias";
    case Epilogue::kReluAuxBias:
      return "bias+relu (aux: relu mask)";
    case Epilogue::kGeluAuxBias:
      return "bias+gelu (aux: pre-activation)";
    case Epilogue::kDReluBGrad:
      return "drelu+bgrad";
    case Epilogue::kDGeluBGrad:
      return "dgelu+bgrad";
    case Epilogue::kBGradA:
      return "bgrad(A)";
  }
  throw InternalError("unknown Epilogue");
}

bool writes_aux(Epilogue e) { return e == Epilogue::kReluAuxBias || e == Epilogue::kGeluAuxBias; }

std::vector<KernelInstance> ModelPlan::kernels() const {
  std::vector<KernelInstance> out;
  std::set<std::string> seen;
  for (const LayerPlan& layer : layers) {
    for (const LayerPlan* l : layer.plans()) {
      for (const auto* steps : {&l->forward, &l->backward}) {
        for (const Step& st : *steps) {
          if (const auto* k = std::get_if<KernelStep>(&st)) {
            if (seen.insert(k->kernel.label).second) out.push_back(k->kernel);
          }
        }
      }
      for (const KernelInstance& k : l->support_kernels) {
        if (seen.insert(k.label).second) out.push_back(k);
      }
    }
  }
  return out;
}

namespace {

// Reads and writes of a step, for verification and for `saved`.
void step_io(const Step& st, std::vector<int>* reads, std::vector<int>* writes) {
  if (const auto* g = std::get_if<GemmStep>(&st)) {
    *reads = {g->a, g->b};
    if (g->c >= 0) reads->push_back(g->c);
    // accumulate: D += A·B into a buffer the caller zeroed before the stack (not a read of a step)
    if (g->bias >= 0) reads->push_back(g->bias);
    *writes = {g->d};
    const bool aux_in =
        g->epilogue == Epilogue::kDReluBGrad || g->epilogue == Epilogue::kDGeluBGrad;
    if (g->aux >= 0) (aux_in ? reads : writes)->push_back(g->aux);
    if (g->bias_grad >= 0) writes->push_back(g->bias_grad);
  } else {
    const auto& k = std::get<KernelStep>(st);
    *reads = k.reads;
    *writes = k.writes;
  }
}

std::string step_name(const Graph& g, const Step& st) {
  if (const auto* gm = std::get_if<GemmStep>(&st)) return "gemm " + gm->name;
  return "kernel " + std::get<KernelStep>(st).kernel.label;
}

void verify(const LayerPlan& lp, const planner::State& s) {
  const Graph& g = lp.layer.graph;
  for (size_t i = 0; i < g.ops().size(); ++i) {
    if (!s.claimed[i]) {
      throw InternalError(fmt::format("planner: {}: op '{}' ({}) is not covered by any step",
                                      lp.layer.name, g.ops()[i].name, to_string(g.ops()[i].kind)));
    }
  }
  std::vector<int> written(g.tensors().size(), 0);
  auto given = [&](int id) {
    TensorRole r = g.tensor(id).role;
    return r == TensorRole::kInput || r == TensorRole::kParam || r == TensorRole::kGradInput;
  };
  auto available = [&](int id) {
    if (given(id) || written[id]) return true;
    const Tensor& t = g.tensor(id);
    if (t.view_of >= 0 && (written[t.view_of] || given(t.view_of))) return true;
    int parts = 0, done = 0;
    for (size_t j = 0; j < g.tensors().size(); ++j) {
      if (g.tensor(j).view_of == id) ++parts, done += written[j] ? 1 : 0;
    }
    return parts > 0 && parts == done;
  };
  for (const auto* steps : {&lp.forward, &lp.backward}) {
    for (const Step& st : *steps) {
      std::vector<int> reads, writes;
      step_io(st, &reads, &writes);
      for (int r : reads) {
        if (s.internal.count(r)) {
          throw InternalError(
              fmt::format("planner: {}: {} reads '{}', which a fused group keeps internal",
                          lp.layer.name, step_name(g, st), g.tensor(r).name));
        }
        if (!available(r)) {
          throw InternalError(fmt::format("planner: {}: {} reads '{}' before any step writes it",
                                          lp.layer.name, step_name(g, st), g.tensor(r).name));
        }
      }
      for (int w : writes) written[w] = 1;
    }
  }
}

std::vector<int> saved_tensors(const LayerPlan& lp) {
  const Graph& g = lp.layer.graph;
  std::set<int> fwd_written;
  for (const Step& st : lp.forward) {
    std::vector<int> r, w;
    step_io(st, &r, &w);
    fwd_written.insert(w.begin(), w.end());
  }
  std::set<int> saved;
  auto saved_root = [&](int id) {
    while (g.tensor(id).view_of >= 0 && !fwd_written.count(id)) id = g.tensor(id).view_of;
    return id;
  };
  for (const Step& st : lp.backward) {
    std::vector<int> r, w;
    step_io(st, &r, &w);
    for (int id : r) {
      int root = saved_root(id);
      if (fwd_written.count(root) || (g.tensor(root).role == TensorRole::kInput))
        saved.insert(root);
    }
  }
  return {saved.begin(), saved.end()};
}

// Fused linear + cross-entropy: a criterion's output projection, cross-entropy and backward
// GEMMs move into one chunked region of the forward (LayerPlan::row_chunks). The chunk holds as
// many token rows as keep its logits (and their gradient, as large) within the spec's
// criterion.logits_chunk_mib. What
// precedes the region (the target count of the mean reduction) runs once over all rows.
void fuse_linear_cross_entropy(LayerPlan& lp, Precision precision) {
  const Graph& g = lp.layer.graph;
  size_t begin = 0;
  while (begin < lp.forward.size() && !std::holds_alternative<GemmStep>(lp.forward[begin])) ++begin;
  if (begin == lp.forward.size())
    throw InternalError("planner: criterion: no output projection GEMM to chunk");
  for (size_t i = 0; i < begin; ++i) {  // run once at the full shape: no row-sized temporaries
    std::vector<int> r, w;
    step_io(lp.forward[i], &r, &w);
    for (int id : w) {
      const Tensor& t = g.tensor(id);
      if (!given_by_caller(t.role) && shape_numel(t.shape).b > 0) {
        throw InternalError(fmt::format(
            "planner: criterion: '{}' before the chunked region is sized by the batch", t.name));
      }
    }
  }
  const Op* ce = nullptr;
  for (const Op& op : g.ops()) {
    if (op.kind == OpKind::kCrossEntropy) ce = &op;
  }
  if (!ce || ce->attrs.vocab <= 0 || ce->attrs.logits_chunk_bytes <= 0)
    throw InternalError("planner: criterion: no cross-entropy op with a vocabulary and a budget");
  lp.row_chunks.begin = begin;
  lp.row_chunks.budget_bytes = ce->attrs.logits_chunk_bytes;
  lp.row_chunks.max_rows = std::max<int64_t>(
      1, ce->attrs.logits_chunk_bytes / (ce->attrs.vocab * element_bytes(precision)));
  for (Step& st : lp.backward) lp.forward.push_back(std::move(st));
  lp.backward.clear();
}

}  // namespace

LayerPlan plan_layer(LayerGraph layer, Precision precision) {
  LayerPlan lp;
  lp.layer = std::move(layer);
  lp.attention = choose_attention(lp.layer, precision);
  planner::State s(lp.layer.graph, precision);
  const Graph& g = lp.layer.graph;
  const int n = static_cast<int>(g.ops().size());
  const int split = g.backward_begin();
  for (auto [begin, end, out] :
       {std::tuple{0, split, &lp.forward}, std::tuple{split, n, &lp.backward}}) {
    s.begin = begin;
    s.end = end;
    s.out = out;
    for (int i = begin; i < end; ++i) {
      if (s.claimed[i]) continue;
      const Op& op = g.ops()[i];
      if (op.kind == OpKind::kGemm) {
        planner::plan_gemm(s, i);
      } else if (planner::plan_kernel(s, i)) {
        continue;
      } else if (op.kind == OpKind::kBiasGrad) {
        s.deferred_bgrad[op.inputs[0]] = i;  // for the weight-gradient GEMM that reads it as A^T
      } else {
        throw InternalError(
            fmt::format("planner: {}: no fusion rule or epilogue covers op '{}' ({})",
                        lp.layer.name, op.name, to_string(op.kind)));
      }
    }
    for (auto [tensor, op] : s.deferred_bgrad) {
      throw InternalError(
          fmt::format("planner: {}: bias gradient '{}' found no GEMM epilogue or kernel",
                      lp.layer.name, g.ops()[op].name));
    }
  }
  verify(lp, s);
  const bool projects = std::any_of(lp.forward.begin(), lp.forward.end(), [](const Step& st) {
    return std::holds_alternative<GemmStep>(st);
  });
  // A criterion over given logits has no projection to chunk.
  if (lp.layer.type == LayerType::kCriterion && projects) fuse_linear_cross_entropy(lp, precision);
  lp.saved = saved_tensors(lp);
  planner::build_manifest(lp);
  for (const Step& st : lp.backward) {
    if (const auto* gm = std::get_if<GemmStep>(&st); gm && gm->bias_grad >= 0) {
      lp.support_kernels = {instantiate(sig::kAccumulate, precision, {})};
      break;
    }
  }
  return lp;
}

ModelPlan plan_model(const ModelSpec& spec) {
  ModelPlan plan;
  plan.spec = spec;
  for (LayerGraph& lg : lower_model(spec)) {
    std::optional<FusedVariant> fused = auto_fused_variant(lg, spec.precision);
    plan.layers.push_back(plan_layer(std::move(lg), spec.precision));
    if (fused) {
      LayerPlan f = plan_layer(std::move(fused->layer), spec.precision);
      planner::share_manifests(plan.layers.back(), f);
      plan.layers.back().fused = std::make_shared<const LayerPlan>(std::move(f));
      plan.layers.back().fused_rule = fused->rule;
    }
  }
  return plan;
}

}  // namespace lightseq
