#include "compiler/errors.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace lightseq {
namespace {

std::string spec_error_message(const std::vector<SpecIssue>& issues, const std::string& source) {
  std::string out;
  if (!source.empty()) {
    out = fmt::format("{}: invalid model spec ({} issue{}):", source, issues.size(),
                      issues.size() == 1 ? "" : "s");
  } else if (issues.empty()) {
    out = "invalid model spec";
  }
  const size_t listed = std::min(issues.size(), SpecError::kMaxListedIssues);
  for (size_t i = 0; i < listed; ++i) {
    if (!out.empty()) out += '\n';
    out += issues[i].to_string();
  }
  if (listed < issues.size()) out += fmt::format("\n... and {} more", issues.size() - listed);
  return out;
}

std::string compile_error_message(const CompileError::Details& d) {
  std::string out = fmt::format("NVRTC failed to compile program {}\n", d.program);
  if (d.labels.empty()) {
    out += "kernels: (none)\n";
  } else {
    out += fmt::format("kernels: {}\n", fmt::join(d.labels, ", "));
  }
  out += fmt::format("options: {}\n", fmt::join(d.options, " "));
  out += fmt::format("NVRTC version: {}\n", d.nvrtc_version);
  out +=
      fmt::format("source: {}\n", d.source_path.empty() ? "(could not be written)" : d.source_path);
  out += "log:\n";
  out += d.log;
  return out;
}

}  // namespace

std::string SpecIssue::to_string() const {
  return fmt::format("{} = {}: {}", path, value, message);
}

SpecError::SpecError(std::vector<SpecIssue> issues, std::string source)
    : Error(spec_error_message(issues, source)), issues_(std::move(issues)) {}

CompileError::CompileError(Details d) : Error(compile_error_message(d)), details_(std::move(d)) {}

}  // namespace lightseq
