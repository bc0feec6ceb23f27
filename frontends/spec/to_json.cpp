// to_json.cpp — ModelSpec -> JSON with every field written out, the inverse of the parser.
#include <string>

#include "frontends/spec/parse.h"

namespace lightseq {
namespace {

using Json = nlohmann::json;

// attention_output only when set: specs without it keep their JSON (and cache keys).
Json dropout_json(const DropoutSpec& d) {
  Json j{{"attention", d.attention}, {"activation", d.activation}, {"hidden", d.hidden}};
  if (d.attention_output) j["attention_output"] = *d.attention_output;
  return j;
}

std::string name_of(auto e) { return std::string(to_string(e)); }

Json stack_to_json(const LayerStackSpec& s) {
  Json j{{"type", name_of(s.kind)},
         {"count", s.count},
         {"hidden", s.hidden},
         {"heads", s.heads},
         {"ffn", s.ffn},
         {"activation", name_of(s.activation)},
         {"norm", name_of(s.norm)},
         {"eps", s.eps},
         {"causal", s.causal},
         {"dropout", dropout_json(s.dropout)}};
  if (s.final_norm) j["final_norm"] = true;  // only when set: specs without it keep their JSON
  if (s.attention != AttentionBackend::kUnfused) j["attention"] = name_of(s.attention);
  return j;
}

}  // namespace

Json spec_to_json(const ModelSpec& spec) {
  Json j{{"name", spec.name}, {"precision", name_of(spec.precision)}};
  if (spec.embedding) {
    const EmbeddingSpec& e = *spec.embedding;
    j["embedding"] = Json{{"vocab", e.vocab},
                          {"hidden", e.hidden},
                          {"positions", name_of(e.positions)},
                          {"max_positions", e.max_positions},
                          {"padding_idx", e.padding_idx},
                          {"scale", e.scale},
                          {"dropout", e.dropout},
                          {"layernorm", e.layernorm},
                          {"layernorm_eps", e.layernorm_eps},
                          {"tie_output", e.tie_output}};
    if (e.positions_from != PositionsFrom::kIndex)
      j["embedding"]["positions_from"] = name_of(e.positions_from);
    if (e.padding_rows != PaddingRows::kZero)
      j["embedding"]["padding_rows"] = name_of(e.padding_rows);
    if (e.token_types > 0) j["embedding"]["token_types"] = e.token_types;
  }
  j["layers"] = Json::array();
  for (const LayerStackSpec& s : spec.layers) j["layers"].push_back(stack_to_json(s));
  if (spec.criterion) {
    const CriterionSpec& c = *spec.criterion;
    j["criterion"] = Json{{"type", name_of(c.kind)},
                          {"label_smoothing", c.label_smoothing},
                          {"ignore_index", c.ignore_index}};
    if (c.logits_chunk_mib != CriterionSpec{}.logits_chunk_mib)
      j["criterion"]["logits_chunk_mib"] = c.logits_chunk_mib;
    if (c.input != CriterionInput::kHidden) j["criterion"]["input"] = name_of(c.input);
  }
  if (spec.optimizer) {
    const OptimizerSpec& o = *spec.optimizer;
    j["optimizer"] = Json{{"type", name_of(o.kind)},
                          {"lr", o.lr},
                          {"betas", {o.beta1, o.beta2}},
                          {"eps", o.eps},
                          {"weight_decay", o.weight_decay}};
    if (o.clip_norm > 0) j["optimizer"]["clip_norm"] = o.clip_norm;
  }
  return j;
}

}  // namespace lightseq
