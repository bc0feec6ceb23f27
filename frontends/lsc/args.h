// args.h — lsc's argument checks and usage messages on top of CLI11: whole numbers with a lower
// bound, non-empty values, and the unknown-subcommand message that names the word.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lightseq::lsc {

// A whole number of at least `min` (and at most INT_MAX): "abc" is "'abc' is not a whole
// number", "-3" is "-3 is too small: must be at least 1" (`note` appended in parentheses, e.g.
// "0 = one per core"). CLI11 prefixes the option's name.
CLI::Validator whole_number_at_least(int64_t min, std::string note = "");

// A finite number > 0: "abc" is "'abc' is not a number: give one greater than 0, e.g. <example>",
// "0" / "-1" / "inf" is "0 is not greater than 0: give one such as <example>".
CLI::Validator positive_number(std::string example);

// One of `names`: "'frob' is not one of copy, reverse".
CLI::Validator one_of(std::vector<std::string> names);

// Refuses "": "an empty value is not allowed: <fix>".
CLI::Validator non_empty(std::string fix);

// For a CLI11 RequiredError from an app whose subcommand is missing or not one it knows:
// "lsc cache: unknown subcommand 'frob': expected one of ls, clear", or "" when the error is
// about something else.
std::string subcommand_error(const CLI::App& app);

}  // namespace lightseq::lsc
