// lightseq._C — the Python binding. It does not link against torch: the Python package passes
// device pointers (tensor.data_ptr()), the current CUDA stream (as an integer) and an allocation
// callback that allocates through PyTorch's caching allocator. Errors become lightseq.Error (a
// RuntimeError; lightseq.SpecError, also a ValueError, for a bad spec) with lightseq's message.
#include <fmt/format.h>
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/adam_types.cuh"
#include "compiler/errors.h"
#include "compiler/graph/param_arena.h"
#include "frontends/spec/parse.h"
#include "runtime/device.h"
#include "runtime/layer_calls.h"
#include "runtime/model.h"
#include "runtime/step.h"

namespace py = pybind11;

namespace lightseq {
namespace {

// A ChunkSource over a Python callback `alloc(nbytes) -> device pointer` whose memory lives until
// the callback's owner drops it (the Python caller keeps the tensors for the duration of the call,
// and a captured call's `keep` for as long as its graph).
ChunkSource chunks_of(const py::function& alloc) {
  return [&alloc](size_t bytes) { return reinterpret_cast<void*>(alloc(bytes).cast<uintptr_t>()); };
}

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// The saved-activation arena's slots: (name, bytes factor, power of B, power of T, power of S).
std::vector<py::tuple> slot_tuples(const std::vector<SavedSlot>& slots) {
  std::vector<py::tuple> out;
  for (const SavedSlot& s : slots)
    out.push_back(py::make_tuple(s.name, s.bytes.factor, s.bytes.b, s.bytes.t, s.bytes.s));
  return out;
}

const char* dtype_name(ElemType t) {
  switch (t) {
    case ElemType::kModel:
      return "model";
    case ElemType::kF32:
      return "float32";
    case ElemType::kI64:
      return "int64";
    case ElemType::kU8:
      return "uint8";
    case ElemType::kI32:
      return "int32";
    case ElemType::kOptimState:
      return "optim_state";
  }
  return "?";
}

// A manifest entry as a dict: name, role, shape [(factor, power of B, of T, of S)], dtype ("model"
// for the model's precision), optional, accumulates, grad_of.
py::dict entry_dict(const ManifestEntry& e) {
  std::vector<py::tuple> shape;
  for (const Dim& d : e.shape) shape.push_back(py::make_tuple(d.factor, d.b, d.t, d.s));
  py::dict out;
  out["name"] = e.name;
  out["role"] = std::string(to_string(e.role));
  out["shape"] = shape;
  out["dtype"] = dtype_name(e.type);
  out["optional"] = e.optional;
  out["accumulates"] = e.accumulates;
  out["grad_of"] = e.grad_of;
  return out;
}

// Any layer of a compiled model (an encoder or decoder stack, the embedding, the criterion, the
// optimizer), bound positionally by its manifest: one class, and no code per layer kind.
class PyLayer {
 public:
  PyLayer(std::shared_ptr<CompiledModel> model, std::string name)
      : model_(std::move(model)), name_(std::move(name)), calls_(model_->layer(name_)) {}

  std::vector<py::dict> manifest(bool backward) const {
    std::vector<py::dict> out;
    for (const ManifestEntry& e : calls_.executor().manifest(backward))
      out.push_back(entry_dict(e));
    return out;
  }
  std::vector<py::tuple> saved_slots() const {
    return slot_tuples(calls_.executor().saved_slots());
  }
  // An "auto" layer's fused plan (LayerPlan::fused_rule): (max_keys, max_batch, its saved slots),
  // or None. The front end sizes a call's saved arena by the plan the rule picks.
  py::object fused_plan() const {
    const LayerExecutor* f = calls_.executor().fused();
    if (!f) return py::none();
    const FusedRule& r = calls_.executor().plan().fused_rule;
    return py::make_tuple(r.max_keys, r.max_batch, slot_tuples(f->saved_slots()));
  }
  int64_t saved_arena_bytes(int64_t batch, int64_t seq, int64_t src_seq) const {
    return calls_.executor().saved_arena_bytes(RunShape{batch, seq, src_seq});
  }

  // args: a device pointer (0: null) per forward manifest entry, in order. rng: the device address
  // of two uint64, the dropout seed and offset, read by the kernels when they run (graph-safe:
  // a captured call replays with what is there at replay), or 0 for `seed` and `offset`.
  void forward(const std::vector<uintptr_t>& args, int64_t batch, int64_t seq, int64_t src_seq,
               const std::vector<double>& p, uint64_t seed, uint64_t offset, uintptr_t rng,
               uintptr_t saved_arena, uintptr_t stream, const py::function& alloc) {
    run(false, args, batch, seq, src_seq, dropout(p, seed, offset, rng), saved_arena, false, stream,
        alloc);
  }

  // args: a device pointer per backward manifest entry, in order; accumulate: parameter gradients
  // `+=` instead of `=`.
  void backward(const std::vector<uintptr_t>& args, int64_t batch, int64_t seq, int64_t src_seq,
                const std::vector<double>& p, uint64_t seed, uint64_t offset, uintptr_t rng,
                uintptr_t saved_arena, bool accumulate, uintptr_t stream,
                const py::function& alloc) {
    run(true, args, batch, seq, src_seq, dropout(p, seed, offset, rng), saved_arena, accumulate,
        stream, alloc);
  }

  // forward() (backward = false) or backward(), replayed from a CUDA graph when the same call
  // recurs (runtime/layer_calls.h). `keep` is the Python object that holds what `alloc`
  // allocated; a captured call keeps it as long as its graph.
  void call(bool backward, const std::vector<uintptr_t>& args, int64_t batch, int64_t seq,
            int64_t src_seq, const std::vector<double>& p, uintptr_t rng, uintptr_t saved_arena,
            bool accumulate, uintptr_t stream, const py::function& alloc, const py::object& keep) {
    const std::vector<void*> ptrs = pointers(args);
    ScopedContext ctx(model_->device());
    calls_.replay(layer_call(backward, ptrs, batch, seq, src_seq, dropout(p, 0, 0, rng),
                             saved_arena, accumulate),
                  reinterpret_cast<CUstream>(stream), chunks_of(alloc), [&] {
                    return std::shared_ptr<void>(new py::object(keep), [](void* o) {
                      py::gil_scoped_acquire gil;
                      delete static_cast<py::object*>(o);
                    });
                  });
  }

  py::dict graph_stats() const {
    const CallGraphs::Stats st = calls_.graph_stats();
    py::dict out;
    out["eager"] = st.eager;
    out["captures"] = st.captures;
    out["replays"] = st.replays;
    out["refused"] = st.refused;
    out["pinned_bytes"] = st.pinned_bytes;
    return out;
  }
  void set_graphs(bool on) { calls_.set_graphs(on); }

 private:
  // forward() or backward(): one eager call.
  void run(bool backward, const std::vector<uintptr_t>& args, int64_t batch, int64_t seq,
           int64_t src_seq, const DropoutConfig& drop, uintptr_t saved_arena, bool accumulate,
           uintptr_t stream, const py::function& alloc) {
    const std::vector<void*> ptrs = pointers(args);
    ScopedContext ctx(model_->device());
    calls_.run(layer_call(backward, ptrs, batch, seq, src_seq, drop, saved_arena, accumulate),
               reinterpret_cast<CUstream>(stream), chunks_of(alloc));
  }
  // The call after the shape check (a shape the layer cannot take is refused by name).
  LayerCall layer_call(bool backward, const std::vector<void*>& ptrs, int64_t batch, int64_t seq,
                       int64_t src_seq, const DropoutConfig& drop, uintptr_t saved_arena,
                       bool accumulate) const {
    const RunShape shape{batch, seq, src_seq};
    model_->check_run_shape(name_, shape);
    return LayerCall{backward,
                     ptrs,
                     shape,
                     drop,
                     ptr<void>(saved_arena),
                     accumulate ? GradMode::kAccumulate : GradMode::kOverwrite};
  }
  static std::vector<void*> pointers(const std::vector<uintptr_t>& args) {
    std::vector<void*> out(args.size());
    for (size_t i = 0; i < args.size(); ++i) out[i] = reinterpret_cast<void*>(args[i]);
    return out;
  }
  // p: the probabilities of the attention, activation, hidden, embedding and attention-output
  // dropout sites.
  static DropoutConfig dropout(const std::vector<double>& p, uint64_t seed, uint64_t offset,
                               uintptr_t rng) {
    if (p.size() != 5) {
      throw Error(
          fmt::format("dropout: 5 probabilities (attention, activation, hidden, embedding, "
                      "attention output), got {}",
                      p.size()));
    }
    if (rng % alignof(uint64_t) != 0) {
      throw Error(fmt::format("dropout: the seed/offset address {:#x} is not 8-byte aligned", rng));
    }
    const auto* words = ptr<const uint64_t>(rng);
    return DropoutConfig{
        p[0], p[1], p[2], p[3], p[4], seed, offset, words, words != nullptr ? words + 1 : nullptr};
  }

  std::shared_ptr<CompiledModel> model_;
  std::string name_;
  LayerCalls calls_;
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
      "spec_choices",
      [] {
        py::dict d;
        d["precision"] = names_of(kPrecisions);
        d["embedding.positions"] = names_of(kPositionKinds);
        d["embedding.positions_from"] = names_of(kPositionsFromValues);
        d["embedding.padding_rows"] = names_of(kPaddingRowsValues);
        d["layers.type"] = names_of(kLayerKinds);
        d["layers.activation"] = names_of(kActivations);
        d["layers.norm"] = names_of(kNormPlacements);
        d["layers.attention"] = names_of(kAttentionBackends);
        d["criterion.type"] = names_of(kCriterionKinds);
        d["criterion.input"] = names_of(kCriterionInputs);
        d["optimizer.type"] = names_of(kOptimizerKinds);
        return d;
      },
      "{spec path: [the names it takes]} for every enumerated field of a spec (docs/spec.md), as "
      "the parser accepts them");
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
      .def_property_readonly("kernels_compiled",
                             [](const CompiledModel& c) { return c.build_report().compiled; })
      .def_property_readonly("kernels_cached",
                             [](const CompiledModel& c) { return c.build_report().cached; })
      .def_property_readonly("spec_json",
                             [](const CompiledModel& c) { return spec_to_json(c.spec()).dump(); });

  py::class_<PyLayer>(m, "Layer")
      .def(py::init<std::shared_ptr<CompiledModel>, std::string>(), py::arg("model"),
           py::arg("name"))
      .def("manifest", &PyLayer::manifest, py::arg("backward"),
           "what a call binds, in order: [{name, role, shape, dtype, optional, accumulates, "
           "grad_of}]")
      .def("saved_slots", &PyLayer::saved_slots,
           "[(name, bytes factor, power of B, power of T, power of S)] of the saved-activation "
           "arena")
      .def("fused_plan", &PyLayer::fused_plan,
           "an \"auto\" layer's fused plan: (max_keys, max_batch, saved slots), which runs the "
           "calls whose batch is at most max_batch and whose attentions have at most max_keys "
           "keys; None for other layers")
      .def("saved_arena_bytes", &PyLayer::saved_arena_bytes, py::arg("batch"), py::arg("seq"),
           py::arg("src_seq"), "bytes of the saved-activation arena of a call of this shape")
      .def("forward", &PyLayer::forward)
      .def("backward", &PyLayer::backward)
      .def("call", &PyLayer::call,
           "forward (backward=False) or backward, replayed from a CUDA graph when the same call "
           "recurs: (backward, args, batch, seq, src_seq, p, rng, saved_arena, accumulate, stream, "
           "alloc, keep)")
      .def("graph_stats", &PyLayer::graph_stats,
           "{eager, captures, replays, refused, pinned_bytes} of call()")
      .def("set_graphs", &PyLayer::set_graphs, py::arg("on"),
           "whether call() captures and replays graphs (captured ones stay until the layer goes)");
  // The whole-model training step (runtime/step.h). Pointers are integers: device addresses of
  // int64 token tensors for run/evaluate, host addresses of contiguous CPU tensors in the model's
  // dtype for the parameter copies; streams are torch's cuda_stream integers.
  auto stream_of = [](uintptr_t s) { return reinterpret_cast<CUstream>(s); };
  auto batch_of = [](uintptr_t src, uintptr_t tokens, uintptr_t targets, int64_t batch,
                     int64_t src_len, int64_t len, uintptr_t token_types) {
    return StepBatch{reinterpret_cast<const int64_t*>(src),
                     reinterpret_cast<const int64_t*>(tokens),
                     reinterpret_cast<const int64_t*>(targets),
                     batch,
                     src_len,
                     len,
                     reinterpret_cast<const int64_t*>(token_types)};
  };
  auto shape_of = [](const ArenaEntry& e) {  // an arena entry's constant shape
    std::vector<int64_t> shape;
    for (const Dim& d : e.shape) shape.push_back(d.factor);
    return shape;
  };
  // What lightseq.optim's flat arenas follow: each tensor starts at a multiple of this many
  // elements (param_arena.h), and its optimizer state is an OptimState (adam_types.cuh).
  m.attr("ARENA_ALIGN_ELEMS") = kArenaAlignElems;
  m.attr("OPTIM_STATE_STEP_OFFSET") = offsetof(kern::OptimState, step);
  m.def(
      "initial_optim_state",
      [](float loss_scale) {
        const kern::OptimState st = kern::initial_optim_state(loss_scale);
        return py::bytes(reinterpret_cast<const char*>(&st), sizeof(st));
      },
      py::arg("loss_scale"),
      "the bytes of the optimizer state before the first step (the step count is an int32 at "
      "OPTIM_STATE_STEP_OFFSET)");
  auto stats_dict = [](const StepStats& s) {
    py::dict d;
    d["loss"] = s.loss;
    d["nll"] = s.nll;
    d["tokens"] = s.tokens;
    d["updates"] = s.updates;
    d["loss_scale"] = s.loss_scale;
    d["skipped_updates"] = s.skipped_updates;
    d["bad_token"] = s.bad_token;
    d["bad_target"] = s.bad_target;
    return d;
  };
  // A process group's NCCL communicator (runtime/comm.h): rank 0 makes the id, which the
  // frontend hands to the other ranks (torch.distributed), then every rank constructs one.
  m.def("comm_unavailable_reason", &Communicator::unavailable_reason);
  m.def("comm_new_id", [] {
    const CommId id = Communicator::new_id();
    return py::bytes(id.bytes.data(), id.bytes.size());
  });
  py::class_<Communicator, std::shared_ptr<Communicator>>(m, "Communicator")
      .def(py::init([](const py::bytes& id, int rank, int world, int device) {
             const std::string b = id;
             if (b.size() != CommId::kBytes) {
               throw Error(fmt::format("a process group's id is {} bytes, not {}", CommId::kBytes,
                                       b.size()));
             }
             CommId c;
             std::copy(b.begin(), b.end(), c.bytes.begin());
             py::gil_scoped_release unlocked;  // collective: waits for every rank
             return std::make_shared<Communicator>(c, rank, world, device);
           }),
           py::arg("id"), py::arg("rank"), py::arg("world"), py::arg("device"))
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("world", &Communicator::world);
  py::class_<TrainStep>(m, "TrainStep")
      .def(py::init([](std::shared_ptr<CompiledModel> model, uint64_t seed,
                       std::optional<float> loss_scale, bool cuda_graphs,
                       std::shared_ptr<Communicator> comm) {
             StepOptions o;
             o.seed = seed;
             o.loss_scale = loss_scale;
             o.cuda_graphs = cuda_graphs;
             o.comm = std::move(comm);
             return std::make_unique<TrainStep>(std::move(model), o);
           }),
           py::arg("model"), py::arg("seed") = 0, py::arg("loss_scale") = py::none(),
           py::arg("cuda_graphs") = true, py::arg("comm") = py::none())
      .def(
          "parameters",
          [=](const TrainStep& t) {
            std::vector<std::tuple<std::string, std::vector<int64_t>>> out;
            for (const ArenaEntry& e : t.arena().entries) out.emplace_back(e.name, shape_of(e));
            return out;
          },
          "[(state_dict name, shape)] of every parameter, in arena order")
      .def(
          "layout",
          [=](const TrainStep& t) {
            std::vector<std::tuple<std::string, std::vector<int64_t>, int64_t>> out;
            for (const ArenaEntry& e : t.arena().entries)
              out.emplace_back(e.name, shape_of(e), e.offset);
            return py::make_tuple(out, t.arena().total);
          },
          "([(state_dict name, shape, offset in elements)], the arena's total elements): where "
          "each parameter lives in the arenas (addresses())")
      .def(
          "addresses",
          [](const TrainStep& t) {
            auto a = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
            py::dict d;
            d["params"] = a(t.params());
            d["grads"] = a(t.grads());
            d["masters"] = a(t.masters());
            d["exp_avg"] = a(t.exp_avg());
            d["exp_avg_sq"] = a(t.exp_avg_sq());
            return d;
          },
          "device addresses of the arenas: params and grads (model dtype), masters (fp32; 0 for an "
          "fp32 model), exp_avg and exp_avg_sq (fp32), all at layout()'s offsets")
      .def(
          "last_outputs",
          [](const TrainStep& t) {
            const TrainStep::Outputs o = t.last_outputs();
            py::dict d;
            d["loss"] = reinterpret_cast<uintptr_t>(o.loss);
            d["nll"] = reinterpret_cast<uintptr_t>(o.nll);
            d["rows"] = o.rows;
            d["tokens"] = reinterpret_cast<uintptr_t>(o.tokens);
            return d;
          },
          "device addresses of the last run's per-row loss and NLL (fp32 [rows]) and its target "
          "count (one fp32), valid until the next run of that shape")
      .def("init_parameters", &TrainStep::init_parameters, py::arg("seed"))
      .def(
          "set_parameter",
          [](TrainStep& t, const std::string& name, uintptr_t host, size_t bytes) {
            t.set_parameter(name, reinterpret_cast<const void*>(host), bytes);
          },
          py::arg("name"), py::arg("host_ptr"), py::arg("nbytes"))
      .def(
          "get_parameter",
          [](const TrainStep& t, const std::string& name, uintptr_t host, size_t bytes) {
            t.get_parameter(name, reinterpret_cast<void*>(host), bytes);
          },
          py::arg("name"), py::arg("host_ptr"), py::arg("nbytes"))
      .def(
          "get_gradient",
          [](const TrainStep& t, const std::string& name, uintptr_t host, size_t bytes) {
            t.get_gradient(name, reinterpret_cast<void*>(host), bytes);
          },
          py::arg("name"), py::arg("host_ptr"), py::arg("nbytes"))
      .def(
          "set_lr", [=](TrainStep& t, float lr, uintptr_t s) { t.set_lr(lr, stream_of(s)); },
          py::arg("lr"), py::arg("stream"))
      .def(
          "run",
          [=](TrainStep& t, uintptr_t src, uintptr_t tokens, uintptr_t targets, int64_t batch,
              int64_t src_len, int64_t len, uintptr_t s, uintptr_t token_types) {
            t.run(batch_of(src, tokens, targets, batch, src_len, len, token_types), stream_of(s));
          },
          py::arg("src"), py::arg("tokens"), py::arg("targets"), py::arg("batch"),
          py::arg("src_len"), py::arg("len"), py::arg("stream"), py::arg("token_types") = 0)
      .def(
          "evaluate",
          [=](TrainStep& t, uintptr_t src, uintptr_t tokens, uintptr_t targets, int64_t batch,
              int64_t src_len, int64_t len, uintptr_t s, uintptr_t token_types) {
            return stats_dict(t.evaluate(
                batch_of(src, tokens, targets, batch, src_len, len, token_types), stream_of(s)));
          },
          py::arg("src"), py::arg("tokens"), py::arg("targets"), py::arg("batch"),
          py::arg("src_len"), py::arg("len"), py::arg("stream"), py::arg("token_types") = 0)
      .def(
          "stats",
          [=](const TrainStep& t, uintptr_t s) { return stats_dict(t.stats(stream_of(s))); },
          py::arg("stream"))
      .def(
          "save",
          [=](const TrainStep& t, const std::string& f, uintptr_t s) { t.save(f, stream_of(s)); },
          py::arg("path"), py::arg("stream"))
      .def(
          "load", [=](TrainStep& t, const std::string& f, uintptr_t s) { t.load(f, stream_of(s)); },
          py::arg("path"), py::arg("stream"))
      .def_property_readonly("steps_run", &TrainStep::steps_run)
      .def_property_readonly("graphs_captured", &TrainStep::graphs_captured)
      .def_property_readonly("graph_replays", &TrainStep::graph_replays);
  m.def(
      "pool_peak_bytes", &pool_peak_bytes, py::arg("device"), py::arg("reset"),
      "the high-water mark of lightseq's CUDA memory pool on `device` (bytes); reset restarts it");
  m.def("graph_peak_bytes", &graph_peak_bytes, py::arg("device"), py::arg("reset"),
        "the high-water mark of the memory captured CUDA graphs allocate on `device` (bytes)");
  m.def(
      "layer_names",
      [](const CompiledModel& c) {
        std::vector<std::string> out;
        for (const LayerPlan& l : c.plan().layers) out.push_back(l.layer.name);
        return out;
      },
      "the names of a compiled model's layers, in the order of its plan");
}
