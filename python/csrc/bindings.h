// One registration function per bound part of the C++ runtime.
#pragma once

#include <pybind11/pybind11.h>

namespace terra::python {

void BindControl(pybind11::module_& m);
void BindCollectives(pybind11::module_& m);
void BindInterception(pybind11::module_& m);
void BindTracing(pybind11::module_& m);

}  // namespace terra::python
