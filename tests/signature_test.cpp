// signature_test.cpp — every kernel signature (templates/<family>.sig.cuh) against the kernel NVRTC
// compiles: the template arguments and parameter types of each kernel's lowered (mangled) name
// must be exactly what the signature declares, in order. And every plan of the example models
// resolves through the signatures at several shapes (launch shapes, scratch extents, scalars).
#include <cxxabi.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bias_act_dropout.sig.cuh"
#include "compiler/codegen/program.h"
#include "compiler/errors.h"
#include "compiler/ir/kernel.h"
#include "compiler/nvrtc/nvrtc_compiler.h"
#include "compiler/planner/planner.h"
#include "flash_attention.sig.cuh"
#include "frontends/spec/parse.h"
#include "layernorm.sig.cuh"
#include "reduce.sig.cuh"
#include "runtime/launch.h"
#include "softmax.sig.cuh"

namespace lightseq {
namespace {

// A valid value for each integer template parameter (the signatures' own names).
int64_t sample_value(const sig::TParam& t) {
  static const std::map<std::string, int64_t> values{{"kHidden", 512},
                                                     {"kCols", 2048},
                                                     {"kHeads", 8},
                                                     {"kParts", 3},
                                                     {"kVocab", 1000},
                                                     {"kD", 64},
                                                     {"kWarps", kern::kFlashFwdWarps},
                                                     {"kBlocks", kern::flash_bwd_blocks(64)}};
  auto it = values.find(t.name);
  if (it == values.end())
    throw InternalError(std::string("signature_test: no sample value for ") + t.name);
  return it->second;
}

// instantiate() of (name, value) pairs.
KernelInstance make(const sig::Kernel& k, Precision p,
                    const std::vector<std::pair<std::string, int64_t>>& given) {
  // instantiate takes an initializer_list: build it from the vector through a small switch.
  std::vector<TemplateValue> v(given.begin(), given.end());
  switch (v.size()) {
    case 0:
      return instantiate(k, p, {});
    case 1:
      return instantiate(k, p, {v[0]});
    case 2:
      return instantiate(k, p, {v[0], v[1]});
    case 3:
      return instantiate(k, p, {v[0], v[1], v[2]});
    case 4:
      return instantiate(k, p, {v[0], v[1], v[2], v[3]});
    case 5:
      return instantiate(k, p, {v[0], v[1], v[2], v[3], v[4]});
    case 6:
      return instantiate(k, p, {v[0], v[1], v[2], v[3], v[4], v[5]});
  }
  throw InternalError("signature_test: too many template parameters");
}

bool instantiates(const sig::Kernel& k, Precision p,
                  const std::vector<std::pair<std::string, int64_t>>& given) {
  try {
    make(k, p, given);
    return true;
  } catch (const InternalError&) {
    return false;
  }
}

// One instance of `k` with the last enumerator of every enum (the most features switched on).
KernelInstance sample_instance(const sig::Kernel& k, Precision p) {
  std::vector<std::pair<std::string, int64_t>> given;
  for (int i = 0; i < k.n_tparams; ++i) {
    const sig::TParam& t = k.tparams[i];
    if (t.kind == sig::TKind::kDType || t.derive) continue;
    given.emplace_back(t.name,
                       t.kind == sig::TKind::kEnum ? t.enum_info->count - 1 : sample_value(t));
  }
  // Where the signature rejects that combination (Kernel::reject), lower the enums one at a time,
  // the first parameters first, until it takes one.
  for (size_t e = 0; e < given.size(); ++e) {
    const sig::TParam* t = nullptr;
    for (int i = 0; i < k.n_tparams; ++i) {
      if (given[e].first == k.tparams[i].name) t = &k.tparams[i];
    }
    if (t == nullptr || t->kind != sig::TKind::kEnum) continue;
    while (given[e].second > 0 && !instantiates(k, p, given)) --given[e].second;
    if (instantiates(k, p, given)) break;
  }
  return make(k, p, given);
}

// How the demangler spells a parameter of C type `c` when T is `t`.
std::string demangled_type(sig::CType c, const std::string& t) {
  switch (c) {
    case sig::CType::kTPtr:
      return t + "*";
    case sig::CType::kConstTPtr:
      return t + " const*";
    case sig::CType::kF32Ptr:
      return "float*";
    case sig::CType::kConstF32Ptr:
      return "float const*";
    case sig::CType::kConstI64Ptr:
      return "long long const*";
    case sig::CType::kConstU8Ptr:
      return "unsigned char const*";
    case sig::CType::kU8Ptr:
      return "unsigned char*";
    case sig::CType::kI32Ptr:
      return "int*";
    case sig::CType::kConstI32Ptr:
      return "int const*";
    case sig::CType::kConstAdamChunkPtr:
      return "lightseq::kern::AdamChunk<" + t + "> const*";
    case sig::CType::kOptimStatePtr:
      return "lightseq::kern::OptimState*";
    case sig::CType::kConstOptimStatePtr:
      return "lightseq::kern::OptimState const*";
    case sig::CType::kI64:
      return "long long";
    case sig::CType::kI32:
      return "int";
    case sig::CType::kF32:
      return "float";
    case sig::CType::kDropoutArgs:
      return "lightseq::kern::DropoutArgs";
    case sig::CType::kAccumulate:
      return "lightseq::kern::Accumulate";
  }
  return "?";
}

std::string demangle(const std::string& mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out(
      abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status), std::free);
  if (status != 0 || !out) return "<cannot demangle " + mangled + ">";
  return out.get();
}

// Splits "a, b<c, d>, (e)1" at top-level commas.
std::vector<std::string> split_top(const std::string& s) {
  std::vector<std::string> out;
  int depth = 0;
  std::string cur;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '<' || c == '(') ++depth;
    if (c == '>' || c == ')') --depth;
    if (c == ',' && depth == 0) {
      out.push_back(cur);
      cur.clear();
      if (i + 1 < s.size() && s[i + 1] == ' ') ++i;
      continue;
    }
    cur += c;
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

// "void ns::name<targs>(params)" → targs, params.
void parse_demangled(const std::string& d, std::vector<std::string>* targs,
                     std::vector<std::string>* params) {
  const size_t open_t = d.find('<');
  int depth = 0;
  size_t close_t = open_t;
  for (size_t i = open_t; i < d.size(); ++i) {
    if (d[i] == '<') ++depth;
    if (d[i] == '>' && --depth == 0) {
      close_t = i;
      break;
    }
  }
  *targs = split_top(d.substr(open_t + 1, close_t - open_t - 1));
  const size_t open_p = d.find('(', close_t);
  *params = split_top(d.substr(open_p + 1, d.size() - open_p - 2));
}

TEST(KernelSignature, EverySignatureMatchesTheKernelNvrtcCompiles) {
  const Precision p = Precision::kBf16;
  std::vector<KernelInstance> instances;
  for (const sig::Kernel* k : all_kernel_signatures()) instances.push_back(sample_instance(*k, p));
  ASSERT_GE(instances.size(), 16u) << "every family's kernels are in the registry";
  std::map<std::string, std::string> lowered;  // label → mangled name
  for (const ProgramSource& prog : codegen::generate_programs(instances, p)) {
    const CompiledProgram c = compile_program(prog, "sm_90");
    ASSERT_EQ(c.lowered_names.size(), prog.labels.size());
    for (size_t i = 0; i < prog.labels.size(); ++i) lowered[prog.labels[i]] = c.lowered_names[i];
  }
  for (const KernelInstance& inst : instances) {
    SCOPED_TRACE(inst.label);
    const sig::Kernel& k = *inst.sig;
    const std::string d = demangle(lowered.at(inst.label));
    std::vector<std::string> targs, params;
    parse_demangled(d, &targs, &params);
    ASSERT_EQ(static_cast<int>(targs.size()), k.n_tparams) << d;
    for (int i = 0; i < k.n_tparams; ++i) {
      const sig::TParam& t = k.tparams[i];
      const std::string want = t.kind == sig::TKind::kDType ? cuda_type(p)
                               : t.kind == sig::TKind::kEnum
                                   ? "(lightseq::kern::" + std::string(t.enum_info->type) + ")" +
                                         std::to_string(inst.values[i])
                                   : std::to_string(inst.values[i]);
      EXPECT_EQ(targs[i], want) << "template parameter " << i << " (" << t.name << ") of " << d;
    }
    ASSERT_EQ(static_cast<int>(params.size()), k.n_params) << d;
    for (int i = 0; i < k.n_params; ++i) {
      EXPECT_EQ(params[i], demangled_type(k.params[i].type, cuda_type(p)))
          << "parameter " << i << " (" << k.params[i].name << ") of " << d;
    }
  }
}

TEST(KernelSignature, NamesAreUniqueAndRolesFitTypes) {
  for (const sig::Kernel* k : all_kernel_signatures()) {
    SCOPED_TRACE(k->name);
    for (int i = 0; i < k->n_params; ++i) {
      const sig::Param& p = k->params[i];
      for (int j = 0; j < i; ++j) EXPECT_STRNE(p.name, k->params[j].name);
      const bool pointer_role = p.role == sig::Role::kIn || p.role == sig::Role::kOut ||
                                p.role == sig::Role::kOutAcc || p.role == sig::Role::kScratch ||
                                p.role == sig::Role::kErrorFlag || p.role == sig::Role::kTensorList;
      EXPECT_EQ(pointer_role, sig::is_pointer(p.type)) << p.name;
      if (p.role == sig::Role::kOut || p.role == sig::Role::kOutAcc ||
          p.role == sig::Role::kScratch) {
        EXPECT_TRUE(p.type == sig::CType::kTPtr || p.type == sig::CType::kF32Ptr ||
                    p.type == sig::CType::kU8Ptr || p.type == sig::CType::kI32Ptr ||
                    p.type == sig::CType::kOptimStatePtr)
            << p.name << " is written";
      }
      EXPECT_EQ(p.role == sig::Role::kTensorList, p.list != nullptr)
          << p.name << ": a tensor list has slots";
      if (p.list) {
        EXPECT_GT(p.list->chunk_elems, 0);
        bool required = false;
        for (int j = 0; j < p.list->n_slots; ++j) {
          const sig::ListSlot& ls = p.list->slots[j];
          EXPECT_TRUE(sig::is_pointer(ls.type)) << ls.name;
          EXPECT_TRUE(ls.role == sig::Role::kIn || ls.role == sig::Role::kOutAcc) << ls.name;
          if (ls.role == sig::Role::kOutAcc) {
            EXPECT_NE(ls.type, sig::CType::kConstTPtr) << ls.name << " is written";
          }
          required |= ls.nullable == sig::Nullable::kNo;
        }
        EXPECT_TRUE(required) << p.name << ": some slot must say how many elements a chunk has";
      }
      if (p.role == sig::Role::kDropout) {
        EXPECT_EQ(p.type, sig::CType::kDropoutArgs);
      }
      if (p.role == sig::Role::kGradMode) {
        EXPECT_EQ(p.type, sig::CType::kAccumulate);
      }
    }
  }
}

TEST(KernelSignature, ALabelNamesEveryShownTemplateValue) {
  const KernelInstance k = instantiate(sig::kLnFwd, Precision::kFp16,
                                       {{"kHidden", 1000},
                                        tv("kBranch", kern::Branch::kBiasDropoutResidual),
                                        tv("kNorm", kern::Norm::kOn),
                                        tv("kDrop", kern::Drop::kOff)});
  EXPECT_EQ(k.label, "ln_fwd:fp16:h=1000:vec=8:branch=bias_dropout_residual:norm=on:drop=off");
  EXPECT_EQ(k.name_expression(),
            "&lightseq::kern::ln_fwd_kernel<__half, 1000, 8, "
            "lightseq::kern::Branch::kBiasDropoutResidual, "
            "lightseq::kern::Norm::kOn, lightseq::kern::Drop::kOff>");
  const KernelInstance v = instantiate(sig::kLnFwd, Precision::kFp16,
                                       {{"kHidden", 1004},
                                        tv("kBranch", kern::Branch::kNone),
                                        tv("kNorm", kern::Norm::kOn),
                                        tv("kDrop", kern::Drop::kOff)});
  EXPECT_EQ(v.value("kVec"), 4) << "derived: the widest vector dividing 1004";
}

TEST(KernelSignature, InstantiateRefusesWrongValues) {
  auto msg = [](auto&& f) {
    try {
      f();
    } catch (const InternalError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg([] {
              instantiate(sig::kLnFwd, Precision::kFp16, {{"kHidden", 8}});
            }).find("kBranch is not given"),
            std::string::npos);
  EXPECT_NE(msg([] {
              instantiate(sig::kColumnSum, Precision::kFp16, {{"kHiden", 8}});
            }).find("no template parameter 'kHiden'"),
            std::string::npos);
  EXPECT_NE(msg([] {
              instantiate(sig::kSoftmaxBwd, Precision::kFp16,
                          {{"kThreads", 64}, tv("kDrop", kern::Drop::kOn)});
            }).find("not set by hand"),
            std::string::npos);
  EXPECT_NE(msg([] {
              instantiate(sig::kSoftmaxBwd, Precision::kFp16, {{"kDrop", 2}});
            }).find("not an enumerator of Drop"),
            std::string::npos);
  // Combinations a template's static_assert refuses, refused here first (Kernel::reject), with the
  // rule's words; the valid neighbours instantiate.
  auto bad_bwd = [](kern::Act act, kern::ActFrom from) {
    return instantiate(
        sig::kBiasActDropoutBwd, Precision::kBf16,
        {{"kCols", 2048}, tv("kAct", act), tv("kDrop", kern::Drop::kOn), tv("kFrom", from)});
  };
  EXPECT_NE(msg([&] {
              bad_bwd(kern::Act::kGelu, kern::ActFrom::kOutput);
            }).find("from=output takes act=relu only"),
            std::string::npos);
  EXPECT_NO_THROW(bad_bwd(kern::Act::kRelu, kern::ActFrom::kOutput));
  EXPECT_NO_THROW(bad_bwd(kern::Act::kGelu, kern::ActFrom::kInput));
  auto dkdv = [](int64_t d, int64_t blocks) {
    return instantiate(sig::kFlashDkDv, Precision::kBf16,
                       {{"kD", d},
                        tv("kMask", kern::Mask::kNone),
                        tv("kDrop", kern::Drop::kOff),
                        {"kBlocks", blocks}});
  };
  EXPECT_NE(msg([&] { dkdv(128, 2); }).find("b (blocks per SM) is 1, or 2 up to head dim"),
            std::string::npos);
  EXPECT_NE(msg([&] { dkdv(64, 3); }).find("cannot be instantiated"), std::string::npos);
  EXPECT_NO_THROW(dkdv(64, 2));
  EXPECT_NO_THROW(dkdv(128, 1));
}

// Every kernel step of every example plan resolves through its signature at several shapes:
// scalars evaluate, scratch tensors get their extents before anything reads them, launch shapes
// are non-empty at some shape. Empty only by design: the fused attention's D and grad_q kernels
// where one key block holds every key (flash_bwd_one_block: the grad_k/grad_v kernel does their
// work). (resolve_launch touches no GPU; the function handle is not used.)
TEST(KernelSignature, EveryExamplePlanResolvesAtSeveralShapes) {
  for (const std::string name : {"transformer-base", "transformer-big", "bert-base", "gpt2-small",
                                 "transformer-base fused", "bert-base fused"}) {
    // "<example> fused": its stacks with "attention": "fused" (the flash kernels)
    const std::string file = name.substr(0, name.find(' '));
    ModelSpec spec =
        parse_spec_file(std::string(LIGHTSEQ_SOURCE_DIR) + "/examples/" + file + ".json");
    if (name != file) {
      for (LayerStackSpec& l : spec.layers) l.attention = AttentionBackend::kFused;
    }
    const ModelPlan plan = plan_model(spec);
    for (const LayerPlan& lp : plan.layers) {
      std::map<std::string, bool> launched;  // kernel label → non-empty at some shape
      for (const RunShape shape :
           {RunShape{1, 1, 1}, RunShape{3, 7, 5}, RunShape{32, 128, 96}, RunShape{2, 300, 260}}) {
        ScratchExtents scratch;
        scratch.of.assign(lp.layer.graph.tensors().size(), sig::Extent{-1, -1});
        for (const auto* steps : {&lp.forward, &lp.backward}) {
          for (const Step& st : *steps) {
            const auto* k = std::get_if<KernelStep>(&st);
            if (!k) continue;
            SCOPED_TRACE(name + " " + lp.layer.name + " " + k->kernel.label);
            const ResolvedLaunch r = resolve_launch(*k, nullptr, lp.layer.graph, shape, scratch);
            launched[k->kernel.label] |= !r.empty;
            if (r.empty) {
              EXPECT_TRUE(k->kernel.sig == &sig::kFlashDot || k->kernel.sig == &sig::kFlashDq);
              EXPECT_TRUE(shape.seq <= kern::kFlashBwdBlockN ||
                          shape.src_seq <= kern::kFlashBwdBlockN);
            }
            EXPECT_GT(r.block.x, 0u);
            EXPECT_LE(r.block.x, 1024u);
          }
        }
        for (size_t id = 0; id < lp.layer.graph.tensors().size(); ++id) {
          if (lp.layer.graph.tensor(static_cast<int>(id)).sized_by_kernel) {
            EXPECT_GT(scratch.of[id].rows * scratch.of[id].cols, 0)
                << lp.layer.graph.tensor(static_cast<int>(id)).name;
          }
        }
      }
      for (const auto& [label, any] : launched) {
        EXPECT_TRUE(any) << name << " " << lp.layer.name << " " << label << " never launches";
      }
    }
  }
}

// The fused attention's launches in the token layout, resolved on the CPU: the row strides of
// the packed projections (self-attention q, k, v: 3·H; cross-attention q: H, k and v: 2·H), the
// sizes, and the D kernel's head rows (B·T·heads).
TEST(KernelSignature, FusedAttentionResolvesTheTokenLayoutsStrides) {
  ModelSpec spec =
      parse_spec_file(std::string(LIGHTSEQ_SOURCE_DIR) + "/examples/transformer-base.json");
  for (LayerStackSpec& l : spec.layers) l.attention = AttentionBackend::kFused;
  const ModelPlan plan = plan_model(spec);
  const int64_t H = spec.layers[0].hidden, heads = spec.layers[0].heads;
  const RunShape shape{3, 200, 150};  // several key blocks: D and grad_q launch too
  int checked = 0;
  for (const LayerPlan& lp : plan.layers) {
    if (lp.layer.type != LayerType::kDecoder) continue;
    ScratchExtents scratch;
    scratch.of.assign(lp.layer.graph.tensors().size(), sig::Extent{-1, -1});
    for (const auto* steps : {&lp.forward, &lp.backward}) {
      for (const Step& st : *steps) {
        const auto* k = std::get_if<KernelStep>(&st);
        if (!k || std::string(k->kernel.sig->family) != "flash_attention") continue;
        const ResolvedLaunch r = resolve_launch(*k, nullptr, lp.layer.graph, shape, scratch);
        const sig::Kernel& sg = *k->kernel.sig;
        auto scalar = [&](const char* name) {
          for (int i = 0; i < sg.n_params; ++i) {
            if (sig::same(sg.params[i].name, name)) {
              int64_t v;
              std::memcpy(&v, r.storage.data() + r.offsets[i], sizeof v);
              return v;
            }
          }
          ADD_FAILURE() << sg.name << " has no parameter " << name;
          return int64_t{-1};
        };
        // the first pointer parameter (q, or out for D) tells self- from cross-attention
        const bool cross = lp.layer.graph.tensor(r.pointers.at(0).tensor).name.rfind("ca.", 0) == 0;
        const int64_t q_len = shape.seq, k_len = cross ? shape.src_seq : shape.seq;
        SCOPED_TRACE(std::string(sg.name) + (cross ? " (cross)" : " (self)"));
        EXPECT_EQ(scalar("heads"), heads);
        EXPECT_EQ(scalar("q_len"), q_len);
        EXPECT_EQ(scalar("k_len"), k_len);
        if (&sg == &sig::kFlashDot) {
          EXPECT_EQ(scalar("rows"), shape.batch * shape.seq * heads);
          EXPECT_EQ(r.grid.x * static_cast<int64_t>(r.block.x) >= scalar("rows"), true);
        } else {
          EXPECT_EQ(scalar("batch"), shape.batch);
          EXPECT_EQ(scalar("ld_q"), (cross ? 1 : 3) * H);
          EXPECT_EQ(scalar("ld_kv"), (cross ? 2 : 3) * H);
          EXPECT_EQ(static_cast<int64_t>(r.grid.y), shape.batch * heads);
        }
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 2 * 4);  // self and cross: forward, D, grad_k/grad_v, grad_q
}

}  // namespace
}  // namespace lightseq

namespace lightseq {
namespace {

TEST(KernelSignature, DocsListEverySignatureAsGenerated) {
  std::ifstream in(std::string(LIGHTSEQ_SOURCE_DIR) + "/docs/kernels.md");
  const std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string begin = "<!-- signatures: generated by `lsc kernels` -->\n";
  const std::string end = "<!-- end of the generated signatures -->";
  const size_t b = doc.find(begin), e = doc.find(end);
  ASSERT_NE(b, std::string::npos);
  ASSERT_NE(e, std::string::npos);
  EXPECT_EQ(doc.substr(b + begin.size(), e - b - begin.size()), format_signatures())
      << "docs/kernels.md is out of date: paste the output of `lsc kernels` between the markers";
}

}  // namespace
}  // namespace lightseq
