// lightseq._C — the Python binding. It does not link against torch: the Python package passes
// device pointers (tensor.data_ptr()), the current CUDA stream (as an integer) and an allocation
// callback that allocates through PyTorch's caching allocator. Errors become lightseq.Error (a
// RuntimeError; lightseq.SpecError, also a ValueError, for a bad spec) with lightseq's message.
#include <fmt/format.h>
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "compiler/errors.h"
#include "frontends/spec/parse.h"
#include "runtime/device.h"
#include "runtime/model.h"

namespace py = pybind11;

namespace lightseq {
namespace {

constexpr size_t kAlign = 256;
size_t round_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// An Allocator over a Python callback `alloc(nbytes) -> device pointer` whose memory lives until
// the callback's owner drops it (the Python caller keeps the tensors for the duration of the call).
// Requests are served from chunks; the first chunk is as large as the whole of the previous call
// of the same kind (`hint`), so a steady training loop makes one callback per call.
class CallbackArena final : public Allocator {
 public:
  CallbackArena(const py::function& alloc, std::atomic<size_t>* hint) : alloc_(alloc), hint_(hint) {}
  ~CallbackArena() override {
    const size_t prev = hint_->load();
    if (total_ > prev) hint_->store(total_);
  }
  void* allocate(size_t bytes, CUstream) override {
    if (bytes == 0) return nullptr;
    bytes = round_up(bytes);
    total_ += bytes;
    if (base_ == 0 || used_ + bytes > capacity_) {
      const size_t want = std::max(bytes, chunks_ == 0 ? hint_->load() : size_t{0});
      const auto ptr = alloc_(want).cast<uintptr_t>();
      if (ptr == 0 || ptr % kAlign != 0) {
        throw Error(fmt::format("the allocation callback returned {:#x} for {} bytes; it must return a "
                                "{}-byte aligned device pointer", ptr, want, kAlign));
      }
      base_ = ptr;
      capacity_ = want;
      used_ = 0;
      ++chunks_;
    }
    void* p = reinterpret_cast<void*>(base_ + used_);
    used_ += bytes;
    return p;
  }
  void deallocate(void*, size_t, CUstream) override {}  // the chunks go back when Python drops them

 private:
  py::function alloc_;
  std::atomic<size_t>* hint_;
  uintptr_t base_ = 0;
  size_t capacity_ = 0, used_ = 0, total_ = 0;
  int chunks_ = 0;
};

Precision parse_precision(const std::string& s) {
  if (s == "fp32") return Precision::kFp32;
  if (s == "fp16") return Precision::kFp16;
  if (s == "bf16") return Precision::kBf16;
  throw Error(fmt::format("unknown dtype '{}': lightseq runs fp32, fp16 and bf16", s));
}

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// The saved-activation arena's slots: (name, bytes factor, power of B, power of T, power of S).
std::vector<py::tuple> slot_tuples(const std::vector<SavedSlot>& slots) {
  std::vector<py::tuple> out;
  for (const SavedSlot& s : slots) out.push_back(py::make_tuple(s.name, s.bytes.factor, s.bytes.b, s.bytes.t, s.bytes.s));
  return out;
}

// One encoder stack of a compiled model, with the allocation hints of its calls.
class PyEncoderLayer {
 public:
  PyEncoderLayer(std::shared_ptr<CompiledModel> model, int stack) : layer_(std::move(model), stack) {}

  std::vector<py::tuple> saved_slots() const { return slot_tuples(layer_.saved_slots()); }

  int64_t saved_arena_bytes(int64_t batch, int64_t seq) const {
    return layer_.saved_arena_bytes({batch, seq, 0});
  }

  // weights: the 12 parameter pointers in EncoderWeights order.
  void forward(const std::vector<uintptr_t>& w, const std::string& dtype, uintptr_t x, uintptr_t mask,
               uintptr_t y, int64_t batch, int64_t seq, double p_attention, double p_activation,
               double p_hidden, uint64_t seed, uint64_t offset, uintptr_t saved_arena, uintptr_t stream,
               const py::function& alloc) {
    CallbackArena arena(alloc, &forward_hint_);
    layer_.forward(weights(w), {parse_precision(dtype), ptr<const void>(x), ptr<const uint8_t>(mask), ptr<void>(y)},
                   {batch, seq, 0}, {p_attention, p_activation, p_hidden, 0, seed, offset}, arena,
                   reinterpret_cast<CUstream>(stream), ptr<void>(saved_arena));
  }

  void backward(const std::vector<uintptr_t>& w, const std::vector<uintptr_t>& g, uintptr_t grad_y,
                uintptr_t grad_x, uintptr_t x, uintptr_t mask, int64_t batch, int64_t seq,
                double p_attention, double p_activation, double p_hidden, uint64_t seed, uint64_t offset,
                uintptr_t saved_arena, bool accumulate, uintptr_t stream, const py::function& alloc) {
    if (g.size() != 12) throw Error(fmt::format("backward needs 12 gradient pointers, got {}", g.size()));
    const RunShape shape{batch, seq, 0};
    const DropoutConfig d{p_attention, p_activation, p_hidden, 0, seed, offset};
    const SavedActivations saved =
        layer_.saved_from_arena(ptr<void>(saved_arena), ptr<const void>(x), ptr<const uint8_t>(mask), shape, d);
    EncoderGrads eg{ptr<void>(g[0]), ptr<void>(g[1]), ptr<void>(g[2]),  ptr<void>(g[3]),
                    ptr<void>(g[4]), ptr<void>(g[5]), ptr<void>(g[6]),  ptr<void>(g[7]),
                    ptr<void>(g[8]), ptr<void>(g[9]), ptr<void>(g[10]), ptr<void>(g[11])};
    CallbackArena arena(alloc, &backward_hint_);
    layer_.backward(weights(w), eg, {ptr<const void>(grad_y), ptr<void>(grad_x)}, saved,
                    accumulate ? GradMode::kAccumulate : GradMode::kOverwrite, arena,
                    reinterpret_cast<CUstream>(stream));
  }

 private:
  static EncoderWeights weights(const std::vector<uintptr_t>& w) {
    if (w.size() != 12) throw Error(fmt::format("an encoder layer has 12 parameters, got {}", w.size()));
    auto c = [](uintptr_t p) { return reinterpret_cast<const void*>(p); };
    return {c(w[0]), c(w[1]), c(w[2]), c(w[3]), c(w[4]),  c(w[5]),
            c(w[6]), c(w[7]), c(w[8]), c(w[9]), c(w[10]), c(w[11])};
  }

  EncoderLayer layer_;
  std::atomic<size_t> forward_hint_{0}, backward_hint_{0};
};


// One decoder stack of a compiled model. Parameter pointers (18) in nn.TransformerDecoderLayer's
// order: self_attn (in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias), multihead_attn
// (the same four), linear1 (weight, bias), linear2, norm1, norm2, norm3.
class PyDecoderLayer {
 public:
  PyDecoderLayer(std::shared_ptr<CompiledModel> model, int stack) : layer_(std::move(model), stack) {}

  std::vector<py::tuple> saved_slots() const { return slot_tuples(layer_.saved_slots()); }

  int64_t saved_arena_bytes(int64_t batch, int64_t seq, int64_t src_seq) const {
    return layer_.saved_arena_bytes({batch, seq, src_seq});
  }

  void forward(const std::vector<uintptr_t>& w, const std::string& dtype, uintptr_t x, uintptr_t mask,
               uintptr_t memory, uintptr_t memory_mask, uintptr_t y, int64_t batch, int64_t seq,
               int64_t src_seq, double p_attention, double p_activation, double p_hidden, uint64_t seed,
               uint64_t offset, uintptr_t saved_arena, uintptr_t stream, const py::function& alloc) {
    CallbackArena arena(alloc, &forward_hint_);
    layer_.forward(weights(w), inputs(parse_precision(dtype), x, mask, memory, memory_mask, y),
                   {batch, seq, src_seq}, {p_attention, p_activation, p_hidden, 0, seed, offset}, arena,
                   reinterpret_cast<CUstream>(stream), ptr<void>(saved_arena));
  }

  // grad_memory is added to (+=): the caller zeroes it (or passes another layer's sum).
  void backward(const std::vector<uintptr_t>& w, const std::vector<uintptr_t>& g, uintptr_t grad_y,
                uintptr_t grad_x, uintptr_t grad_memory, uintptr_t x, uintptr_t mask, uintptr_t memory,
                uintptr_t memory_mask, int64_t batch, int64_t seq, int64_t src_seq, double p_attention,
                double p_activation, double p_hidden, uint64_t seed, uint64_t offset, uintptr_t saved_arena,
                bool accumulate, uintptr_t stream, const py::function& alloc) {
    if (g.size() != 18) throw Error(fmt::format("backward needs 18 gradient pointers, got {}", g.size()));
    const RunShape shape{batch, seq, src_seq};
    const DropoutConfig d{p_attention, p_activation, p_hidden, 0, seed, offset};
    const SavedActivations saved =
        layer_.saved_from_arena(ptr<void>(saved_arena), inputs(Precision::kFp32, x, mask, memory, memory_mask, 0),
                                shape, d);
    auto v = [&](int i) { return ptr<void>(g[i]); };
    DecoderGrads dg;
    dg.self_attn = {v(0), v(1), v(2), v(3)};
    dg.multihead_attn = {v(4), v(5), v(6), v(7)};
    dg.linear1_weight = v(8), dg.linear1_bias = v(9), dg.linear2_weight = v(10), dg.linear2_bias = v(11);
    dg.norm1_weight = v(12), dg.norm1_bias = v(13), dg.norm2_weight = v(14), dg.norm2_bias = v(15);
    dg.norm3_weight = v(16), dg.norm3_bias = v(17);
    CallbackArena arena(alloc, &backward_hint_);
    layer_.backward(weights(w), dg, {ptr<const void>(grad_y), ptr<void>(grad_x), ptr<void>(grad_memory)}, saved,
                    accumulate ? GradMode::kAccumulate : GradMode::kOverwrite, arena,
                    reinterpret_cast<CUstream>(stream));
  }

 private:
  static DecoderInputs inputs(Precision p, uintptr_t x, uintptr_t mask, uintptr_t memory, uintptr_t memory_mask,
                              uintptr_t y) {
    return {p, ptr<const void>(x), ptr<const uint8_t>(mask), ptr<const void>(memory),
            ptr<const uint8_t>(memory_mask), ptr<void>(y)};
  }
  static DecoderWeights weights(const std::vector<uintptr_t>& w) {
    if (w.size() != 18) throw Error(fmt::format("a decoder layer has 18 parameters, got {}", w.size()));
    auto c = [&](int i) { return ptr<const void>(w[i]); };
    DecoderWeights d;
    d.self_attn = {c(0), c(1), c(2), c(3)};
    d.multihead_attn = {c(4), c(5), c(6), c(7)};
    d.linear1_weight = c(8), d.linear1_bias = c(9), d.linear2_weight = c(10), d.linear2_bias = c(11);
    d.norm1_weight = c(12), d.norm1_bias = c(13), d.norm2_weight = c(14), d.norm2_bias = c(15);
    d.norm3_weight = c(16), d.norm3_bias = c(17);
    return d;
  }

  DecoderLayer layer_;
  std::atomic<size_t> forward_hint_{0}, backward_hint_{0};
};
}  // namespace
}  // namespace lightseq

PYBIND11_MODULE(_C, m) {
  using namespace lightseq;
  m.doc() = "lightseq's native extension (see the lightseq package)";
  m.attr("__version__") = LIGHTSEQ_VERSION;
  // The exception classes are the package's (lightseq/_errors.py), so that `except lightseq.Error`
  // catches these and the pure-Python errors alike: lightseq.Error (a RuntimeError) for everything
  // lightseq reports, lightseq.SpecError (also a ValueError) for an invalid spec.
  static py::handle error = [] {
    return py::object(py::module_::import("lightseq._errors").attr("Error")).release();
  }();
  static py::handle spec_error = [] {
    return py::object(py::module_::import("lightseq._errors").attr("SpecError")).release();
  }();
  m.attr("Error") = error;
  m.attr("SpecError") = spec_error;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const SpecError& e) {
      PyErr_SetString(spec_error.ptr(), e.what());
    } catch (const Error& e) {
      PyErr_SetString(error.ptr(), e.what());
    }
  });

  m.def("device_count", &device_count, "number of CUDA devices the driver reports (0 without one)");
  m.def("no_gpu_reason", &no_gpu_reason, "why device_count() is 0");
  m.def(
      "validate_spec",
      [](const std::string& json) {
        std::vector<std::string> out;
        try {
          parse_spec_string(json, "<python>");
        } catch (const SpecError& e) {
          for (const SpecIssue& issue : e.issues()) out.push_back(issue.to_string());
          if (e.issues().empty()) out.push_back(e.what());  // malformed JSON
        }
        return out;
      },
      "the problems of a JSON model spec, one line each (empty when it is valid)");
  m.def(
      "spec_issues",
      [](const std::string& json) {
        std::vector<std::tuple<std::string, std::string, std::string>> out;
        try {
          parse_spec_string(json, "<python>");
        } catch (const SpecError& e) {
          for (const SpecIssue& i : e.issues()) out.emplace_back(i.path, i.value, i.message);
        }
        return out;
      },
      "the problems of a JSON model spec as (path, value, message), e.g. ('layers[0].eps', '0.0', "
      "'must be a positive finite number ...'); empty when it is valid");

  py::class_<CompiledModel, std::shared_ptr<CompiledModel>>(m, "CompiledModel")
      .def_static(
          "load",
          [](const std::string& json, int device, std::optional<std::string> cache_dir) {
            RuntimeOptions o;
            o.device = device;
            if (cache_dir) o.cache_dir = *cache_dir;
            const ModelSpec spec = parse_spec_string(json, "<python>");
            py::gil_scoped_release release;  // compiling may take seconds
            return CompiledModel::load(spec, o);
          },
          py::arg("spec_json"), py::arg("device"), py::arg("cache_dir") = py::none())
      .def_property_readonly("device", &CompiledModel::device)
      .def_property_readonly("kernels_compiled", [](const CompiledModel& c) { return c.build_report().compiled; })
      .def_property_readonly("kernels_cached", [](const CompiledModel& c) { return c.build_report().cached; })
      .def_property_readonly("spec_json", [](const CompiledModel& c) { return spec_to_json(c.spec()).dump(); });

  py::class_<PyEncoderLayer>(m, "EncoderLayer")
      .def(py::init<std::shared_ptr<CompiledModel>, int>(), py::arg("model"), py::arg("stack"))
      .def("saved_slots", &PyEncoderLayer::saved_slots,
           "[(name, bytes factor, power of B, power of T, power of S)] of the saved-activation arena")
      .def("saved_arena_bytes", &PyEncoderLayer::saved_arena_bytes)
      .def("forward", &PyEncoderLayer::forward)
      .def("backward", &PyEncoderLayer::backward);

  py::class_<PyDecoderLayer>(m, "DecoderLayer")
      .def(py::init<std::shared_ptr<CompiledModel>, int>(), py::arg("model"), py::arg("stack"))
      .def("saved_slots", &PyDecoderLayer::saved_slots,
           "[(name, bytes factor, power of B, power of T, power of S)] of the saved-activation arena")
      .def("saved_arena_bytes", &PyDecoderLayer::saved_arena_bytes)
      .def("forward", &PyDecoderLayer::forward)
      .def("backward", &PyDecoderLayer::backward);
}
