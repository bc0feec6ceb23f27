// manifest.cpp — a layer plan's calling convention (LayerPlan::used, LayerPlan::manifest): what
// each direction's steps touch, and which of those tensors a call binds, with their roles.
#include <fmt/format.h>

#include <map>
#include <set>

#include "compiler/errors.h"
#include "compiler/planner/passes.h"

namespace lightseq::planner {

namespace {

void step_tensors(const Step& st, std::set<int>* out) {
  if (const auto* g = std::get_if<GemmStep>(&st)) {
    for (int id : {g->a, g->b, g->c, g->d, g->bias, g->aux, g->bias_grad}) {
      if (id >= 0) out->insert(id);
    }
  } else {
    for (const KernelArg& a : std::get<KernelStep>(st).args) {
      if (a.tensor >= 0) out->insert(a.tensor);
      for (int id : a.list) {
        if (id >= 0) out->insert(id);
      }
    }
  }
}

// Whether a step of `steps` adds into `id` (a `+=` GEMM, a kernel's `+=` or error-flag output);
// parameter gradients follow the call's GradMode instead.
bool accumulates(const std::vector<Step>& steps, int id, TensorRole role) {
  for (const Step& st : steps) {
    if (const auto* gm = std::get_if<GemmStep>(&st)) {
      if (gm->accumulate && gm->d == id) return true;
    } else if (role != TensorRole::kParamGrad) {
      const KernelStep& k = std::get<KernelStep>(st);
      for (int i = 0; i < k.kernel.sig->n_params; ++i) {
        const sig::Role r = k.kernel.sig->params[i].role;
        if ((r == sig::Role::kOutAcc || r == sig::Role::kErrorFlag) && k.args[i].tensor == id)
          return true;
      }
    }
  }
  return false;
}

}  // namespace

void build_manifest(LayerPlan& lp) {
  const Graph& g = lp.layer.graph;
  std::vector<uint8_t> saved(g.tensors().size(), 0);
  for (int id : lp.saved) saved[id] = 1;
  for (int dir = 0; dir < 2; ++dir) {
    const std::vector<Step>& steps = dir == 0 ? lp.forward : lp.backward;
    std::set<int> used;
    for (const Step& st : steps) step_tensors(st, &used);
    for (int id : std::set<int>(used)) {
      if (g.tensor(id).view_of >= 0) used.insert(g.tensor(id).view_of);  // the view's memory
    }
    lp.used[dir].assign(used.begin(), used.end());
    lp.manifest[dir].clear();
    for (int id : lp.used[dir]) {
      const Tensor& t = g.tensor(id);
      if (t.view_of >= 0 || !given_by_caller(t.role)) continue;
      // The backward takes the forward's saved activations from SavedActivations; of the
      // forward's inputs it reads, the caller passes them again (they rebuild a saved arena).
      if (dir == 1 && saved[id] && t.role != TensorRole::kInput) continue;
      ManifestEntry e;
      e.name = t.name;
      e.tensor = id;
      e.role = t.role;
      e.shape = t.shape;
      e.type = t.type;
      // A padding mask may be null (nothing is padded); so may a gradient a forward computes
      // (the fused linear + cross-entropy, LayerPlan::row_chunks) when nobody wants it.
      e.optional =
          t.optional || (t.type == ElemType::kU8 && t.role == TensorRole::kInput) ||
          (dir == 0 && (t.role == TensorRole::kGradOutput || t.role == TensorRole::kParamGrad));
      e.accumulates = accumulates(steps, id, t.role);
      e.grad_of = t.grad_of >= 0 ? g.tensor(t.grad_of).name : "";
      lp.manifest[dir].push_back(std::move(e));
    }
  }
}

void share_manifests(LayerPlan& a, LayerPlan& b) {
  for (int dir = 0; dir < 2; ++dir) {
    std::map<int, ManifestEntry> all;
    for (const LayerPlan* lp : {&a, &b}) {
      for (const ManifestEntry& e : lp->manifest[dir]) {
        auto [it, added] = all.emplace(e.tensor, e);
        if (!added && !(it->second == e)) {
          throw InternalError(
              fmt::format("planner: {}: its two plans bind different tensors as #{} ('{}', '{}')",
                          a.layer.name, e.tensor, it->second.name, e.name));
        }
      }
    }
    std::vector<ManifestEntry> merged;
    for (auto& [id, e] : all) merged.push_back(std::move(e));
    a.manifest[dir] = merged;
    b.manifest[dir] = std::move(merged);
  }
}

}  // namespace lightseq::planner
