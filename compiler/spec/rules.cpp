#include "compiler/spec/rules.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <vector>

namespace lightseq::spec_detail {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

int64_t edit_distance(std::string_view a, std::string_view b) {
  // Keys are short; anything longer cannot be a typo of a key and is not worth the quadratic work.
  if (a.size() > 64 || b.size() > 64) return INT64_MAX;
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<int64_t>> d(n + 1, std::vector<int64_t>(m + 1, 0));
  for (size_t i = 0; i <= n; ++i) d[i][0] = static_cast<int64_t>(i);
  for (size_t j = 0; j <= m; ++j) d[0][j] = static_cast<int64_t>(j);
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      int64_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[n][m];
}

std::optional<std::string_view> closest_name(std::string_view given,
                                             std::span<const std::string_view> candidates) {
  const std::string g = lower(given);
  const int64_t limit = g.size() >= 5 ? 2 : 1;
  std::optional<std::string_view> best;
  int64_t best_distance = limit + 1;
  for (std::string_view c : candidates) {
    int64_t dist = edit_distance(g, lower(c));
    if (dist < best_distance) {
      best_distance = dist;
      best = c;
    }
  }
  if (best) return best;
  size_t best_gap = SIZE_MAX;
  for (std::string_view c : candidates) {
    const std::string lc = lower(c);
    const bool contains = std::min(lc.size(), g.size()) >= 3 &&
                          (g.find(lc) != std::string::npos || lc.find(g) != std::string::npos);
    size_t gap = lc.size() > g.size() ? lc.size() - g.size() : g.size() - lc.size();
    if (contains && gap < best_gap) {
      best_gap = gap;
      best = c;
    }
  }
  return best;
}

}  // namespace lightseq::spec_detail

namespace lightseq {

void append_escaped(std::string& out, std::string_view s, size_t max_chars, Escape mode) {
  for (unsigned char c : s) {
    if (out.size() >= max_chars) {
      out += "...";
      break;
    }
    if (mode == Escape::kJsonString && (c == '"' || c == '\\')) {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r' && mode == Escape::kText) {
      out += "\\r";
    } else if (c < 0x20 || c >= 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
}

std::string quote_string(std::string_view s, size_t max_chars) {
  std::string out = "\"";
  append_escaped(out, s, max_chars, Escape::kJsonString);
  out += '"';
  return out;
}

}  // namespace lightseq
