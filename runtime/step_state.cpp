// step_state.cpp — TrainStep's parameters (initialization, import/export by state_dict name) and
// its checkpoints.
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <map>

#include "compiler/errors.h"
#include "compiler/util/atomic_file.h"
#include "compiler/util/sha256.h"
#include "runtime/device.h"
#include "runtime/host_dtype.h"
#include "runtime/step_arenas.h"

namespace lightseq {

using step_detail::download;
using step_detail::sync;

namespace {

// splitmix64: a fixed algorithm, so one seed gives the same weights on every platform and library
// version (std's distributions are implementation-defined).
struct SplitMix {
  uint64_t x;
  uint64_t next() {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double normal() {
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

bool ends_with(std::string_view s, std::string_view tail) {
  return s.size() >= tail.size() && s.substr(s.size() - tail.size()) == tail;
}

void check_bytes(const ArenaEntry& e, size_t bytes, Precision p, std::string_view what) {
  const size_t want = static_cast<size_t>(e.numel) * element_bytes(p);
  if (bytes != want) {
    throw Error(fmt::format("{} '{}': {} bytes given, the tensor has {} ({} elements of {})", what,
                            e.name, bytes, want, e.numel, to_string(p)));
  }
}

}  // namespace

void TrainStep::init_parameters(uint64_t seed) {
  const ModelSpec& spec = model_->spec();
  const int64_t hidden = spec.embedding->hidden;
  std::vector<float> values(static_cast<size_t>(arena_.total), 0.f);
  for (size_t k = 0; k < arena_.entries.size(); ++k) {
    const ArenaEntry& e = arena_.entries[k];
    SplitMix rng{seed * 0x2545F4914F6CDD1Dull + k};  // a stream per tensor
    float* v = values.data() + e.offset;
    const std::string_view name = e.param;
    if (name == "embed_tokens.weight" || name == "output_projection.weight") {
      const double sd = 1.0 / std::sqrt(static_cast<double>(hidden));
      for (int64_t i = 0; i < e.numel; ++i) v[i] = static_cast<float>(sd * rng.normal());
      const int64_t pad = spec.embedding->padding_idx;
      if (name == "embed_tokens.weight" && pad >= 0)
        std::fill(v + pad * hidden, v + (pad + 1) * hidden, 0.f);
    } else if (name == "embed_positions.weight" || name == "embed_token_types.weight") {
      for (int64_t i = 0; i < e.numel; ++i) v[i] = static_cast<float>(0.02 * rng.normal());
    } else if (ends_with(name, ".bias")) {
      // zero
    } else if (e.shape.size() != 2) {  // LayerNorm weights
      std::fill(v, v + e.numel, 1.f);
    } else {  // Xavier uniform over [fan_out, fan_in]
      const double fan_out = static_cast<double>(e.shape[0].factor),
                   fan_in = static_cast<double>(e.shape[1].factor);
      const double a = std::sqrt(6.0 / (fan_in + fan_out));
      for (int64_t i = 0; i < e.numel; ++i) v[i] = static_cast<float>(a * (2 * rng.uniform() - 1));
    }
  }
  ScopedContext ctx(model_->device());
  CUstream s = nullptr;
  const Precision p = spec.precision;
  const std::vector<uint8_t> bytes = encode(values, p);
  LIGHTSEQ_CU_CHECK(
      driver().cuMemcpyHtoDAsync(mem_->params.device_ptr(), bytes.data(), bytes.size(), s));
  std::vector<float> rounded;
  if (mem_->master) {
    rounded = decode(bytes, p);
    LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(mem_->master.device_ptr(), rounded.data(),
                                                 rounded.size() * sizeof(float), s));
  }
  for (DeviceBuffer* b : {&mem_->exp_avg, &mem_->exp_avg_sq, &mem_->grads})
    LIGHTSEQ_CU_CHECK(driver().cuMemsetD8Async(b->device_ptr(), 0, b->bytes(), s));
  const kern::OptimState st = kern::initial_optim_state(
      options_.loss_scale.value_or(p == Precision::kFp16 ? 65536.f : 1.f));
  LIGHTSEQ_CU_CHECK(
      driver().cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(mem_->state), &st, sizeof(st), s));
  sync(s);
  steps_run_ = 0;
  updates_base_ = 0;
}

void TrainStep::set_parameter(std::string_view name, const void* host, size_t bytes) {
  const ArenaEntry& e = entry(name);
  const Precision p = model_->spec().precision;
  check_bytes(e, bytes, p, "set_parameter");
  ScopedContext ctx(model_->device());
  CUstream s = nullptr;
  const int64_t eb = element_bytes(p);
  LIGHTSEQ_CU_CHECK(
      driver().cuMemcpyHtoDAsync(mem_->params.device_ptr() + e.offset * eb, host, bytes, s));
  std::vector<float> f;
  if (mem_->master) {  // the master copy is the parameter's exact value
    const auto* b = static_cast<const uint8_t*>(host);
    f = decode(std::vector<uint8_t>(b, b + bytes), p);
    LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(mem_->master.device_ptr() + e.offset * 4, f.data(),
                                                 f.size() * sizeof(float), s));
  }
  sync(s);
}

namespace {

// One tensor of an arena (params or grads, the model's dtype) into host memory.
void copy_out(const ArenaEntry& e, const DeviceBuffer& arena, Precision p, void* host, size_t bytes,
              std::string_view what) {
  check_bytes(e, bytes, p, what);
  LIGHTSEQ_CU_CHECK(driver().cuMemcpyDtoHAsync(
      host, arena.device_ptr() + e.offset * element_bytes(p), bytes, nullptr));
  sync(nullptr);
}

}  // namespace

void TrainStep::get_parameter(std::string_view name, void* host, size_t bytes) const {
  ScopedContext ctx(model_->device());
  copy_out(entry(name), mem_->params, model_->spec().precision, host, bytes, "get_parameter");
}

void TrainStep::get_gradient(std::string_view name, void* host, size_t bytes) const {
  ScopedContext ctx(model_->device());
  copy_out(entry(name), mem_->grads, model_->spec().precision, host, bytes, "get_gradient");
}

// ---- checkpoints --------------------------------------------------------------------------------
//
// "lightseq-checkpoint 1\n", then "key value" lines (model, precision, layout — a SHA-256 over the
// precision and every arena entry's name, offset and size —, steps, updates_base, seed, bytes), an
// empty line, and the blobs: params, master (16-bit models), exp_avg, exp_avg_sq, the scalars.

namespace {

constexpr std::string_view kCheckpointMagic = "lightseq-checkpoint 1\n";

std::string layout_hash(const ParamArena& a, Precision p) {
  std::string text = fmt::format("{} {}\n", to_string(p), a.total);
  for (const ArenaEntry& e : a.entries)
    text += fmt::format("{} {} {}\n", e.name, e.offset, e.numel);
  return sha256_hex(text);
}

}  // namespace

std::vector<DeviceBuffer*> TrainStep::state_blobs() const {
  std::vector<DeviceBuffer*> blobs{&mem_->params};
  if (mem_->master) blobs.push_back(&mem_->master);
  blobs.insert(blobs.end(), {&mem_->exp_avg, &mem_->exp_avg_sq, &mem_->scalars});
  return blobs;
}

void TrainStep::save(const std::filesystem::path& file, CUstream s) const {
  ScopedContext ctx(model_->device());
  const Precision p = model_->spec().precision;
  const std::vector<DeviceBuffer*> blobs = state_blobs();
  size_t total = 0;
  for (const DeviceBuffer* b : blobs) total += b->bytes();
  std::string out(kCheckpointMagic);
  out += fmt::format(
      "model {}\nprecision {}\nlayout {}\nsteps {}\nupdates_base {}\nseed {}\nbytes {}\n\n",
      model_->spec().name, to_string(p), layout_hash(arena_, p), steps_run_, updates_base_,
      options_.seed, total);
  size_t at = out.size();
  out.resize(at + total);
  for (const DeviceBuffer* b : blobs) {
    LIGHTSEQ_CU_CHECK(driver().cuMemcpyDtoHAsync(out.data() + at, b->device_ptr(), b->bytes(), s));
    at += b->bytes();
  }
  sync(s);
  write_file_atomically(file, out);
}

void TrainStep::load(const std::filesystem::path& file, CUstream s) {
  const ReadResult r = read_whole_file(file, size_t{1} << 40, Symlinks::kFollow);
  if (r.status != ReadStatus::kOk) {
    throw Error(r.status == ReadStatus::kMissing
                    ? fmt::format("checkpoint '{}' does not exist", file.string())
                    : fmt::format("checkpoint: {}", r.error));
  }
  const std::string& d = r.data;
  auto bad = [&](std::string_view why) {
    return Error(fmt::format("checkpoint '{}' {}", file.string(), why));
  };
  if (d.compare(0, kCheckpointMagic.size(), kCheckpointMagic) != 0)
    throw bad("is not a lightseq checkpoint (it does not start with 'lightseq-checkpoint 1')");
  const size_t end = d.find("\n\n");
  if (end == std::string::npos) throw bad("is truncated (its header does not end)");
  std::map<std::string, std::string> kv;
  for (size_t at = kCheckpointMagic.size(); at < end;) {
    const size_t nl = d.find('\n', at);
    const std::string line = d.substr(at, nl - at);
    const size_t sp = line.find(' ');
    if (sp != std::string::npos) kv[line.substr(0, sp)] = line.substr(sp + 1);
    at = nl + 1;
  }
  const Precision p = model_->spec().precision;
  if (kv["layout"] != layout_hash(arena_, p)) {
    throw bad(fmt::format(
        "is of another model ('{}', {}): its parameters are laid out differently from '{}' ({}); "
        "resume with the spec it was trained with",
        kv["model"], kv["precision"], model_->spec().name, to_string(p)));
  }
  const std::vector<DeviceBuffer*> blobs = state_blobs();
  size_t total = 0;
  for (const DeviceBuffer* b : blobs) total += b->bytes();
  const size_t head = end + 2;
  if (d.size() != head + total || kv["bytes"] != std::to_string(total)) {
    throw bad(fmt::format("is truncated or damaged: {} bytes of state, {} expected",
                          d.size() - head, total));
  }
  ScopedContext ctx(model_->device());
  size_t at = head;
  for (DeviceBuffer* b : blobs) {
    LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(b->device_ptr(), d.data() + at, b->bytes(), s));
    at += b->bytes();
  }
  sync(s);
  steps_run_ = std::stoll(kv["steps"]);
  updates_base_ = std::stoll(kv["updates_base"]);
  // The run's seed (the header's: a checkpoint's scalars hold its writer's rank_seed); this
  // process draws from its own rank's.
  options_.seed = std::stoull(kv["seed"]);
  const uint64_t seed = rank_seed();
  LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(mem_->seed), &seed,
                                               sizeof(uint64_t), s));
  sync(s);
}

}  // namespace lightseq
