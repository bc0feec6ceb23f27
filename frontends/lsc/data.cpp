#include "frontends/lsc/data.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <climits>

#include "compiler/util/atomic_file.h"

namespace lightseq::lsc {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }

// What an id of a part of a line is used as, which decides the ids it may be.
enum class Use {
  kInput,     // only fed to the model: in the vocabulary, not padding_idx
  kSequence,  // fed to the model and predicted: also not ignore_index
  kTarget,    // only predicted (a tagger's targets): in the vocabulary, or ignore_index
};

class LineParser {
 public:
  LineParser(std::string_view name, int64_t line, const TokenRules& rules)
      : name_(name), line_(line), rules_(rules) {}

  [[noreturn]] void fail(std::string_view what) const {
    throw DataError(fmt::format("{}:{}: {}", name_, line_, what));
  }

  // The whitespace-separated words of a line, split at each "|||".
  std::vector<std::vector<std::string_view>> split(std::string_view text) const {
    std::vector<std::vector<std::string_view>> parts(1);
    size_t i = 0;
    while (i < text.size()) {
      while (i < text.size() && is_space(text[i])) ++i;
      const size_t begin = i;
      while (i < text.size() && !is_space(text[i])) ++i;
      if (i == begin) break;
      const std::string_view word = text.substr(begin, i - begin);
      if (word == "|||") {
        parts.emplace_back();
      } else if (word.find("|||") != std::string_view::npos) {
        fail(fmt::format("'{}': write '|||' with spaces around it", word));
      } else {
        parts.back().push_back(word);
      }
    }
    return parts;
  }

  std::vector<int32_t> ids(const std::vector<std::string_view>& words, Use use) const {
    std::vector<int32_t> out;
    out.reserve(words.size());
    for (std::string_view w : words) {
      long long v = 0;
      const auto [stop, ec] = std::from_chars(w.data(), w.data() + w.size(), v);
      if (ec == std::errc::result_out_of_range) {
        fail(fmt::format("token id {} is outside the vocabulary [0, {})", w, rules_.vocab));
      }
      if (ec != std::errc() || stop != w.data() + w.size()) {
        fail(fmt::format("'{}' is not a token id: a line holds whole numbers separated by spaces",
                         w));
      }
      if (use == Use::kTarget && v == rules_.ignore_index) {
        out.push_back(static_cast<int32_t>(v));
        continue;
      }
      if (v < 0 || v >= rules_.vocab) {
        fail(use == Use::kTarget
                 ? fmt::format(
                       "target {} is outside the vocabulary [0, {}) and is not the criterion's "
                       "ignore_index {}",
                       v, rules_.vocab, rules_.ignore_index)
                 : fmt::format("token id {} is outside the vocabulary [0, {})", v, rules_.vocab));
      }
      if (use != Use::kTarget && v == rules_.padding_idx) {
        fail(fmt::format(
            "token id {} is the embedding's padding_idx: the batcher pads with it, so a sequence "
            "cannot hold it",
            v));
      }
      if (use == Use::kSequence && v == rules_.ignore_index) {
        fail(fmt::format(
            "token id {} is the criterion's ignore_index: as a target it would never be learned",
            v));
      }
      out.push_back(static_cast<int32_t>(v));
    }
    return out;
  }

  Example parse(std::string_view text) const {
    const auto parts = split(text);
    Example e;
    switch (rules_.shape) {
      case ModelShape::kEncoderDecoder: {
        if (parts.size() == 1) {
          fail("no '|||': this spec has decoder stacks, so a line is 'source ids ||| target ids'");
        }
        if (parts.size() > 2) fail("more than one '|||': a line is 'source ids ||| target ids'");
        if (parts[0].empty()) fail("the source (before '|||') is empty");
        if (parts[1].empty()) fail("the target (after '|||') is empty");
        e.src = ids(parts[0], Use::kInput);
        e.targets = ids(parts[1], Use::kSequence);
        e.tokens.push_back(static_cast<int32_t>(rules_.bos));
        e.tokens.insert(e.tokens.end(), e.targets.begin(), e.targets.end() - 1);
        return e;
      }
      case ModelShape::kLanguageModel: {
        if (parts.size() > 2) {
          fail("more than one '|||': a line is 'ids' or 'prompt ids ||| answer ids'");
        }
        std::vector<int32_t> seq = ids(parts[0], Use::kSequence);
        if (parts.size() == 1) {
          if (seq.size() < 2) {
            fail(
                "a language-model line needs at least 2 ids: the inputs are ids[:-1], the targets "
                "ids[1:]");
          }
          e.tokens.assign(seq.begin(), seq.end() - 1);
          e.targets.assign(seq.begin() + 1, seq.end());
          return e;
        }
        if (parts[0].empty()) fail("the prompt (before '|||') is empty");
        if (parts[1].empty()) fail("the answer (after '|||') is empty");
        const std::vector<int32_t> answer = ids(parts[1], Use::kSequence);
        e.targets.assign(seq.size() - 1, static_cast<int32_t>(rules_.ignore_index));
        e.targets.insert(e.targets.end(), answer.begin(), answer.end());
        seq.insert(seq.end(), answer.begin(), answer.end() - 1);
        e.tokens = std::move(seq);
        return e;
      }
      case ModelShape::kTagger: {
        if (parts.size() > 2) fail("more than one '|||': a line is 'ids' or 'ids ||| targets'");
        if (parts.size() == 1) {
          e.tokens = ids(parts[0], Use::kSequence);
          e.targets = e.tokens;
          return e;
        }
        if (parts[0].empty()) fail("the input (before '|||') is empty");
        e.tokens = ids(parts[0], Use::kInput);
        e.targets = ids(parts[1], Use::kTarget);
        if (e.targets.size() != e.tokens.size()) {
          fail(fmt::format(
              "{} targets for {} input ids: an encoder-only spec that is not causal takes one "
              "target per input id",
              e.targets.size(), e.tokens.size()));
        }
        return e;
      }
    }
    fail("unknown model shape");
  }

 private:
  std::string_view name_;
  int64_t line_;
  const TokenRules& rules_;
};

}  // namespace

TokenRules token_rules(const ModelSpec& spec) {
  std::vector<std::string> missing, fixes;
  if (!spec.embedding) {
    missing.push_back("embedding");
    fixes.push_back(R"("embedding": {"vocab": ..., "hidden": ..., "padding_idx": 1})");
  }
  if (!spec.criterion) {
    missing.push_back("criterion");
    fixes.push_back(R"("criterion": {"type": "cross_entropy"})");
  }
  if (!spec.optimizer) {
    missing.push_back("optimizer");
    fixes.push_back(R"("optimizer": {"type": "adamw", "lr": 5e-4})");
  }
  if (!missing.empty()) {
    throw Error(fmt::format(
        "{} cannot be trained: it has no {} section; lsc train runs the whole model (embedding, "
        "stacks, criterion, optimizer): add {} (docs/spec.md; examples/transformer-base.json has "
        "them all)",
        spec.name, fmt::join(missing, ", no "), fmt::join(fixes, ", ")));
  }
  TokenRules r;
  const bool decoder =
      std::any_of(spec.layers.begin(), spec.layers.end(),
                  [](const LayerStackSpec& s) { return s.kind == LayerKind::kDecoder; });
  r.shape = decoder                                         ? ModelShape::kEncoderDecoder
            : !spec.layers.empty() && spec.layers[0].causal ? ModelShape::kLanguageModel
                                                            : ModelShape::kTagger;
  r.vocab = spec.embedding->vocab;
  r.padding_idx = spec.embedding->padding_idx;
  r.pad = r.padding_idx >= 0 ? r.padding_idx : 0;
  r.ignore_index = spec.criterion->ignore_index;
  r.max_positions = spec.embedding->max_positions;
  if (r.vocab > INT32_MAX) {
    throw Error(fmt::format("{}: embedding.vocab = {}: lsc train takes token ids below 2^31",
                            spec.name, r.vocab));
  }
  if (r.padding_idx < 0 && r.shape != ModelShape::kLanguageModel) {
    throw Error(fmt::format(
        "{}: embedding.padding_idx = -1: lsc train pads its batches, and without a padding token "
        "this model would attend to the padding (only a causal encoder-only model never looks "
        "past its last token); set embedding.padding_idx, e.g. to 0",
        spec.name));
  }
  while (r.bos == r.padding_idx || r.bos == r.ignore_index) ++r.bos;
  return r;
}

Dataset parse_examples(std::string_view text, std::string_view name, const TokenRules& rules,
                       int64_t max_len) {
  Dataset d;
  d.fingerprint = 0xCBF29CE484222325ull;
  const auto mix = [&](int64_t v) {
    for (int i = 0; i < 8; ++i)
      d.fingerprint = (d.fingerprint ^ ((v >> (8 * i)) & 0xFF)) * 0x100000001B3ull;
  };
  int64_t line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    const size_t first = line.find_first_not_of(" \t\r");
    if (first == std::string_view::npos || line[first] == '#') continue;
    Example e = LineParser(name, line_no, rules).parse(line);
    const int64_t longest = static_cast<int64_t>(std::max(e.src.size(), e.tokens.size()));
    d.longest = std::max(d.longest, longest);
    if (max_len > 0 && longest > max_len) {
      ++d.skipped;
      continue;
    }
    for (const std::vector<int32_t>* stream : {&e.src, &e.tokens, &e.targets}) {
      mix(static_cast<int64_t>(stream->size()));
      for (int32_t v : *stream) mix(v);
    }
    d.examples.push_back(std::move(e));
  }
  if (d.examples.empty()) {
    if (d.skipped > 0) {
      throw DataError(fmt::format(
          "{}: all {} examples are longer than --max-len {} (the longest has {} tokens); raise "
          "--max-len",
          name, d.skipped, max_len, d.longest));
    }
    throw DataError(fmt::format("{}: no examples: every line is blank or a comment", name));
  }
  return d;
}

Dataset read_examples(const std::filesystem::path& path, const TokenRules& rules, int64_t max_len) {
  constexpr size_t kMaxBytes = size_t{1} << 36;  // 64 GiB: a guard, not a format limit
  const ReadResult r = read_whole_file(path, kMaxBytes, Symlinks::kFollow);
  if (r.status != ReadStatus::kOk) {
    // "train.txt: cannot open: No such file or directory", "d: is a directory, not a regular file"
    throw DataError(fmt::format("{}: {}", path.string(), r.reason));
  }
  return parse_examples(r.data, path.string(), rules, max_len);
}

std::string_view to_string(SyntheticTask t) {
  switch (t) {
    case SyntheticTask::kCopy:
      return "copy";
    case SyntheticTask::kReverse:
      return "reverse";
  }
  return "?";
}

std::vector<int32_t> synthetic_alphabet(const TokenRules& rules) {
  std::vector<int32_t> out;
  for (int64_t id = rules.bos + 1;
       id < rules.vocab && static_cast<int64_t>(out.size()) < kSyntheticTokens; ++id) {
    if (id != rules.padding_idx && id != rules.ignore_index)
      out.push_back(static_cast<int32_t>(id));
  }
  if (out.size() < 2) {
    throw DataError(fmt::format(
        "--synthetic: the vocabulary [0, {}) leaves {} token ids besides BOS {}, padding_idx and "
        "ignore_index: the synthetic tasks need at least 2; use a spec with a larger "
        "embedding.vocab",
        rules.vocab, out.size(), rules.bos));
  }
  return out;
}

std::vector<Example> synthetic_examples(SyntheticTask task, const TokenRules& rules, int64_t count,
                                        int64_t max_len, uint64_t seed) {
  const std::vector<int32_t> alphabet = synthetic_alphabet(rules);
  const bool lm = rules.shape == ModelShape::kLanguageModel;
  const int64_t n_max = lm ? max_len / 2 : max_len;
  if (n_max < 1) {
    throw DataError(fmt::format(
        "--max-len {} is too short for --synthetic on a language model: a sequence and its {} "
        "need at least 2 positions",
        max_len, task == SyntheticTask::kCopy ? "copy" : "reversal"));
  }
  const auto bos = static_cast<int32_t>(rules.bos);
  const auto ignore = static_cast<int32_t>(rules.ignore_index);
  Rng rng(seed);
  std::vector<Example> out(count);
  for (Example& e : out) {
    const auto n = static_cast<size_t>(1 + rng.below(n_max));
    std::vector<int32_t> x(n);
    for (int32_t& v : x) v = alphabet[rng.below(alphabet.size())];
    std::vector<int32_t> y = x;
    if (task == SyntheticTask::kReverse) std::reverse(y.begin(), y.end());
    switch (rules.shape) {
      case ModelShape::kEncoderDecoder:
        e.src = std::move(x);
        e.tokens.push_back(bos);
        e.tokens.insert(e.tokens.end(), y.begin(), y.end() - 1);
        e.targets = std::move(y);
        break;
      case ModelShape::kLanguageModel:
        e.tokens.push_back(bos);
        e.tokens.insert(e.tokens.end(), x.begin(), x.end());
        e.tokens.insert(e.tokens.end(), y.begin(), y.end() - 1);
        e.targets.assign(n, ignore);
        e.targets.insert(e.targets.end(), y.begin(), y.end());
        break;
      case ModelShape::kTagger:
        e.tokens = std::move(x);
        e.targets = std::move(y);
        break;
    }
  }
  return out;
}

uint64_t Rng::below(uint64_t n) {
  const uint64_t threshold = (0 - n) % n;  // 2^64 mod n: values below it would bias the modulo
  for (;;) {
    const uint64_t r = next();
    if (r >= threshold) return r % n;
  }
}

uint64_t stream_seed(uint64_t seed, std::string_view stream, uint64_t number) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a of the stream's name
  for (char c : stream) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001B3ull;
  Rng rng(seed ^ h ^ (number * 0xD1B54A32D192ED03ull));
  return rng.next();
}

}  // namespace lightseq::lsc
