// terra._C._Tracer: one tracing session of a Python process (the recorder,
// its Python frame source, and the interception it installs). The Python
// side (terra/_tracing.py) owns policy: when iterations end, what the mode
// does when the graph is stable, reports at exit.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <optional>
#include <memory>
#include <unordered_map>
#include <utility>
#include <string>
#include <vector>

#include "graph/dot.h"
#include "graph/serialize.h"
#include "python/csrc/bindings.h"
#include "python/csrc/collective_options.h"
#include "python/csrc/python_frames.h"
#include "runtime/base/check.h"
#include "runtime/coexecutor.h"
#include "runtime/executor.h"
#include "runtime/interception.h"
#include "runtime/recorder.h"
#include "runtime/tracing_report.h"
#include "runtime/validator.h"

namespace py = pybind11;

namespace terra::python {
namespace {

// An all-reduce queued on the co-executor (Tracer::CoexecAllReduce); the
// executor sets `work` when it launches it.
struct QueuedCollective {
  std::mutex mu;
  std::shared_ptr<runtime::TensorWork> work;
  std::shared_ptr<runtime::TensorWork> Launched() {
    std::lock_guard<std::mutex> lock(mu);
    TERRA_CHECK(work != nullptr, "a queued all_reduce was waited for before it was launched");
    return work;
  }
};

// Whether every post-accumulate-grad hook of `leaf` is a deferrable one
// (terra._tracing.deferrable_post_accumulate_grad_hook marks its
// trampolines). Python's hooks live in the tensor's
// `_post_accumulate_grad_hooks` dict, which the engine's hook object calls.
// Called by the autograd-graph walk, with the GIL held.
bool AllHooksDeferrable(const at::Tensor& leaf) {
  py::object tensor = py::reinterpret_steal<py::object>(THPVariable_Wrap(leaf));
  if (!tensor) {
    PyErr_Clear();
    return false;
  }
  py::object hooks = py::getattr(tensor, "_post_accumulate_grad_hooks", py::none());
  if (!PyDict_Check(hooks.ptr())) return false;
  PyObject* key = nullptr;
  PyObject* value = nullptr;
  Py_ssize_t pos = 0;
  while (PyDict_Next(hooks.ptr(), &pos, &key, &value)) {
    if (PyObject_HasAttrString(value, "__terra_deferrable__") != 1) return false;
  }
  return true;
}

// A wait of the program's thread, with the GIL released if the thread holds
// it: the executor thread may need the GIL to drop a tensor's last reference.
void WaitWithoutGil(const std::function<void()>& wait) {
  if (Py_IsInitialized() && PyGILState_Check()) {
    py::gil_scoped_release no_gil;
    wait();
  } else {
    wait();
  }
}

// Threading: start/stop act on the calling thread (interception is per
// thread); the recorder also observes autograd's device threads through the
// fallback observer while started. The Python side keeps the tracer alive
// until the process exits, so no thread is left holding a dangling observer.
class Tracer {
 public:
  Tracer(std::vector<std::string> library_prefixes, std::string cwd, uint32_t max_ops)
      : frames_(std::move(library_prefixes), std::move(cwd)),
        locator_(&frames_),
        recorder_(&frames_, max_ops, &locator_) {}

  ~Tracer() { Stop(); }

  void Start() {
    runtime::EnableInterception(&recorder_);
    runtime::SetFallbackObserver(&recorder_);
  }

  void Stop() {
    runtime::SetFallbackObserver(nullptr);
    runtime::DisableInterception();
  }

  // In a child this process forked: the executor's thread stayed in the
  // parent, so the co-executor is abandoned, never destroyed (its destructor
  // would wait for that thread), and nothing is intercepted any more. The
  // parent drained before forking where it could (terra._tracing), so the
  // child's futures are real.
  void ForgetAfterFork() {
    runtime::SetFallbackObserver(nullptr);
    runtime::DisableInterception();
    (void)coexec_.release();
  }

  runtime::Describer Describer() {
    return [this](const std::vector<graph::Frame>& f) { return frames_.Describe(f); };
  }

  std::string Report(const std::string& mode, uint64_t stable_after, int rank) {
    runtime::ReportInput in;
    const graph::TraceGraph graph = recorder_.Graph();
    in.graph = &graph;
    in.stats = recorder_.Stats();
    in.syncs = recorder_.Syncs();
    in.mode = mode;
    in.stable_after = stable_after;
    in.rank = rank;
    return runtime::TracingReport(in, Describer());
  }

  std::string Dot() {
    const graph::TraceGraph graph = recorder_.Graph();
    runtime::LocationNamer namer(graph, Describer());
    return graph::ToDot(graph, [&](const graph::Location& loc) { return namer.Where(loc); });
  }

  py::dict Stats() {
    const graph::TraceGraph graph = recorder_.Graph();
    const runtime::RecorderStats st = recorder_.Stats();
    const runtime::GraphSummary s = runtime::Summarize(graph);
    py::dict d;
    d["iterations"] = st.iterations;
    d["ops"] = st.ops;
    d["syncs"] = st.syncs;
    d["ops_per_iteration"] = st.ops_per_iteration;
    d["ops_in_current"] = st.ops_in_current;
    d["prologue_ops"] = st.prologue_ops;
    d["overflows"] = st.overflows;
    d["nodes"] = s.nodes;
    d["edges"] = s.edges;
    d["branch_points"] = s.branch_points;
    d["segments"] = s.segments;
    d["longest_segment"] = s.longest_segment;
    d["sync_nodes"] = s.sync_nodes;
    d["outputs_vary"] = s.outputs_vary;
    d["max_variants"] = s.max_variants;
    d["max_new_variants"] = st.max_new_variants;
    d["locations_over_bound"] = st.locations_over_bound;
    d["stable_for"] = graph.StableFor();
    py::list syncs;
    runtime::LocationNamer namer(graph, Describer());
    for (const runtime::SyncSummary& sync : recorder_.Syncs()) {
      py::dict e;
      e["where"] = namer.Where(sync.location);
      e["op"] = sync.op;
      e["count"] = sync.count;
      syncs.append(e);
    }
    d["sync_points"] = syncs;
    py::list branches;
    for (graph::NodeIndex b : graph.BranchPoints()) {
      py::dict e;
      e["where"] = b == graph::kEntry ? std::string("start of iteration") : namer.Node(b);
      e["ways"] = graph.Successors(b).size();
      branches.append(e);
    }
    d["branch_points_at"] = branches;
    return d;
  }

  runtime::Recorder& recorder() { return recorder_; }

  // The validation path alone, against the graph recorded so far: replaces
  // recording on this thread until ValidateStop.
  void ValidateStart() {
    runtime::DisableInterception();
    validated_graph_ = std::make_unique<graph::TraceGraph>(recorder_.Graph());
    validator_ = std::make_unique<runtime::Validator>(validated_graph_.get(), &frames_);
    runtime::EnableInterception(validator_.get());
  }

  void ValidateIteration() {
    if (validator_) validator_->StartIteration();
  }

  // Co-execution against the graph recorded so far, on this thread, instead
  // of recording.
  void CoexecStart(bool synchronous) {
    runtime::SetFallbackObserver(nullptr);
    runtime::DisableInterception();
    // On a graph that has not changed since the last co-execution (auto
    // mode's probe resumes it after eager blocks), the same copy serves, and
    // with it the backward segments learned on it.
    const uint64_t generation = recorder_.Generation();
    if (!coexec_graph_ || generation != coexec_graph_generation_ || synchronous != synchronous_) {
      coexec_graph_ = std::make_unique<graph::TraceGraph>(recorder_.Graph());
      coexec_graph_generation_ = generation;
      backward_memory_.reset();
    }
    coexec_ = std::make_unique<runtime::CoExecutor>(coexec_graph_.get(), &locator_, &recorder_,
                                                    synchronous, &WaitWithoutGil, backward_memory_);
    backward_memory_ = coexec_->backward_memory();
    synchronous_ = synchronous;
    runtime::EnableInterception(coexec_.get());
  }

  // "followed" or "learned" (the iteration took a new path, now merged;
  // co-execution restarts on the grown graph).
  std::string CoexecIteration() {
    if (!coexec_) return "followed";
    if (coexec_->EndIteration() == runtime::CoExecutor::Boundary::kFollowed) return "followed";
    CoexecStop();
    CoexecStart(synchronous_);
    return "learned";
  }

  void CoexecFetch(const std::string& what) {
    if (coexec_) coexec_->Fetch(what.c_str());
  }
  void CoexecFetchValue(const at::Tensor& tensor, const std::string& what) {
    if (coexec_) coexec_->FetchValue(tensor, what.c_str());
  }

  // Drains and stops; no Python objects (runs without the GIL).
  void CoexecStop() {
    runtime::DisableInterception();
    if (coexec_) {
      coexec_->executor().Drain();
      total_ += coexec_->stats();
      MergeWaits(coexec_->wait_points());
      MergeFallbacks(*coexec_, &fallbacks_);
    }
    coexec_.reset();
  }

  py::dict CoexecStats() {
    py::dict d;
    runtime::CoExecutionStats st = total_;
    if (coexec_) st += coexec_->stats();
    d["submitted"] = st.submitted;
    d["eager"] = st.eager;
    d["fetches"] = st.fetches;
    d["divergences"] = st.divergences;
    // Where the program left the TraceGraph, in first-seen order, each with
    // what the graph expected there.
    std::vector<FallbackRow> fallbacks = fallbacks_;
    if (coexec_) MergeFallbacks(*coexec_, &fallbacks);
    py::list fallback_list;
    for (const FallbackRow& f : fallbacks) {
      py::dict row;
      row["where"] = f.where;
      row["what"] = f.what;
      row["expected"] = f.expected;
      row["count"] = f.count;
      fallback_list.append(std::move(row));
    }
    d["fallback_points"] = fallback_list;
    d["first_divergence"] = fallbacks.empty() ? std::string()
                                              : fallbacks.front().what + " at " + fallbacks.front().where +
                                                    "; the TraceGraph expected " + fallbacks.front().expected;
    d["executor_busy_s"] = st.executor_busy_s;
    d["fetch_wait_s"] = st.fetch_wait_s;
    d["fed_by_value"] = st.fed_by_value;
    d["backward_replayed"] = st.backward_replayed;
    d["backward_ops_replayed"] = st.backward_ops_replayed;
    d["backward_learned"] = st.backward_learned;
    d["backward_not_replayed"] = st.backward_not_replayed;
    d["tasks_queued"] = st.tasks_queued;
    // Where Python waited, longest total wait first.
    std::vector<runtime::WaitPoint> points = waits_;
    if (coexec_) points.insert(points.end(), coexec_->wait_points().begin(), coexec_->wait_points().end());
    std::map<std::pair<std::string, std::string>, std::pair<uint64_t, double>> by_line;
    for (const runtime::WaitPoint& p : points) {
      auto& [count, wait_s] = by_line[{frames_.Describe(p.frames), p.what}];
      count += p.count;
      wait_s += p.wait_s;
    }
    std::vector<std::pair<double, py::dict>> rows;
    for (const auto& [key, value] : by_line) {
      py::dict row;
      row["where"] = key.first;
      row["what"] = key.second;
      row["count"] = value.first;
      row["wait_s"] = value.second;
      rows.emplace_back(value.second, std::move(row));
    }
    std::stable_sort(rows.begin(), rows.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    py::list list;
    for (auto& row : rows) list.append(std::move(row.second));
    d["fetch_points"] = list;
    return d;
  }

  bool CoexecActive() const { return coexec_ != nullptr; }
  std::string CoexecBackwardBegin(const at::Tensor& root, uint64_t hook_state) {
    if (!coexec_) return "not_taken";
    switch (coexec_->BackwardBegin(root, hook_state)) {
      case runtime::CoExecutor::BackwardStart::kReplayed:
        return "replayed";
      case runtime::CoExecutor::BackwardStart::kLearning:
        return "learning";
      case runtime::CoExecutor::BackwardStart::kNotTaken:
        break;
    }
    return "not_taken";
  }
  void CoexecBackwardEnd(bool completed) {
    if (coexec_) coexec_->BackwardEnd(completed);
  }
  // An asynchronous all-reduce under co-execution: launched by the executor
  // when it reaches it, in program order, so the program's thread need not
  // drain; null where it cannot be queued (the caller drains and launches).
  std::shared_ptr<QueuedCollective> CoexecAllReduce(runtime::ProcessGroup& group, const at::Tensor& tensor,
                                                    int op, std::optional<double> timeout_s) {
    if (!coexec_ || tensor.device().type() != c10::DeviceType::CPU) return nullptr;
    auto handle = std::make_shared<QueuedCollective>();
    const runtime::CollectiveOptions options = ToOptions(timeout_s);
    const comm::ReduceOp reduce = ToOp(op);
    runtime::ProcessGroup* g = &group;
    auto launch = [handle, g, tensor, reduce, options] {
      std::shared_ptr<runtime::TensorWork> work = g->AllReduce(tensor, reduce, options);
      std::lock_guard<std::mutex> lock(handle->mu);
      handle->work = std::move(work);
    };
    if (!coexec_->QueueTask(std::move(launch), {tensor}, "all_reduce (queued on the executor)")) return nullptr;
    return handle;
  }
  // Its wait, queued likewise: the ops issued after it run after the
  // reduction. False where it cannot be queued (the caller waits).
  bool CoexecWait(const std::shared_ptr<QueuedCollective>& handle, const at::Tensor& tensor) {
    if (!coexec_) return false;
    auto wait = [handle] { handle->Launched()->Wait(); };
    return coexec_->QueueTask(std::move(wait), {tensor}, "all_reduce's wait (queued on the executor)");
  }

  void CoexecHookBegin(const at::Tensor& leaf) {
    if (coexec_) coexec_->HookBegin(leaf);
  }
  void CoexecHookEnd() {
    if (coexec_) coexec_->HookEnd();
  }

  // Whether every value the TraceGraph recorded lives on the CPU (the only
  // device the executor runs today).
  bool GraphOnCpu() {
    const auto& graph = recorder_.Graph();  // may be a copy: keep it alive
    for (const graph::GraphNode& node : graph.nodes()) {
      for (const graph::TensorMeta& m : node.outputs) {
        if (static_cast<c10::DeviceType>(m.device_type) != c10::DeviceType::CPU) return false;
      }
    }
    return true;
  }

  // Interception off / back on for this thread, with whichever observer is
  // current (for reads that must run eagerly: printing, numpy()).
  void Pause() { runtime::DisableInterception(); }
  void Resume() {
    if (coexec_) {
      runtime::EnableInterception(coexec_.get());
    } else {
      runtime::EnableInterception(&recorder_);
    }
  }

  py::dict ValidateStop() {
    runtime::DisableInterception();
    py::dict d;
    if (validator_) {
      d["matched"] = validator_->stats().matched;
      d["diverged"] = validator_->stats().diverged;
      d["ignored"] = validator_->stats().ignored;
    }
    validator_.reset();
    validated_graph_.reset();
    return d;
  }

 private:
  PythonFrames frames_;
  runtime::OpLocator locator_;  // shared by the recorder and the co-executor
  runtime::Recorder recorder_;
  bool synchronous_ = false;
  std::unique_ptr<graph::TraceGraph> validated_graph_;
  std::unique_ptr<runtime::Validator> validator_;
  std::unique_ptr<graph::TraceGraph> coexec_graph_;  // kept after a stop, for a resume
  uint64_t coexec_graph_generation_ = 0;                // the recorder's when copied
  std::shared_ptr<runtime::CoExecutor::BackwardMemory> backward_memory_;
  std::unique_ptr<runtime::CoExecutor> coexec_;
  // Adds a finished run's waits, one entry per (frames, what).
  void MergeWaits(const std::vector<runtime::WaitPoint>& points) {
    for (const runtime::WaitPoint& p : points) {
      std::string key = p.what;
      for (const graph::Frame& f : p.frames) key += ":" + std::to_string(f.code_id) + "/" + std::to_string(f.offset);
      auto [it, added] = wait_index_.try_emplace(std::move(key), waits_.size());
      if (added) {
        waits_.push_back(p);
      } else {
        waits_[it->second].count += p.count;
        waits_[it->second].wait_s += p.wait_s;
      }
    }
  }

  // A fallback point, named: locations through the describer, and what the
  // graph expected there as its successors of the node left after.
  struct FallbackRow {
    std::string where;
    std::string what;
    std::string expected;
    uint64_t count = 0;
  };
  // Adds `coexec`'s fallbacks (named on the graph it co-executes, which is
  // coexec_graph_) to `rows`, one row per (where, what, expected).
  void MergeFallbacks(const runtime::CoExecutor& coexec, std::vector<FallbackRow>* rows) {
    if (coexec.fallback_points().empty() || !coexec_graph_) return;
    runtime::LocationNamer namer(*coexec_graph_, Describer());
    constexpr size_t kListed = 3;  // successors named; the rest counted
    for (const runtime::FallbackPoint& p : coexec.fallback_points()) {
      FallbackRow row{frames_.Describe(p.frames), p.what, "", p.count};
      const std::vector<graph::Edge>& next = coexec_graph_->Successors(p.after);
      for (size_t i = 0; i < next.size() && i < kListed; ++i) {
        row.expected += (i ? " or " : "") + namer.Node(next[i].to);
      }
      if (next.size() > kListed) row.expected += " or " + std::to_string(next.size() - kListed) + " more";
      if (next.empty()) row.expected = "nothing (a node without successors)";
      auto same = [&](const FallbackRow& r) {
        return r.where == row.where && r.what == row.what && r.expected == row.expected;
      };
      auto it = std::find_if(rows->begin(), rows->end(), same);
      if (it == rows->end()) {
        rows->push_back(std::move(row));
      } else {
        it->count += row.count;
      }
    }
  }

  runtime::CoExecutionStats total_;
  std::vector<FallbackRow> fallbacks_;  // of finished co-execution runs
  std::vector<runtime::WaitPoint> waits_;  // of finished co-execution runs
  std::unordered_map<std::string, size_t> wait_index_;
};

}  // namespace

void BindTracing(py::module_& m) {
  runtime::SetDeferrableHookCheck(&AllHooksDeferrable);
  m.def("_expose_memory", &runtime::ExposeMemory, py::arg("tensor"),
        "Notes that a numpy array holds tensor's memory; returns the key for _end_exposure.");
  m.def("_end_exposure", &runtime::EndExposure, py::arg("key"), "The array of _expose_memory's key died.");
  m.def("_await_on_any_thread", &runtime::AwaitOnAnyThread, py::arg("tensor"),
        py::call_guard<py::gil_scoped_release>(),
        "A read of tensor on a thread other than the co-executing one: waits for its value.");
  py::class_<QueuedCollective, std::shared_ptr<QueuedCollective>>(m, "_QueuedCollective")
      .def("wait_now",
           [](QueuedCollective& q, std::optional<double> timeout_s) {
             q.Launched()->Wait(timeout_s ? std::chrono::milliseconds(static_cast<int64_t>(*timeout_s * 1000))
                                          : comm::Work::kWaitForever);
           },
           py::arg("timeout") = py::none(), py::call_guard<py::gil_scoped_release>(),
           "Waits here (the executor has launched it: drain first).")
      .def("is_completed",
           [](QueuedCollective& q) {
             std::lock_guard<std::mutex> lock(q.mu);
             return q.work != nullptr && q.work->IsCompleted();
           })
      .def_property_readonly("description", [](QueuedCollective& q) {
        std::lock_guard<std::mutex> lock(q.mu);
        return q.work != nullptr ? q.work->description() : std::string("all_reduce, queued on the executor");
      });
  py::class_<Tracer>(m, "_Tracer")
      .def(py::init<std::vector<std::string>, std::string, uint32_t>(), py::arg("library_prefixes"),
           py::arg("cwd"), py::arg("max_ops_per_iteration") = runtime::Recorder::kDefaultMaxOpsPerIteration)
      .def("start", &Tracer::Start, "Intercept and record this thread's ops (and autograd's).")
      .def("stop", &Tracer::Stop, "Stop intercepting on this thread.")
      .def("forget_after_fork", &Tracer::ForgetAfterFork,
           "In a forked child: stop intercepting and abandon the executor (its thread is the parent's).")
      .def(
          "end_iteration",
          [](Tracer& t, bool merge) {
            py::gil_scoped_release no_gil;  // autograd device threads may be recording
            return t.recorder().EndIteration(merge);
          },
          py::arg("merge") = true, "End the iteration; returns whether the TraceGraph changed.")
      .def(
          "sync", [](Tracer& t, const at::Tensor& tensor, const std::string& kind) {
            t.recorder().OnSync(tensor, kind);
          },
          py::arg("tensor"), py::arg("kind"), "Record a direct read of tensor's value.")
      .def(
          "is_stable",
          [](Tracer& t, uint64_t k) { return t.recorder().IsStable(k); }, py::arg("k"))
      .def("stats", &Tracer::Stats)
      .def(
          "traced_iterations", [](Tracer& t) { return t.recorder().Stats().iterations; },
          "Iterations merged so far.")
      .def(
          "new_shape_variants", [](Tracer& t) { return t.recorder().Stats().max_new_variants; },
          "The most nodes that iterations after the first added at one operator and location "
          "(new shapes of one op).")
      .def("report", &Tracer::Report, py::arg("mode"), py::arg("stable_after"), py::arg("rank"))
      .def("dot", &Tracer::Dot)
      .def("validate_start", &Tracer::ValidateStart,
           "Validate this thread's ops against the TraceGraph instead of recording them.")
      .def("validate_iteration", &Tracer::ValidateIteration, "A new iteration starts.")
      .def("validate_stop", &Tracer::ValidateStop, "Stop validating; returns matched/diverged counts.")
      .def(
          "coexec_start", &Tracer::CoexecStart, py::arg("synchronous") = false,
          "Co-execute this thread's ops against the TraceGraph instead of recording them.")
      .def(
          "coexec_iteration",
          [](Tracer& t) {
            py::gil_scoped_release no_gil;
            return t.CoexecIteration();
          },
          "An iteration boundary; False when the iteration left the TraceGraph.")
      .def(
          "coexec_fetch", [](Tracer& t, const std::string& what) { t.CoexecFetch(what); },
          py::arg("what") = "a direct read",
          "Wait until every op issued so far has run (Python reads a value; `what` names the "
          "read). The wait itself releases the GIL.")
      .def(
          "coexec_fetch_value",
          [](Tracer& t, const at::Tensor& tensor, const std::string& what) {
            t.CoexecFetchValue(tensor, what);
          },
          py::arg("tensor"), py::arg("what"),
          "Wait until the ops issued so far that write tensor's memory have run (Python only "
          "reads it; `what` names the read). The wait itself releases the GIL.")
      .def(
          "coexec_stop",
          [](Tracer& t) {
            {
              py::gil_scoped_release no_gil;
              t.CoexecStop();
            }
            return t.CoexecStats();
          },
          "Drain and stop co-executing; returns the co-execution figures.")
      .def("coexec_stats", &Tracer::CoexecStats)
      .def("coexec_backward_begin", &Tracer::CoexecBackwardBegin, py::arg("root"), py::arg("hook_state") = 0,
           "root.backward() under co-execution: 'replayed' (a learned segment ran in its place), "
           "'learning' (run it, then coexec_backward_end) or 'not_taken' (run it as usual). "
           "hook_state: a word from the owners of deferrable hooks, part of the segment's key.")
      .def("coexec_backward_end", &Tracer::CoexecBackwardEnd, py::arg("completed"))
      .def("coexec_all_reduce", &Tracer::CoexecAllReduce, py::arg("group"), py::arg("tensor"), py::arg("op"),
           py::arg("timeout") = py::none(),
           "An asynchronous all-reduce of a CPU tensor in ordinary memory, launched by the executor in "
           "program order; None where it cannot be queued.")
      .def("coexec_wait", &Tracer::CoexecWait, py::arg("handle"), py::arg("tensor"),
           "Queues the wait of a queued all-reduce; False where it cannot be (wait directly).")
      .def("coexec_hook_begin", &Tracer::CoexecHookBegin, py::arg("leaf"),
           "A deferrable post-accumulate-grad hook of leaf starts (terra._tracing's trampoline).")
      .def("coexec_hook_end", &Tracer::CoexecHookEnd)
      .def("pause", &Tracer::Pause)
      .def("resume", &Tracer::Resume)
      .def("coexec_active", &Tracer::CoexecActive)
      .def("graph_on_cpu", &Tracer::GraphOnCpu)
      .def("serialize", [](Tracer& t) { return py::bytes(graph::Serialize(t.recorder().Graph())); });
}

}  // namespace terra::python
