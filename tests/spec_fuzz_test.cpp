// spec_fuzz_test.cpp — random mutations of the example specs. The parser must either return a
// spec that passes validate_spec() and round-trips, or throw SpecError with printable issues:
// never another exception, a crash, or a hang. Time-bounded (LIGHTSEQ_FUZZ_SECONDS, default 3);
// the seed is printed and can be replayed with LIGHTSEQ_FUZZ_SEED.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "compiler/errors.h"
#include "compiler/spec/rules.h"
#include "frontends/spec/parse.h"

namespace lightseq {
namespace {

using Clock = std::chrono::steady_clock;

std::vector<std::string> example_texts() {
  std::vector<std::string> texts;
  for (const char* name :
       {"transformer-base.json", "transformer-big.json", "bert-base.json", "gpt2-small.json"}) {
    std::ifstream in(std::filesystem::path(LIGHTSEQ_SOURCE_DIR) / "examples" / name);
    std::stringstream ss;
    ss << in.rdbuf();
    texts.push_back(ss.str());
  }
  return texts;
}

bool printable(std::string_view s) {
  for (unsigned char c : s) {
    if ((c < 0x20 && c != '\n') || c >= 0x7f) return false;
  }
  return true;
}

// Shows a failing input so that it can be turned into a regression case.
std::string escaped(std::string_view s) {
  std::string out;
  for (unsigned char c : s.substr(0, 2000)) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

// Parses `text` and checks the contract; returns an empty string when it holds.
std::string check_contract(const std::string& text) {
  try {
    const ModelSpec spec = parse_spec_string(text, "fuzz");
    std::vector<SpecIssue> issues = validate_spec(spec);
    if (!issues.empty()) return "accepted a spec that fails validation: " + issues[0].to_string();
    if (!(parse_spec_string(spec_to_json(spec).dump()) == spec)) return "no round trip";
  } catch (const SpecError& e) {
    if (e.issues().empty()) return "SpecError without issues";
    if (!printable(e.what())) return std::string("non-printable message: ") + escaped(e.what());
  } catch (const std::exception& e) {
    return std::string("unexpected exception: ") + e.what();
  } catch (...) {
    return "unexpected non-std exception";
  }
  return "";
}

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : rng_(seed) {}

  std::string mutate(std::string text) {
    const int rounds = 1 + pick(3);
    for (int r = 0; r < rounds; ++r) mutate_once(text);
    return text;
  }

 private:
  std::mt19937_64 rng_;

  size_t pick(size_t n) {
    return n == 0 ? 0 : std::uniform_int_distribution<size_t>(0, n - 1)(rng_);
  }

  void mutate_once(std::string& t) {
    static const std::vector<std::string> kTokens = {"{",
                                                     "}",
                                                     "[",
                                                     "]",
                                                     ",",
                                                     ":",
                                                     "\"",
                                                     "\\",
                                                     "null",
                                                     "true",
                                                     "false",
                                                     "-",
                                                     "0",
                                                     "1e",
                                                     "\"x\":",
                                                     "\"heads\": 7,",
                                                     "\"causal\": false,",
                                                     "\xff",
                                                     "\xc3",
                                                     "\t",
                                                     "\n",
                                                     "\"\\u0000\"",
                                                     "//",
                                                     "\"layers\": [],",
                                                     "\"embedding\": null,",
                                                     "\"hidden\": 1,",
                                                     "\"type\": \"decoder\","};
    static const std::vector<std::string> kNumbers = {"0",
                                                      "-1",
                                                      "1e999",
                                                      "-1e999",
                                                      "1e-400",
                                                      "NaN",
                                                      "Infinity",
                                                      "-0",
                                                      "0.5",
                                                      "512.0",
                                                      "7",
                                                      "1e308",
                                                      "2147483648",
                                                      "9223372036854775807",
                                                      "9223372036854775808",
                                                      "18446744073709551616",
                                                      "99999999999999999999999999",
                                                      "-9223372036854775809",
                                                      "1.5e3",
                                                      "0x10",
                                                      "1.",
                                                      ".5",
                                                      "+1",
                                                      "00",
                                                      "1e+",
                                                      "4294967296"};
    const size_t pos = pick(t.size() + 1);
    switch (pick(9)) {
      case 0:  // flip a bit
        if (!t.empty()) t[pick(t.size())] ^= static_cast<char>(1 << pick(8));
        break;
      case 1:  // truncate
        t.resize(pos);
        break;
      case 2:  // insert a token
        t.insert(pos, kTokens[pick(kTokens.size())]);
        break;
      case 3: {  // replace a number with an extreme one
        size_t start = t.find_first_of("0123456789", pos);
        if (start == std::string::npos) break;
        size_t end = t.find_first_not_of("0123456789.eE+-", start);
        t.replace(start, (end == std::string::npos ? t.size() : end) - start,
                  kNumbers[pick(kNumbers.size())]);
        break;
      }
      case 4: {  // delete a range
        size_t len = pick(64);
        t.erase(pos, len);
        break;
      }
      case 5: {  // duplicate a range (duplicate keys, repeated stacks)
        size_t len = pick(200);
        t.insert(pos, t.substr(pos, len));
        break;
      }
      case 6: {  // deep nesting
        size_t depth = 1 + pick(20000);
        t.insert(pos, std::string(depth, pick(2) ? '[' : '{'));
        break;
      }
      case 7:  // a random byte
        if (!t.empty()) t[pick(t.size())] = static_cast<char>(pick(256));
        break;
      case 8: {  // swap a string value for another one of the document
        size_t q = t.find('"', pos);
        if (q == std::string::npos) break;
        size_t q2 = t.find('"', q + 1);
        if (q2 == std::string::npos) break;
        static const std::vector<std::string> kWords = {
            "decoder", "encoder",     "learned", "gelu",  "pre", "adam",    "fp32",
            "",        "sqrt_hidden", "hedas",   "bf16 ", "a/b", "\\ud800", "\\u00e9"};
        t.replace(q + 1, q2 - q - 1, kWords[pick(kWords.size())]);
        break;
      }
    }
  }
};

uint64_t fuzz_seed() {
  if (const char* s = std::getenv("LIGHTSEQ_FUZZ_SEED")) return std::strtoull(s, nullptr, 10);
  return std::random_device{}();
}

double fuzz_seconds() {
  if (const char* s = std::getenv("LIGHTSEQ_FUZZ_SECONDS")) return std::min(std::atof(s), 600.0);
  return 3.0;
}

TEST(SpecFuzz, MutatedExamplesParseOrThrowSpecError) {
  const std::vector<std::string> examples = example_texts();
  for (const std::string& e : examples) ASSERT_FALSE(e.empty()) << "missing example";
  const uint64_t seed = fuzz_seed();
  const double budget = fuzz_seconds();
  std::printf("[ fuzz     ] seed %llu (replay: LIGHTSEQ_FUZZ_SEED=%llu), budget %.1f s\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed), budget);
  Mutator mutator(seed);
  const Clock::time_point start = Clock::now();
  int64_t iterations = 0, accepted = 0;
  double slowest = 0;
  while (std::chrono::duration<double>(Clock::now() - start).count() < budget) {
    const std::string input = mutator.mutate(examples[iterations % examples.size()]);
    const Clock::time_point t0 = Clock::now();
    const std::string failure = check_contract(input);
    const double took = std::chrono::duration<double>(Clock::now() - t0).count();
    slowest = std::max(slowest, took);
    ASSERT_EQ(failure, "") << "seed " << seed << ", iteration " << iterations << ", input:\n"
                           << escaped(input);
    ASSERT_LT(took, 1.0) << "parse took " << took << " s; seed " << seed << ", iteration "
                         << iterations;
    try {
      parse_spec_string(input);
      ++accepted;
    } catch (const SpecError&) {
    }
    ++iterations;
  }
  std::printf("[ fuzz     ] %lld iterations (%lld accepted), slowest parse %.2f ms\n",
              static_cast<long long>(iterations), static_cast<long long>(accepted), slowest * 1e3);
  EXPECT_GT(iterations, 100);
}

TEST(SpecFuzz, DeepNestingIsASpecErrorNotAStackOverflow) {
  for (size_t depth : {33, 10000, 200000}) {  // 200000 levels of {"a": stay under 1 MiB
    for (char open : {'[', '{'}) {
      std::string text(depth, open);
      if (open == '{') {
        text.clear();
        for (size_t i = 0; i < depth; ++i) text += "{\"a\":";
      }
      EXPECT_EQ(check_contract(text), "") << depth;
      try {
        parse_spec_string(text);
        ADD_FAILURE() << "accepted " << depth << " levels";
      } catch (const SpecError& e) {
        ASSERT_EQ(e.issues().size(), 1u);
        EXPECT_EQ(e.issues()[0].message,
                  "nested deeper than 32 levels; a model spec nests at most 4");
      }
    }
  }
  // Balanced but deep: the parser stops at level 33 and never builds the rest.
  std::string balanced = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_EQ(check_contract(balanced), "");
  // Brackets inside a string do not count.
  std::string in_string = "{\"name\": \"" + std::string(1000, '[') + "\"}";
  EXPECT_EQ(check_contract(in_string), "");
}

// A guard against quadratic behaviour (80000 unknown keys each compared with every known one, say),
// not a speed measurement: the bound is generous so a loaded CI machine cannot trip it, while a
// quadratic parser (minutes) still does.
TEST(SpecFuzz, HugeFlatInputsFinish) {
  std::string many_keys = "{";
  for (int i = 0; i < 80000; ++i) many_keys += "\"k" + std::to_string(i) + "\": 1,";
  many_keys += "\"name\": \"x\"}";
  std::string long_array = "[" + std::string(1, '0');
  for (int i = 0; i < 200000; ++i) long_array += ",0";
  long_array += "]";
  for (const std::string* text : {&many_keys, &long_array}) {
    ASSERT_LE(text->size(), spec_detail::kMaxSpecBytes) << "parsed, not refused for its size";
    const Clock::time_point t0 = Clock::now();
    EXPECT_EQ(check_contract(*text), "");
    EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 60.0);
  }
}

}  // namespace
}  // namespace lightseq
