// parse.h — the JSON model spec front end: JSON text -> validated ModelSpec, and back.
//
// The format, every field with its type, default and rules, and the error format are documented
// in docs/spec.md. Parsing reports every problem of a spec in one pass, in document order, as a
// SpecError whose issues read "path = value: rule; fix", e.g.
//   layers[1].heads = 7: hidden 512 is not divisible by 7 heads; try 8
// A ModelSpec returned by the parser always passes validate_spec().
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

#include "compiler/errors.h"
#include "compiler/spec/model_spec.h"
#include "compiler/spec/validate.h"

namespace lightseq {

// Parses and validates a spec. Throws SpecError (source = `source_name`) listing all issues:
// malformed JSON (one issue, path "line L, column C", value an excerpt of that line), unknown or
// duplicate keys, wrong types, missing required fields, bad enum names, and every rule of
// validate_spec().
ModelSpec parse_spec_string(std::string_view json, std::string_view source_name = "<string>");

// Reads `path` and parses it. A missing or unreadable file is a SpecError naming the path and the
// operating system's reason.
ModelSpec parse_spec_file(const std::filesystem::path& path);

// The spec as JSON with every field written out (defaults included; "scale" as a number).
// Round-trips: parse_spec_string(spec_to_json(s).dump()) == s for every valid spec s.
nlohmann::json spec_to_json(const ModelSpec& spec);

}  // namespace lightseq
