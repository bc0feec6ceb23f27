#include "frontends/lsc/args.h"

#include <fmt/format.h>

#include <charconv>
#include <climits>
#include <cmath>
#include <vector>

namespace lightseq::lsc {

CLI::Validator whole_number_at_least(int64_t min, std::string note) {
  const std::string suffix = note.empty() ? "" : " (" + note + ")";
  return CLI::Validator(
      [min, suffix](std::string& text) -> std::string {
        long long value = 0;
        const char* end = text.data() + text.size();
        const auto [stop, ec] = std::from_chars(text.data(), end, value);
        if (ec == std::errc() && stop == end) {
          if (value < min)
            return fmt::format("{} is too small: must be at least {}{}", text, min, suffix);
          if (value > INT_MAX)
            return fmt::format("{} is too large: must be at most {}", text, INT_MAX);
          return "";
        }
        if (ec == std::errc::result_out_of_range) {
          return fmt::format("{} is too large: must be at most {}", text, INT_MAX);
        }
        return fmt::format("'{}' is not a whole number: give one of at least {}{}", text, min,
                           suffix);
      },
      "");  // no help-text suffix: the option's description says what it takes
}

CLI::Validator positive_number(std::string example) {
  return CLI::Validator(
      [example](std::string& text) -> std::string {
        double value = 0;
        const char* end = text.data() + text.size();
        const auto [stop, ec] = std::from_chars(text.data(), end, value);
        if (ec != std::errc() || stop != end) {
          return fmt::format("'{}' is not a number: give one greater than 0, e.g. {}", text,
                             example);
        }
        if (!(value > 0) || !std::isfinite(value)) {
          return fmt::format("{} is not greater than 0: give one such as {}", text, example);
        }
        return "";
      },
      "");
}

CLI::Validator one_of(std::vector<std::string> names) {
  return CLI::Validator(
      [names](std::string& text) -> std::string {
        for (const std::string& n : names) {
          if (text == n) return "";
        }
        return fmt::format("'{}' is not one of {}", text, fmt::join(names, ", "));
      },
      "");
}

CLI::Validator non_empty(std::string fix) {
  return CLI::Validator(
      [fix](std::string& text) -> std::string {
        return text.empty() ? "an empty value is not allowed: " + fix : "";
      },
      "");
}

std::string subcommand_error(const CLI::App& app) {
  // The deepest parsed app that still lacks its subcommand.
  const CLI::App* at = &app;
  std::string path = app.get_name();
  for (bool deeper = true; deeper;) {
    deeper = false;
    for (const CLI::App* sub : at->get_subcommands({})) {
      if (sub->parsed()) {
        at = sub;
        path += " " + sub->get_name();
        deeper = true;
        break;
      }
    }
  }
  if (at->get_require_subcommand_min() == 0 || !at->get_subcommands().empty()) return "";
  std::vector<std::string> names;
  for (const CLI::App* sub : at->get_subcommands({})) names.push_back(sub->get_name());
  const std::string expected = fmt::format("expected one of {}", fmt::join(names, ", "));
  const std::vector<std::string> rest = at->remaining();
  if (rest.empty()) return fmt::format("{}: a subcommand is required: {}", path, expected);
  const std::string_view what = rest.front().starts_with("-") ? "option" : "subcommand";
  return fmt::format("{}: unknown {} '{}': {}", path, what, rest.front(), expected);
}

}  // namespace lightseq::lsc
