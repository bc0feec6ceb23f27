#include "frontends/lsc/train_state.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "compiler/util/atomic_file.h"

namespace lightseq::lsc {

namespace {

using nlohmann::json;

constexpr size_t kMaxStateBytes = size_t{64} << 20;

}  // namespace

std::string state_to_json(const TrainState& s) {
  json curve = json::array();
  for (const CurvePoint& p : s.curve) {
    json point = {{"step", p.step},
                  {"loss", p.loss},
                  {"nll", p.nll},
                  {"lr", p.lr},
                  {"ms_per_step", p.ms_per_step}};
    if (p.valid_loss) point["valid_loss"] = *p.valid_loss;
    if (p.valid_nll) point["valid_nll"] = *p.valid_nll;
    curve.push_back(std::move(point));
  }
  const json j = {{"format", kStateFormat},
                  {"spec", s.spec},
                  {"step", s.step},
                  {"epoch", s.data.epoch},
                  {"batch", s.data.batch},
                  {"checkpoint", s.checkpoint},
                  {"seed", s.seed},
                  {"tokens_per_batch", s.tokens_per_batch},
                  {"max_len", s.max_len},
                  {"data", s.data_source},
                  {"data_fingerprint", fmt::format("{:016x}", s.data_fingerprint)},
                  {"lr", s.lr},
                  {"warmup", s.warmup},
                  {"curve", std::move(curve)}};
  return j.dump(1) + "\n";
}

TrainState state_from_json(std::string_view text, std::string_view name) {
  TrainState s;
  try {
    const json j = json::parse(text);
    if (!j.is_object() || !j.contains("format") || j.at("format") != kStateFormat) {
      throw DataError(
          fmt::format("{}: not an lsc train state (\"format\" is not \"{}\")", name, kStateFormat));
    }
    s.spec = j.at("spec").get<std::string>();
    s.step = j.at("step").get<int64_t>();
    s.data = {j.at("epoch").get<int64_t>(), j.at("batch").get<int64_t>()};
    s.checkpoint = j.at("checkpoint").get<std::string>();
    s.seed = j.at("seed").get<uint64_t>();
    s.tokens_per_batch = j.at("tokens_per_batch").get<int64_t>();
    s.max_len = j.at("max_len").get<int64_t>();
    s.data_source = j.at("data").get<std::string>();
    s.data_fingerprint = std::stoull(j.at("data_fingerprint").get<std::string>(), nullptr, 16);
    s.lr = j.at("lr").get<double>();
    s.warmup = j.at("warmup").get<int64_t>();
    for (const json& p : j.at("curve")) {
      CurvePoint c;
      c.step = p.at("step").get<int64_t>();
      c.loss = p.at("loss").get<double>();
      c.nll = p.at("nll").get<double>();
      c.lr = p.at("lr").get<double>();
      c.ms_per_step = p.at("ms_per_step").get<double>();
      if (p.contains("valid_loss")) c.valid_loss = p.at("valid_loss").get<double>();
      if (p.contains("valid_nll")) c.valid_nll = p.at("valid_nll").get<double>();
      s.curve.push_back(c);
    }
  } catch (const json::exception& e) {
    throw DataError(fmt::format("{}: not a valid lsc train state: {}", name, e.what()));
  } catch (const std::logic_error& e) {  // stoull
    throw DataError(fmt::format("{}: not a valid lsc train state: bad data_fingerprint", name));
  }
  if (s.step < 0 || s.data.epoch < 0 || s.data.batch < 0 || s.checkpoint.empty() ||
      s.checkpoint.find('/') != std::string::npos) {
    throw DataError(fmt::format(
        "{}: not a valid lsc train state: step, epoch and batch must be >= 0 and checkpoint a "
        "file name in the same directory",
        name));
  }
  return s;
}

TrainState read_state(const std::filesystem::path& dir) {
  const std::filesystem::path file = dir / kStateFile;
  const ReadResult r = read_whole_file(file, kMaxStateBytes, Symlinks::kFollow);
  if (r.status != ReadStatus::kOk) {
    throw DataError(fmt::format("--resume {}: {}: {}{}", dir.string(), file.string(), r.reason,
                                r.status == ReadStatus::kMissing
                                    ? " (a directory written by lsc train --save holds it)"
                                    : ""));
  }
  return state_from_json(r.data, file.string());
}

void write_state(const std::filesystem::path& dir, const TrainState& state) {
  write_file_atomically(dir / kStateFile, state_to_json(state));
}

std::string checkpoint_name(int64_t step) { return fmt::format("checkpoint-{:08d}.lsc", step); }

std::optional<std::string> resume_mismatch(const TrainState& saved, const TrainState& now,
                                           const std::filesystem::path& dir) {
  const auto differ = [&](std::string_view what, const auto& a, const auto& b) {
    return fmt::format(
        "--resume {}: it was trained with {} {}, this run has {}: resume with the same {} (the "
        "batches depend on it), or start a new run without --resume",
        dir.string(), what, a, b, what);
  };
  if (saved.spec != now.spec) {
    return fmt::format(
        "--resume {}: it holds a run of spec '{}', not '{}': give the spec it was trained with",
        dir.string(), saved.spec, now.spec);
  }
  if (saved.data_source != now.data_source) {
    return fmt::format(
        "--resume {}: it was trained on {}, this run reads {}: resume with the same data (the "
        "batches depend on it), or start a new run without --resume",
        dir.string(), saved.data_source, now.data_source);
  }
  if (saved.data_fingerprint != now.data_fingerprint) {
    return fmt::format(
        "--resume {}: the examples of {} differ from those it was trained on (fingerprint {:016x}, "
        "now {:016x}): resume with the same data file, or start a new run without --resume",
        dir.string(), now.data_source, saved.data_fingerprint, now.data_fingerprint);
  }
  if (saved.seed != now.seed) return differ("--seed", saved.seed, now.seed);
  if (saved.tokens_per_batch != now.tokens_per_batch) {
    return differ("--tokens-per-batch", saved.tokens_per_batch, now.tokens_per_batch);
  }
  if (saved.max_len != now.max_len) return differ("--max-len", saved.max_len, now.max_len);
  return std::nullopt;
}

}  // namespace lightseq::lsc
