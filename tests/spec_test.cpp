// spec_test.cpp — the JSON model spec front end: the examples parse and round-trip, validate_spec
// checks built structs, and every rule, type check, unknown key and syntax error gives its exact
// message (docs/spec.md). Error and file formats: spec_errors_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "compiler/errors.h"
#include "compiler/graph/param_arena.h"
#include "compiler/planner/planner.h"
#include "frontends/spec/parse.h"

namespace lightseq {
namespace {

const std::filesystem::path kExamples = std::filesystem::path(LIGHTSEQ_SOURCE_DIR) / "examples";

// Every issue of `text` as "path = value: message" (empty when it parses).
std::vector<std::string> issues_of(std::string_view text) {
  try {
    parse_spec_string(text);
  } catch (const SpecError& e) {
    std::vector<std::string> out;
    for (const SpecIssue& issue : e.issues()) out.push_back(issue.to_string());
    return out;
  }
  return {};
}

// ---- examples -----------------------------------------------------------------------------------

class SpecExample : public testing::TestWithParam<std::string> {};

TEST_P(SpecExample, ParsesValidatesAndRoundTrips) {
  const ModelSpec spec = parse_spec_file(kExamples / GetParam());
  EXPECT_EQ(spec.name + ".json", GetParam());
  EXPECT_TRUE(validate_spec(spec).empty());
  const std::string json = spec_to_json(spec).dump(2);
  EXPECT_EQ(parse_spec_string(json), spec) << json;
}

INSTANTIATE_TEST_SUITE_P(Spec, SpecExample,
                         testing::Values("transformer-base.json", "transformer-big.json",
                                         "bert-base.json", "gpt2-small.json"));

TEST(SpecExamples, TransformerBaseFields) {
  const ModelSpec s = parse_spec_file(kExamples / "transformer-base.json");
  EXPECT_EQ(s.precision, Precision::kBf16);
  ASSERT_TRUE(s.embedding && s.criterion && s.optimizer);
  EXPECT_EQ(s.embedding->vocab, 32000);
  EXPECT_EQ(s.embedding->scale, std::sqrt(512.0));  // "sqrt_hidden"
  EXPECT_EQ(s.embedding->padding_idx, 1);
  EXPECT_EQ(s.embedding->positions, PositionKind::kSinusoidal);
  ASSERT_EQ(s.layers.size(), 2u);
  EXPECT_EQ(s.layers[0].kind, LayerKind::kEncoder);
  EXPECT_FALSE(s.layers[0].causal);
  EXPECT_EQ(s.layers[1].kind, LayerKind::kDecoder);
  EXPECT_TRUE(s.layers[1].causal);  // decoders default to causal
  for (const LayerStackSpec& l : s.layers) {
    EXPECT_EQ(l.count, 6);
    EXPECT_EQ(l.head_dim(), 64);
    EXPECT_EQ(l.norm, NormPlacement::kPost);
    EXPECT_EQ(l.dropout, (DropoutSpec{0.1, 0.1, 0.1}));
  }
  EXPECT_EQ(s.criterion->label_smoothing, 0.1);
  EXPECT_EQ(s.criterion->ignore_index, 1);
  EXPECT_EQ(s.optimizer->kind, OptimizerKind::kAdamW);
  EXPECT_EQ(s.optimizer->beta2, 0.98);
  EXPECT_EQ(s.optimizer->weight_decay, 1e-4);
  EXPECT_EQ(s.optimizer->clip_norm, 0.0) << "no clipping unless asked for";
}

// embedding.token_types: BERT's segment table; printed only when set, validated (the plan of
// its table and third backward grouping: tests/golden/bert-base.plan).
TEST(SpecEmbedding, TokenTypesParseAndPrint) {
  ModelSpec s = parse_spec_file(kExamples / "bert-base.json");
  EXPECT_EQ(s.embedding->token_types, 2);
  const std::string json = spec_to_json(s).dump();
  EXPECT_NE(json.find("\"token_types\":2"), std::string::npos) << json;
  EXPECT_EQ(parse_spec_string(json, "<test>"), s);
  s.embedding->token_types = 0;
  EXPECT_EQ(spec_to_json(s).dump().find("token_types"), std::string::npos);
  s.embedding->token_types = -1;
  std::vector<std::string> got;
  for (const SpecIssue& i : validate_spec(s)) got.push_back(i.to_string());
  EXPECT_EQ(got,
            (std::vector<std::string>{"embedding.token_types = -1: must be in [0, 65536]; try 0"}));
}

// layers[].dropout.attention_output: the attention sublayers' own output dropout (DistilBERT: 0),
// printed only when set, validated like the others.
TEST(SpecDropout, AttentionOutputParsesPrintsAndValidates) {
  ModelSpec s = parse_spec_file(kExamples / "bert-base.json");
  EXPECT_FALSE(s.layers[0].dropout.attention_output);
  EXPECT_EQ(s.layers[0].dropout.attention_output_p(), s.layers[0].dropout.hidden);
  EXPECT_EQ(spec_to_json(s).dump().find("attention_output"), std::string::npos);
  s.layers[0].dropout.attention_output = 0.0;
  const std::string json = spec_to_json(s).dump();
  EXPECT_NE(json.find("\"attention_output\":0.0"), std::string::npos) << json;
  EXPECT_EQ(parse_spec_string(json, "<test>"), s);
  EXPECT_EQ(s.layers[0].dropout.attention_output_p(), 0.0);
  s.layers[0].dropout.attention_output = 1.0;
  std::vector<std::string> got;
  for (const SpecIssue& i : validate_spec(s)) got.push_back(i.to_string());
  EXPECT_EQ(got, (std::vector<std::string>{"layers[0].dropout.attention_output = 1: must be a "
                                           "probability in [0, 1); 0 turns it off"}));
}

// layers[].final_norm: the LayerNorm after a kind's last stack (GPT-2's ln_f), printed only when
// set, refused on a stack that another of its kind follows; its parameters are
// nn.TransformerEncoder's `norm` (the plan: tests/golden/gpt2-small.plan).
TEST(SpecStack, FinalNormParsesPrintsValidatesAndNamesItsParameters) {
  ModelSpec s = parse_spec_file(kExamples / "gpt2-small.json");
  EXPECT_TRUE(s.layers[0].final_norm);
  const std::string json = spec_to_json(s).dump();
  EXPECT_NE(json.find("\"final_norm\":true"), std::string::npos) << json;
  EXPECT_EQ(parse_spec_string(json, "<test>"), s);
  const ParamArena arena = parameter_arena(s);
  EXPECT_NE(find_entry(arena, "encoder.norm.weight"), nullptr);
  EXPECT_NE(find_entry(arena, "encoder.norm.bias"), nullptr);
  s.layers.push_back(s.layers[0]);  // two encoder stacks: only the last may end in the norm
  std::vector<std::string> got;
  for (const SpecIssue& i : validate_spec(s)) got.push_back(i.to_string());
  EXPECT_EQ(got, (std::vector<std::string>{
                     "layers[0].final_norm = true: the final LayerNorm follows the last encoder "
                     "stack, and layers[1] comes after this one; set it there instead"}));
  s.layers[0].final_norm = false;
  EXPECT_TRUE(validate_spec(s).empty());
  ModelSpec base = parse_spec_file(kExamples / "transformer-base.json");
  EXPECT_EQ(spec_to_json(base).dump().find("final_norm"), std::string::npos);
}

// layers[].attention: "unfused" (default, not printed), "fused", which needs fp16/bf16 and a
// head_dim the fused kernels take, or "auto" (valid everywhere: the planner decides).
TEST(SpecStack, AttentionBackendParsesPrintsAndValidates) {
  ModelSpec s = parse_spec_file(kExamples / "bert-base.json");
  EXPECT_EQ(s.layers[0].attention, AttentionBackend::kUnfused);
  EXPECT_EQ(spec_to_json(s).dump().find("\"attention\":\""), std::string::npos);
  s.layers[0].attention = AttentionBackend::kFused;
  const std::string json = spec_to_json(s).dump();
  EXPECT_NE(json.find("\"attention\":\"fused\""), std::string::npos) << json;
  EXPECT_EQ(parse_spec_string(json, "<test>"), s);
  EXPECT_TRUE(validate_spec(s).empty());
  auto issues = [](const ModelSpec& m) {
    std::vector<std::string> got;
    for (const SpecIssue& i : validate_spec(m)) got.push_back(i.to_string());
    return got;
  };
  ModelSpec fp32 = s;
  fp32.precision = Precision::kFp32;
  EXPECT_EQ(issues(fp32), (std::vector<std::string>{
                              "layers[0].attention = \"fused\": the fused attention runs fp16 and "
                              "bf16 (tensor cores); use \"unfused\" for an fp32 model"}));
  ModelSpec wide = s;
  wide.layers[0].heads = 3;  // head_dim 256
  // The MT examples choose per call (measured: benchmarks/RESULTS.md, thirteenth session), and
  // "auto" prints, parses back and is valid where "fused" is not.
  EXPECT_EQ(parse_spec_file(kExamples / "transformer-base.json").layers[1].attention,
            AttentionBackend::kAuto);
  ModelSpec chosen = wide;
  chosen.layers[0].attention = AttentionBackend::kAuto;
  const std::string auto_json = spec_to_json(chosen).dump();
  EXPECT_NE(auto_json.find("\"attention\":\"auto\""), std::string::npos) << auto_json;
  EXPECT_EQ(parse_spec_string(auto_json, "<test>"), chosen);
  EXPECT_TRUE(issues(chosen).empty());
  EXPECT_EQ(issues(wide),
            (std::vector<std::string>{
                "layers[0].attention = \"fused\": the fused attention takes head_dim "
                "(hidden / heads = 256) a multiple of 16 up to 128; use \"unfused\""}));
}

// criterion.logits_chunk_mib: the fused linear + cross-entropy's chunk budget, printed only when
// set, and the rows per chunk the planner derives from it (vocab 32000 in bf16: 64000 B a row).
TEST(SpecCriterion, LogitsChunkParsesPrintsAndSizesTheChunks) {
  ModelSpec s = parse_spec_file(kExamples / "transformer-base.json");
  EXPECT_EQ(spec_to_json(s).dump().find("logits_chunk_mib"), std::string::npos);
  s.criterion->logits_chunk_mib = 64;
  const std::string json = spec_to_json(s).dump();
  EXPECT_NE(json.find("\"logits_chunk_mib\":64"), std::string::npos) << json;
  EXPECT_EQ(parse_spec_string(json, "<test>").criterion->logits_chunk_mib, 64);
  for (const LayerPlan& lp : plan_model(s).layers) {
    if (lp.layer.type != LayerType::kCriterion) continue;
    EXPECT_EQ(lp.row_chunks.max_rows, (int64_t{64} << 20) / 64000);
    EXPECT_TRUE(lp.backward.empty()) << "the forward does the backward";
  }
}

TEST(SpecOptimizer, ClipNormParsesPrintsAndPlansTheNormKernel) {
  ModelSpec s = parse_spec_file(kExamples / "transformer-base.json");
  s.optimizer->clip_norm = 1.0;
  const std::string json = spec_to_json(s).dump();
  EXPECT_NE(json.find("\"clip_norm\":1.0"), std::string::npos) << json;
  EXPECT_EQ(parse_spec_string(json, "<test>").optimizer->clip_norm, 1.0);
  const ModelPlan plan = plan_model(s);
  std::vector<std::string> kernels;
  for (const Step& st : plan.layers.back().forward) {
    if (const auto* k = std::get_if<KernelStep>(&st)) kernels.push_back(k->kernel.label);
  }
  EXPECT_EQ(kernels, (std::vector<std::string>{"grad_norm:bf16", "adam:bf16:mode=adamw",
                                               "optim_finish:bf16"}));
}

TEST(SpecExamples, Gpt2IsACausalEncoderStack) {
  const ModelSpec s = parse_spec_file(kExamples / "gpt2-small.json");
  ASSERT_EQ(s.layers.size(), 1u);
  EXPECT_EQ(s.layers[0].kind, LayerKind::kEncoder);
  EXPECT_TRUE(s.layers[0].causal);
  EXPECT_EQ(s.layers[0].norm, NormPlacement::kPre);
  EXPECT_EQ(s.embedding->vocab, 50257);
  EXPECT_EQ(s.embedding->positions, PositionKind::kLearned);
}

TEST(SpecParse, DefaultsOfOptionalFields) {
  const ModelSpec s = parse_spec_string(R"({"name": "m", "precision": "fp32",
      "embedding": {"vocab": 10, "hidden": 64},
      "layers": [{"type": "encoder", "hidden": 64, "heads": 2, "ffn": 256}],
      "criterion": {"type": "cross_entropy"}, "optimizer": {"type": "adam"}})");
  EXPECT_EQ(*s.embedding, (EmbeddingSpec{.vocab = 10, .hidden = 64}));
  EXPECT_EQ(s.layers[0], (LayerStackSpec{.hidden = 64, .heads = 2, .ffn = 256, .dropout = {}}));
  EXPECT_EQ(*s.criterion, CriterionSpec{});
  EXPECT_EQ(*s.optimizer, OptimizerSpec{.kind = OptimizerKind::kAdam});
}

TEST(SpecParse, EmbeddingOnlyAndLayersOnlyAreValid) {
  EXPECT_NO_THROW(parse_spec_string(
      R"({"name": "emb", "precision": "fp16", "embedding": {"vocab": 5, "hidden": 8}})"));
  EXPECT_NO_THROW(parse_spec_string(R"({"name": "enc", "precision": "fp16",
      "layers": [{"type": "encoder", "hidden": 8, "heads": 1, "ffn": 8}]})"));
}

TEST(SpecParse, RoundTripsNonDefaultValues) {
  ModelSpec s;
  s.name = "odd_values-1.2";
  s.precision = Precision::kFp16;
  s.embedding = EmbeddingSpec{.vocab = 7,
                              .hidden = 24,
                              .positions = PositionKind::kLearned,
                              .max_positions = 3,
                              .padding_idx = 6,
                              .padding_rows = PaddingRows::kEmbedded,
                              .scale = 0.1 + 0.2,
                              .dropout = 1.0 / 3,
                              .layernorm = true,
                              .layernorm_eps = 1e-45,  // the smallest positive float32, rounded
                              .tie_output = false};
  s.layers.push_back(LayerStackSpec{.count = 1024,
                                    .hidden = 24,
                                    .heads = 3,
                                    .ffn = 8,
                                    .activation = Activation::kGelu,
                                    .norm = NormPlacement::kPre,
                                    .eps = 0.5,
                                    .causal = true,
                                    .dropout = {.attention = 0.999, .hidden = 1e-9}});
  s.layers.push_back(LayerStackSpec{.kind = LayerKind::kDecoder,
                                    .hidden = 24,
                                    .heads = 1,
                                    .ffn = 262144,
                                    .causal = true,
                                    .dropout = {}});
  s.criterion = CriterionSpec{
      .label_smoothing = 0.999999, .ignore_index = -2147483648LL, .input = CriterionInput::kLogits};
  s.optimizer = OptimizerSpec{.kind = OptimizerKind::kAdam,
                              .lr = 3.4e38,
                              .beta1 = 0,
                              .beta2 = 0.99999994,  // the largest float32 below 1
                              .eps = 1e-45,
                              .weight_decay = 1e-17};
  ASSERT_TRUE(validate_spec(s).empty());
  EXPECT_EQ(parse_spec_string(spec_to_json(s).dump()), s);
}

// ---- validate_spec on a struct (the Python front end's path) ------------------------------------

TEST(SpecValidate, RendersStructValues) {
  ModelSpec s = parse_spec_file(kExamples / "bert-base.json");
  s.layers[0].dropout.attention = std::nan("");
  s.layers[0].eps = 1e-300 * 1e-300;  // 0
  s.optimizer->lr = INFINITY;
  s.precision = static_cast<Precision>(7);
  std::vector<std::string> got;
  for (const SpecIssue& i : validate_spec(s)) got.push_back(i.to_string());
  EXPECT_EQ(got, (std::vector<std::string>{
                     "precision = 7: must be \"fp32\", \"fp16\" or \"bf16\"",
                     "layers[0].eps = 0: must be a positive finite number (LayerNorm divides by "
                     "sqrt(variance + eps)); try 1e-5",
                     "layers[0].dropout.attention = nan: must be a probability in [0, 1); 0 "
                     "turns it off",
                     "optimizer.lr = inf: must be a positive finite number; try 1e-3"}));
}

// The Python front end builds the struct from float fields that were never JSON: the float32
// rules apply to it the same way, the embedding's eps included.
TEST(SpecValidate, ChecksRealsInFloat32) {
  ModelSpec s = parse_spec_file(kExamples / "transformer-base.json");
  s.layers[0].eps = 1e-50;
  s.embedding->layernorm_eps = 1e39;
  s.layers[1].eps = 1e-45;  // a positive float32 (subnormal): valid
  std::vector<std::string> got;
  for (const SpecIssue& i : validate_spec(s)) got.push_back(i.to_string());
  EXPECT_EQ(got, (std::vector<std::string>{
                     "embedding.layernorm_eps = 1e+39: becomes inf in float32, the precision the "
                     "kernels use (at most 3.4028235e+38); it must be a positive finite number "
                     "(LayerNorm divides by sqrt(variance + eps)); try 1e-5",
                     "layers[0].eps = 1e-50: becomes 0 in float32, the precision the kernels use "
                     "(the smallest positive float32 is 1e-45); it must be a positive finite "
                     "number (LayerNorm divides by sqrt(variance + eps)); try 1e-5"}));
}

// ---- bad specs: exact messages ------------------------------------------------------------------

// A valid spec that the cases below edit. The two stacks differ ("norm" only in the decoder) so
// that an edit can target one of them.
constexpr std::string_view kBase = R"({
  "name": "base",
  "precision": "bf16",
  "embedding": {"vocab": 1000, "hidden": 512, "padding_idx": 1, "scale": "sqrt_hidden",
                "dropout": 0.1},
  "layers": [
    {"type": "encoder", "count": 2, "hidden": 512, "heads": 8, "ffn": 2048,
     "dropout": {"attention": 0.1, "activation": 0.1, "hidden": 0.1}},
    {"type": "decoder", "count": 2, "hidden": 512, "heads": 8, "ffn": 2048, "norm": "pre",
     "eps": 1e-5}
  ],
  "criterion": {"type": "cross_entropy", "label_smoothing": 0.1, "ignore_index": 1},
  "optimizer": {"type": "adamw", "lr": 5e-4, "betas": [0.9, 0.98], "eps": 1e-8,
                "weight_decay": 1e-4}
})";

struct Edit {
  std::string from;  // replaced at its first occurrence in kBase; empty: `to` is the whole text
  std::string to;
};

struct BadSpec {
  std::string name;
  std::vector<Edit> edits;
  std::vector<std::string> issues;  // exact, in document order
};

void PrintTo(const BadSpec& c, std::ostream* os) { *os << c.name; }

class SpecBad : public testing::TestWithParam<BadSpec> {};

TEST_P(SpecBad, ReportsExactIssues) {
  std::string text(kBase);
  for (const Edit& e : GetParam().edits) {
    if (e.from.empty()) {
      text = e.to;
      continue;
    }
    size_t at = text.find(e.from);
    ASSERT_NE(at, std::string::npos) << "edit does not apply: " << e.from;
    text.replace(at, e.from.size(), e.to);
  }
  EXPECT_EQ(issues_of(text), GetParam().issues) << text;
}

const char* const kAtLeastOneStack =
    "a spec needs at least one layer stack, an embedding or an optimizer; add a stack such "
    "as {\"type\": \"encoder\", \"hidden\": 512, \"heads\": 8, \"ffn\": 2048}";
const char* const kMultipleOf8 =
    "must be a multiple of 8 (kernels move 16-byte vectors of 8 elements); try ";
const char* const kProbability = "must be a probability in [0, 1); 0 turns it off";
const char* const kLayerNormEps =
    "must be a positive finite number (LayerNorm divides by sqrt(variance + eps)); try 1e-5";

std::string cat(std::string a, std::string_view b) { return a += b; }

const std::vector<BadSpec> kBadSpecs = {
    // --- sizes and the attention shape
    {"heads_not_divisor",
     {{R"("heads": 8, "ffn": 2048, "norm")", R"("heads": 7, "ffn": 2048, "norm")"}},
     {"layers[1].heads = 7: hidden 512 is not divisible by 7 heads; try 8"}},
    {"head_dim_not_multiple_of_8",
     {{R"("heads": 8)", R"("heads": 128)"}},
     {"layers[0].heads = 128: head_dim = hidden 512 / 128 heads = 4 must be a multiple of 8 "
      "(kernels move 16-byte vectors); try 64"}},
    {"head_dim_too_large",
     {{R"("heads": 8)", R"("heads": 1)"}},
     {"layers[0].heads = 1: head_dim = hidden 512 / 1 head = 512 exceeds 256, the largest head "
      "the attention kernels support; try 2"}},
    {"heads_zero",
     {{R"("heads": 8)", R"("heads": 0)"}},
     {"layers[0].heads = 0: must be at least 1; try 2"}},
    {"heads_tie_picks_more_heads",
     {{R"("heads": 8)", R"("heads": 6)"}},
     {"layers[0].heads = 6: hidden 512 is not divisible by 6 heads; try 8"}},
    {"layer_hidden_not_multiple_of_8",
     {{R"("hidden": 512, "heads": 8)", R"("hidden": 500, "heads": 8)"}},
     {cat("layers[0].hidden = 500: ", kMultipleOf8) + "504"}},
    {"embedding_hidden_too_large",
     {{R"("hidden": 512, "padding_idx")", R"("hidden": 131072, "padding_idx")"}},
     {"embedding.hidden = 131072: must be in [8, 65536]; try 65536"}},
    {"hidden_mismatch",
     {{R"("hidden": 512, "heads": 8, "ffn": 2048, "norm")",
       R"("hidden": 768, "heads": 12, "ffn": 2048, "norm")"}},
     {"layers[1].hidden = 768: must equal embedding.hidden = 512 (all stacks share one residual "
      "stream); try 512"}},
    {"ffn_not_multiple_of_8",
     {{R"("ffn": 2048)", R"("ffn": 2050)"}},
     {cat("layers[0].ffn = 2050: ", kMultipleOf8) + "2056"}},
    {"ffn_too_large",
     {{R"("ffn": 2048)", R"("ffn": 1000000)"}},
     {"layers[0].ffn = 1000000: must be in [8, 262144]; try 262144"}},
    {"count_zero",
     {{R"("count": 2)", R"("count": 0)"}},
     {"layers[0].count = 0: must be in [1, 1024]; try 1"}},
    {"count_too_large",
     {{R"("count": 2)", R"("count": 5000)"}},
     {"layers[0].count = 5000: must be in [1, 1024]; try 1024"}},
    // --- probabilities and epsilons
    {"attention_dropout_one",
     {{R"("attention": 0.1)", R"("attention": 1)"}},
     {cat("layers[0].dropout.attention = 1: ", kProbability)}},
    {"embedding_dropout_negative",
     {{R"("dropout": 0.1})", R"("dropout": -0.1})"}},
     {cat("embedding.dropout = -0.1: ", kProbability)}},
    {"layer_eps_negative",
     {{R"("eps": 1e-5)", R"("eps": -1e-5)"}},
     {cat("layers[1].eps = -1e-5: ", kLayerNormEps)}},
    {"layernorm_eps_zero",
     {{R"("scale")", R"("layernorm_eps": 0.0, "scale")"}},
     {cat("embedding.layernorm_eps = 0.0: ", kLayerNormEps)}},
    // --- in float32, the precision the kernels take these in
    {"layer_eps_zero_in_float32",
     {{R"("eps": 1e-5)", R"("eps": 1e-50)"}},
     {cat(
         "layers[1].eps = 1e-50: becomes 0 in float32, the precision the kernels use (the smallest "
         "positive float32 is 1e-45); it ",
         kLayerNormEps)}},
    {"layer_eps_double_subnormal",
     {{R"("eps": 1e-5)", R"("eps": 1e-320)"}},
     {cat("layers[1].eps = 1e-320: becomes 0 in float32, the precision the kernels use (the "
          "smallest positive float32 is 1e-45); it ",
          kLayerNormEps)}},
    {"layer_eps_inf_in_float32",
     {{R"("eps": 1e-5)", R"("eps": 1e39)"}},
     {cat("layers[1].eps = 1e39: becomes inf in float32, the precision the kernels use (at most "
          "3.4028235e+38); it ",
          kLayerNormEps)}},
    {"embedding_eps_zero_in_float32",
     {{R"("scale")", R"("layernorm_eps": 1e-50, "scale")"}},
     {cat("embedding.layernorm_eps = 1e-50: becomes 0 in float32, the precision the kernels use "
          "(the smallest positive float32 is 1e-45); it ",
          kLayerNormEps)}},
    {"label_smoothing_one_in_float32",
     {{R"("label_smoothing": 0.1)", R"("label_smoothing": 0.99999999)"}},
     {cat("criterion.label_smoothing = 0.99999999: becomes 1 in float32, the precision the kernels "
          "use; it ",
          kProbability)}},
    {"beta2_one_in_float32",
     {{"[0.9, 0.98]", "[0.9, 0.9999999999]"}},
     {"optimizer.betas[1] = 0.9999999999: becomes 1 in float32, the precision the kernels use; it "
      "must be in [0, 1); try 0.999"}},
    {"lr_inf_in_float32",
     {{R"("lr": 5e-4)", R"("lr": 1e300)"}},
     {"optimizer.lr = 1e300: becomes inf in float32, the precision the kernels use (at most "
      "3.4028235e+38); it must be a positive finite number; try 1e-3"}},
    {"label_smoothing_one",
     {{R"("label_smoothing": 0.1)", R"("label_smoothing": 1.0)"}},
     {cat("criterion.label_smoothing = 1.0: ", kProbability)}},
    // --- optimizer
    {"beta2_one",
     {{"[0.9, 0.98]", "[0.9, 1.0]"}},
     {"optimizer.betas[1] = 1.0: must be in [0, 1); try 0.999"}},
    {"beta1_negative",
     {{"[0.9, 0.98]", "[-0.9, 0.98]"}},
     {"optimizer.betas[0] = -0.9: must be in [0, 1); try 0.9"}},
    {"betas_one_number",
     {{"[0.9, 0.98]", "[0.9]"}},
     {"optimizer.betas = [0.9]: must hold exactly two numbers [beta1, beta2]; try [0.9, 0.999]"}},
    {"betas_not_array",
     {{"[0.9, 0.98]", "0.9"}},
     {"optimizer.betas = 0.9: must be an array of two numbers [beta1, beta2], not a number; try "
      "[0.9, 0.999]"}},
    {"lr_zero",
     {{R"("lr": 5e-4)", R"("lr": 0)"}},
     {"optimizer.lr = 0: must be a positive finite number; try 1e-3"}},
    {"weight_decay_negative",
     {{R"("weight_decay": 1e-4)", R"("weight_decay": -0.01)"}},
     {"optimizer.weight_decay = -0.01: must be a finite number >= 0; 0 turns weight decay off"}},
    {"clip_norm_negative",
     {{R"("weight_decay": 1e-4)", R"("weight_decay": 1e-4, "clip_norm": -1)"}},
     {"optimizer.clip_norm = -1: must be a finite number >= 0 (the largest global gradient norm); "
      "0 turns clipping off; try 1.0"}},
    {"logits_chunk_zero",
     {{R"("ignore_index": 1})", R"("ignore_index": 1, "logits_chunk_mib": 0})"}},
     {"criterion.logits_chunk_mib = 0: must be in [1, 1048576]; try 1"}},
    {"criterion_input_unknown",
     {{R"("ignore_index": 1})", R"("ignore_index": 1, "input": "probs"})"}},
     {"criterion.input = \"probs\": must be one of \"hidden\", \"logits\""}},
    {"adam_eps_zero",
     {{R"("eps": 1e-8)", R"("eps": 0)"}},
     {"optimizer.eps = 0: must be a positive finite number (Adam divides by sqrt(v) + eps); try "
      "1e-8"}},
    {"optimizer_type_unknown",
     {{R"("type": "adamw")", R"("type": "sgd")"}},
     {"optimizer.type = \"sgd\": must be one of \"adam\", \"adamw\""}},
    // --- embedding
    {"positions_from_tokens_without_padding",
     {{R"("padding_idx": 1)", R"("padding_idx": -1, "positions_from": "tokens")"}},
     {"embedding.positions_from = \"tokens\": counts positions over the non-padding tokens, so "
      "it needs a padding token: set \"padding_idx\", or use \"index\""}},
    {"positions_from_unknown",
     {{R"("padding_idx": 1)", R"("padding_idx": 1, "positions_from": "count")"}},
     {"embedding.positions_from = \"count\": must be one of \"index\", \"tokens\""}},
    {"padding_rows_without_padding",
     {{R"("padding_idx": 1)", R"("padding_idx": -1, "padding_rows": "embedded")"}},
     {"embedding.padding_rows = \"embedded\": says how a padding token is embedded, so it needs "
      "one: set \"padding_idx\", or remove \"padding_rows\""}},
    {"padding_rows_unknown",
     {{R"("padding_idx": 1)", R"("padding_idx": 1, "padding_rows": "skip")"}},
     {"embedding.padding_rows = \"skip\": must be one of \"zero\", \"embedded\""}},
    {"vocab_zero",
     {{R"("vocab": 1000)", R"("vocab": 0)"}},
     {"embedding.vocab = 0: must be in [1, 2147483647]; try 1"}},
    {"vocab_over_int32",
     {{R"("vocab": 1000)", R"("vocab": 3000000000)"}},
     {"embedding.vocab = 3000000000: must be in [1, 2147483647]; try 2147483647"}},
    {"padding_idx_equals_vocab",
     {{R"("padding_idx": 1)", R"("padding_idx": 1000)"}},
     {"embedding.padding_idx = 1000: must be -1 (no padding token) or a token id in [0, 1000); "
      "try -1"}},
    {"padding_idx_below_minus_one",
     {{R"("padding_idx": 1)", R"("padding_idx": -2)"}},
     {"embedding.padding_idx = -2: must be -1 (no padding token) or a token id in [0, 1000); "
      "try -1"}},
    {"max_positions_zero",
     {{R"("scale")", R"("max_positions": 0, "scale")"}},
     {"embedding.max_positions = 0: must be in [1, 1048576]; try 1"}},
    {"scale_zero",
     {{R"("sqrt_hidden")", "0"}},
     {"embedding.scale = 0: must be a positive finite number or \"sqrt_hidden\"; try 1"}},
    {"scale_unknown_string",
     {{R"("sqrt_hidden")", R"("sqrt")"}},
     {"embedding.scale = \"sqrt\": must be a number or \"sqrt_hidden\""}},
    {"scale_array",
     {{R"("sqrt_hidden")", "[1]"}},
     {"embedding.scale = [1]: must be a number or \"sqrt_hidden\", not an array"}},
    {"positions_unknown",
     {{R"("scale")", R"("positions": "rotary", "scale")"}},
     {"embedding.positions = \"rotary\": must be one of \"sinusoidal\", \"learned\""}},
    // --- criterion
    {"ignore_index_over_int32",
     {{R"("ignore_index": 1)", R"("ignore_index": 3000000000)"}},
     {"criterion.ignore_index = 3000000000: must be in [-2147483648, 2147483647]; try "
      "2147483647"}},
    {"criterion_type_missing",
     {{R"("type": "cross_entropy", )", ""}},
     {"criterion.type = (missing): required; add e.g. \"type\": \"cross_entropy\""}},
    {"criterion_without_embedding",
     {{"", R"({"name": "m", "precision": "fp32",
               "layers": [{"type": "encoder", "hidden": 64, "heads": 1, "ffn": 64}],
               "criterion": {"type": "cross_entropy"}})"}},
     {"criterion = {\"type\":\"cross_entropy\"}: the cross-entropy is over the vocabulary, which "
      "the \"embedding\" section defines (vocab, output projection); add an embedding or remove "
      "the criterion"}},
    // --- layer kinds and their order
    {"decoder_not_causal",
     {{R"("eps": 1e-5})", R"("eps": 1e-5, "causal": false})"}},
     {"layers[1].causal = false: a decoder's self-attention is always causal; remove \"causal\" "
      "or set it to true (for bidirectional attention use \"type\": \"encoder\")"}},
    {"decoders_without_encoder",
     {{R"("type": "encoder")", R"("type": "decoder")"}},
     {"layers[0].type = \"decoder\": a decoder cross-attends to the output of an encoder stack, "
      "and none comes before it; add an encoder stack first, or for a decoder-only (GPT-style) "
      "model use \"type\": \"encoder\" with \"causal\": true"}},
    {"encoder_after_decoder",
     {{R"("eps": 1e-5})",
       R"("eps": 1e-5}, {"type": "encoder", "hidden": 512, "heads": 8, "ffn": 8})"}},
     {"layers[2].type = \"encoder\": encoder stacks must come before the first decoder stack "
      "(layers[1]), whose cross-attention reads the encoder's output; move this stack before "
      "it"}},
    {"activation_case",
     {{R"("count": 2)", R"("count": 2, "activation": "GELU")"}},
     {"layers[0].activation = \"GELU\": must be one of \"relu\", \"gelu\", \"gelu_tanh\"; did you "
      "mean "
      "\"gelu\"?"}},
    {"norm_unknown",
     {{R"("norm": "pre")", R"("norm": "after")"}},
     {"layers[1].norm = \"after\": must be one of \"pre\", \"post\""}},
    {"layer_type_typo",
     {{R"("type": "encoder")", R"("type": "encodr")"}},
     {"layers[0].type = \"encodr\": must be one of \"encoder\", \"decoder\"; did you mean "
      "\"encoder\"?"}},
    // --- top level
    {"nothing_to_compile",
     {{"", R"({"name": "m", "precision": "fp32"})"}},
     {cat("layers = (missing): ", kAtLeastOneStack)}},
    {"empty_layers_without_embedding",
     {{"", R"({"name": "m", "precision": "fp32", "layers": []})"}},
     {cat("layers = []: ", kAtLeastOneStack)}},
    {"name_and_precision_missing",
     {{"", R"({"layers": [{"type": "encoder", "hidden": 64, "heads": 1, "ffn": 64}]})"}},
     {"name = (missing): required; add e.g. \"name\": \"my-model\"",
      "precision = (missing): required; add e.g. \"precision\": \"bf16\""}},
    {"name_with_space_and_slash",
     {{R"("base")", R"("my model/v1")"}},
     {"name = \"my model/v1\": must be 1 to 128 letters, digits, '.', '_' or '-', starting with a "
      "letter or digit (it is used in file names); try \"my-model-v1\""}},
    {"name_empty",
     {{R"("base")", R"("")"}},
     {"name = \"\": must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or "
      "digit (it is used in file names); try \"model\""}},
    {"name_not_ascii",
     {{R"("base")", "\"mod\xc3\xa8le\""}},
     {"name = \"mod\\xc3\\xa8le\": must be 1 to 128 letters, digits, '.', '_' or '-', starting "
      "with a letter or digit (it is used in file names); try \"mod--le\""}},
    {"precision_typo",
     {{R"("bf16")", R"("bf17")"}},
     {"precision = \"bf17\": must be one of \"fp32\", \"fp16\", \"bf16\"; did you mean "
      "\"bf16\"?"}},
    {"precision_number",
     {{R"("bf16")", "16"}},
     {"precision = 16: must be one of \"fp32\", \"fp16\", \"bf16\", not a number"}},
    {"root_not_object",
     {{"", "[]"}},
     {"(root) = []: a model spec must be a JSON object, not an array; start with {\"name\": "
      "\"my-model\", \"precision\": \"bf16\", \"layers\": [...]}"}},
    // --- unknown and duplicate keys
    {"unknown_key_transposed",
     {{R"("heads": 8)", R"("haeds": 8)"}},
     {"layers[0].haeds = 8: unknown key; did you mean 'heads'?",
      "layers[0].heads = (missing): required; add e.g. \"heads\": 8"}},
    {"unknown_key_contains",
     {{R"("ffn": 2048)", R"("ffn_dim": 2048)"}},
     {"layers[0].ffn_dim = 2048: unknown key; did you mean 'ffn'?",
      "layers[0].ffn = (missing): required; add e.g. \"ffn\": 2048"}},
    {"unknown_top_level_key",
     {{R"("optimizer")", R"("optimiser")"}},
     {"optimiser = {...}: unknown key; did you mean 'optimizer'?"}},
    {"unknown_key_no_suggestion",
     {{R"("hidden": 0.1})", R"("hidden": 0.1, "residual": 0.1})"}},
     {"layers[0].dropout.residual = 0.1: unknown key; expected one of: attention, activation, "
      "hidden, attention_output"}},
    {"duplicate_key",
     {{R"("heads": 8)", R"("heads": 8, "heads": 16)"}},
     {"layers[0].heads = 16: duplicate key (first given as 8); remove one"}},
    // --- types
    {"integer_as_string",
     {{R"("vocab": 1000)", R"("vocab": "1000")"}},
     {"embedding.vocab = \"1000\": must be an integer, not a string; remove the quotes"}},
    {"integer_as_bool",
     {{R"("heads": 8)", R"("heads": true)"}},
     {"layers[0].heads = true: must be an integer, not a boolean"}},
    {"integer_with_fraction",
     {{R"("ffn": 2048)", R"("ffn": 2048.5)"}},
     {"layers[0].ffn = 2048.5: must be an integer, not a fraction"}},
    {"integer_written_as_float",
     {{R"("ffn": 2048)", R"("ffn": 2048.0)"}},
     {"layers[0].ffn = 2048.0: must be an integer; write 2048"}},
    {"integer_with_exponent",
     {{R"("count": 2)", R"("count": 2e0)"}},
     {"layers[0].count = 2e0: must be an integer; write 2"}},
    {"integer_beyond_int64",
     {{R"("count": 2)", R"("count": 99999999999999999999)"}},
     {"layers[0].count = 99999999999999999999: is too large for a 64-bit integer"}},
    {"integer_beyond_int64_unsigned",
     {{R"("count": 2)", R"("count": 18446744073709551615)"}},
     {"layers[0].count = 18446744073709551615: is too large for a 64-bit integer"}},
    {"number_as_string",
     {{R"("lr": 5e-4)", R"("lr": "5e-4")"}},
     {"optimizer.lr = \"5e-4\": must be a number, not a string; remove the quotes"}},
    {"number_as_null",
     {{R"("lr": 5e-4)", R"("lr": null)"}},
     {"optimizer.lr = null: must be a number, not null"}},
    {"bool_as_string",
     {{R"("scale")", R"("layernorm": "yes", "scale")"}},
     {"embedding.layernorm = \"yes\": must be true or false, not a string"}},
    {"dropout_as_number",
     {{R"("eps": 1e-5})", R"("eps": 1e-5, "dropout": 0.1})"}},
     {"layers[1].dropout = 0.1: must be an object such as {\"attention\": 0.1, \"activation\": "
      "0.1, \"hidden\": 0.1}, not a number"}},
    {"layers_as_object",
     {{"", R"({"name": "m", "precision": "fp32", "layers": {}})"}},
     {"layers = {}: must be an array of layer stacks, not an object"}},
    {"layer_not_object",
     {{"", R"({"name": "m", "precision": "fp32", "layers": [5]})"}},
     {"layers[0] = 5: must be an object, not a number"}},
    {"embedding_as_array",
     {{"", R"({"name": "m", "precision": "fp32", "embedding": [1, 2],
                                     "criterion": {"type": "cross_entropy"}})"}},
     {"embedding = [1,2]: must be an object, not an array"}},
    {"missing_layer_fields",
     {{"", R"({"name": "m", "precision": "fp32", "layers": [{"type": "encoder", "hidden": 64}]})"}},
     {"layers[0].heads = (missing): required; add e.g. \"heads\": 8",
      "layers[0].ffn = (missing): required; add e.g. \"ffn\": 2048"}},
    // --- malformed JSON: line and column from the byte offset, an excerpt of the line
    {"trailing_comma",
     {{"", "{\n  \"name\": \"x\",\n  \"precision\": \"fp16\",\n}"}},
     {"line 4, column 1 = }: syntax error while parsing object key - unexpected '}'; expected "
      "string literal"}},
    {"missing_colon",
     {{R"("count": 2)", R"("count" 2)"}},
     {"line 7, column 33 = ...  {\"type\": \"encoder\", \"count\" 2, \"hidden\"...: syntax "
      "error while parsing object separator - unexpected number literal; expected ':'"}},
    {"unterminated",
     {{"", R"({"name": "x")"}},
     {"line 1, column 13 = {\"name\": \"x\": syntax error while parsing object - unexpected end "
      "of input; expected '}'"}},
    {"empty_text",
     {{"", ""}},
     {"line 1, column 1 = (empty): the spec is empty; write a JSON object such as {\"name\": "
      "\"my-model\", \"precision\": \"bf16\", \"layers\": [...]}"}},
    {"comment",
     {{"", "// a comment\n{}"}},
     {"line 1, column 1 = // a commen...: syntax error while parsing value - invalid literal; last "
      "read: '/'"}},
    {"number_overflow",
     {{R"("lr": 5e-4)", R"("lr": 1e999)"}},
     {"line 13, column 44 = ...: {\"type\": \"adamw\", \"lr\": 1e999, \"betas\":...: number "
      "overflow parsing '1e999'"}},
    {"nan_literal",
     {{R"("lr": 5e-4)", R"("lr": NaN)"}},
     {"line 13, column 40 = ...zer\": {\"type\": \"adamw\", \"lr\": NaN, \"betas...: syntax "
      "error while parsing value - invalid literal; last read: '\"lr\": N'"}},
    {"control_character_in_string",
     {{"", "{\"name\": \"a\tb\"}"}},
     {"line 1, column 12 = {\"name\": \"a\\tb\"}: syntax error while parsing value - invalid "
      "string: control character U+0009 (HT) must be escaped to \\u0009 or \\t; last read: "
      "'\"a<U+0009>'"}},
    {"deep_nesting",
     {{"", std::string(100, '[') + std::string(100, ']')}},
     {"line 1, column 33 = ...[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[...: nested deeper than "
      "32 levels; a model spec nests at most 4"}},
    // --- several issues in one pass, in document order (keys out of the usual order)
    {"document_order",
     {{"", R"({"optimizer": {"lr": -1, "type": "adamw"},
               "name": "a b",
               "layers": [{"type": "encoder", "hidden": 512, "heads": 7, "ffn": 2048,
                           "dropout": {"hidden": 2}},
                          {"type": "encoder", "hidden": 256, "heads": 4, "ffn": 1024,
                           "count": 0}],
               "precision": "fp64"})"}},
     {"optimizer.lr = -1: must be a positive finite number; try 1e-3",
      "name = \"a b\": must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter "
      "or digit (it is used in file names); try \"a-b\"",
      "layers[0].heads = 7: hidden 512 is not divisible by 7 heads; try 8",
      "layers[0].dropout.hidden = 2: must be a probability in [0, 1); 0 turns it off",
      "layers[1].hidden = 256: must equal layers[0].hidden = 512 (all stacks share one residual "
      "stream); try 512",
      "layers[1].count = 0: must be in [1, 1024]; try 1",
      "precision = \"fp64\": must be one of \"fp32\", \"fp16\", \"bf16\""}},
};

INSTANTIATE_TEST_SUITE_P(Spec, SpecBad, testing::ValuesIn(kBadSpecs),
                         [](const testing::TestParamInfo<BadSpec>& info) {
                           return info.param.name;
                         });

TEST(SpecBadTable, CoversEnoughCases) { EXPECT_GE(kBadSpecs.size(), 30u); }

TEST(SpecBadTable, BaseIsValid) { EXPECT_EQ(issues_of(kBase), std::vector<std::string>{}); }

}  // namespace
}  // namespace lightseq
