// errors.h — the typed errors of lightseq. The library never calls exit(); front ends translate
// these (lsc prints them and exits non-zero; Python maps SpecError to ValueError).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace lightseq {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One problem found in a spec: where (a JSON path such as "layers[1].heads"), the offending value
// as written, and a message that states the rule and a fix.
struct SpecIssue {
  std::string path;
  std::string value;
  std::string message;
  // "layers[1].heads = 7: hidden 512 is not divisible by 7 heads; try 8"
  std::string to_string() const;
};

// All problems of a spec, found in one pass. what() lists them one per line, the first
// kMaxListedIssues of them, then "... and N more" (issues() holds them all).
class SpecError : public Error {
 public:
  static constexpr size_t kMaxListedIssues = 50;
  explicit SpecError(std::vector<SpecIssue> issues, std::string source = "");
  const std::vector<SpecIssue>& issues() const { return issues_; }

 private:
  std::vector<SpecIssue> issues_;
};

// NVRTC rejected a generated program. Carries everything needed to reproduce it.
class CompileError : public Error {
 public:
  struct Details {
    std::string program;              // program name, e.g. "layernorm:bf16:sm_90"
    std::vector<std::string> labels;  // kernel labels in the program
    std::vector<std::string> options;
    std::string nvrtc_version;  // "13.0"
    std::string log;            // the full NVRTC log
    std::string source_path;    // where the source was dumped ("" if it could not be written)
  };
  explicit CompileError(Details d);
  const Details& details() const { return details_; }

 private:
  Details details_;
};

// A CUDA driver / runtime / cuBLAS / NVRTC API call failed.
class CudaError : public Error {
 public:
  using Error::Error;
};

// A disk-cache operation failed in a way that cannot be recovered by rebuilding.
class CacheError : public Error {
 public:
  using Error::Error;
};

// A planner or code generator invariant was violated: a bug in lightseq, not in the input.
class InternalError : public Error {
 public:
  using Error::Error;
};

}  // namespace lightseq
