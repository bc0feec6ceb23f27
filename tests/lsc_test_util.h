// lsc_test_util.h — runs the built `lsc` (LIGHTSEQ_LSC_PATH) and collects its exit status and
// output, for the `lsc` end-to-end tests.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>
#include <string_view>

namespace lightseq::lsc_test {

inline const std::string kSource = LIGHTSEQ_SOURCE_DIR;
inline const std::string kLsc = LIGHTSEQ_LSC_PATH;

struct Result {
  int status = -1;     // the exit status; -1 if it did not exit (a signal)
  std::string output;  // stdout and stderr together
};

// Runs `command` with /bin/sh, stderr merged into stdout.
inline Result run_shell(const std::string& command) {
  Result r;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

// Runs `lsc <args>`; args are passed through the shell as written.
inline Result run(const std::string& args) { return run_shell(kLsc + " " + args); }

// What CLI11 adds after a usage error.
inline constexpr std::string_view kMore = "\nRun with --help for more information.\n";

// `lsc <args>` is a usage error: exit status 2 and exactly `message` (then kMore). A gtest
// assertion helper: include <gtest/gtest.h> first.
inline void expect_usage_error(const std::string& args, const std::string& message) {
  SCOPED_TRACE(args);
  const Result r = run(args);
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_EQ(r.output, message + std::string(kMore));
}

inline std::string example(const std::string& name) {
  return kSource + "/examples/" + name + ".json";
}

}  // namespace lightseq::lsc_test
