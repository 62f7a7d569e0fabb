// Bindings of interception for tests and measurements: a per-thread recorder
// of op names. Not a public API; terra.enable() will build on the recorder.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "python/csrc/bindings.h"
#include "runtime/interception.h"
#include "runtime/op_name_recorder.h"

namespace py = pybind11;

namespace terra::python {
namespace {

using runtime::OpNameRecorder;

// The recording of the calling thread; it outlives its interception.
thread_local std::unique_ptr<OpNameRecorder> tls_recorder;

}  // namespace

void BindInterception(py::module_& m) {
  m.def(
      "_intercept_start",
      [](bool keep_names) {
        if (runtime::InterceptionEnabled() && tls_recorder != nullptr) return;  // idempotent
        tls_recorder = std::make_unique<OpNameRecorder>(keep_names);
        runtime::EnableInterception(tls_recorder.get());
      },
      py::arg("keep_names") = true,
      "Intercept this thread's ATen ops, counting them and (keep_names) keeping their names. "
      "Does nothing if already started.");
  m.def(
      "_intercept_stop",
      []() {
        runtime::DisableInterception();
        std::vector<std::string> names;
        if (tls_recorder != nullptr) names = tls_recorder->Names();
        tls_recorder.reset();
        return names;
      },
      "Stop intercepting on this thread; return the names of the ops seen since start, in order "
      "(empty if not started or keep_names was false).");
  m.def(
      "_intercept_count", []() -> size_t { return tls_recorder ? tls_recorder->count() : 0; },
      "Ops seen on this thread since _intercept_start (0 when not started).");
  m.def("_intercept_enabled", &runtime::InterceptionEnabled);
  m.def(
      "_intercept_registration",
      []() {
        runtime::InterceptionRegistration info = runtime::RegistrationInfo();
        py::dict d;
        d["direct_kernels"] = info.direct_kernels;
        d["operators_seen"] = info.operators_seen;
        d["seconds"] = info.seconds;
        d["unobserved_ops"] = runtime::UnobservedOpCount();
        return d;
      },
      "What the one-time dispatcher registration did (zeros before the first start).");
}

}  // namespace terra::python
