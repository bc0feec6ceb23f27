// validate.h — the rules on a model spec's values (docs/spec.md), checked on the spec model itself:
// the JSON front end (frontends/spec/parse.h) reports them with its structural issues, the runtime
// checks a spec built in code (or by the Python front end from a PyTorch model) before compiling.
#pragma once

#include <vector>

#include "compiler/errors.h"
#include "compiler/spec/model_spec.h"

namespace lightseq {

// Checks every rule of docs/spec.md on an already-built spec. Empty when the spec is valid.
// Issues name JSON paths ("layers[1].heads") and render values from the struct (doubles in
// shortest round-trip form).
std::vector<SpecIssue> validate_spec(const ModelSpec& spec);

}  // namespace lightseq
