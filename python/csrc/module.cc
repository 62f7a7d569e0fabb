#include <pybind11/pybind11.h>

#include "python/csrc/bindings.h"
#include "runtime/base/check.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "Terra's C++ runtime (internal; use the terra package)";
  // terra.TerraError (a RuntimeError) for the user's mistakes; terra.TerraTimeoutError
  // (a builtin TimeoutError) for deadlines. pybind11 tries the later registration first.
  py::register_exception<terra::Error>(m, "TerraError", PyExc_RuntimeError);
  py::register_exception<terra::TimeoutError>(m, "TerraTimeoutError", PyExc_TimeoutError);
  terra::python::BindControl(m);
  terra::python::BindCollectives(m);
  terra::python::BindInterception(m);
  terra::python::BindTracing(m);
}
