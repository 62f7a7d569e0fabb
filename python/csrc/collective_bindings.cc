// Bindings of the tensor collectives (runtime/process_group.h). The one
// translation unit of the module that sees Torch's Python headers (for the
// tensor caster). Every call that can block releases the GIL.
#include <torch/csrc/utils/pybind.h>

#include <chrono>
#include <optional>

#include "comm/control/client.h"
#include "python/csrc/bindings.h"
#include "python/csrc/collective_options.h"
#include "runtime/base/check.h"
#include "runtime/process_group.h"

namespace py = pybind11;

namespace terra::python {

using runtime::CollectiveOptions;
using runtime::ProcessGroup;
using runtime::TensorWork;

CollectiveOptions ToOptions(std::optional<double> seconds, uintptr_t stream) {
  CollectiveOptions options;
  if (seconds) {
    TERRA_CHECK(*seconds > 0, "timeout must be positive seconds, not ", *seconds);
    options.timeout = std::chrono::milliseconds(static_cast<int64_t>(*seconds * 1000));
  }
  options.stream = reinterpret_cast<void*>(stream);
  return options;
}

comm::ReduceOp ToOp(int op) {
  TERRA_CHECK(op >= 0 && op <= static_cast<int>(comm::ReduceOp::kMin), "unknown reduce op ", op,
              ": use terra.distributed.ReduceOp");
  return static_cast<comm::ReduceOp>(op);
}

void BindCollectives(py::module_& m) {
  py::class_<TensorWork, std::shared_ptr<TensorWork>>(m, "Work")
      .def("wait",
           [](TensorWork& work, std::optional<double> timeout_s) {
             work.Wait(timeout_s ? std::chrono::milliseconds(static_cast<int64_t>(*timeout_s * 1000))
                                 : comm::Work::kWaitForever);
             return true;
           },
           py::arg("timeout") = py::none(), py::call_guard<py::gil_scoped_release>())
      .def("is_completed", &TensorWork::IsCompleted)
      .def_property_readonly("description", &TensorWork::description);

  py::class_<ProcessGroup>(m, "ProcessGroup")
      .def(py::init<comm::control::ControlClient*, int, int>(), py::arg("client"),
           py::arg("rank"), py::arg("world_size"), py::keep_alive<1, 2>())
      .def_property_readonly("rank", &ProcessGroup::rank)
      .def_property_readonly("size", &ProcessGroup::size)
      .def("abandon", &ProcessGroup::Abandon)
      .def("backend_for",
           [](ProcessGroup& group, const at::Tensor& tensor) {
             return std::string(group.BackendFor(tensor.device()));
           })
      .def("all_reduce",
           [](ProcessGroup& group, const at::Tensor& tensor, int op, std::optional<double> t, uintptr_t stream) {
             return group.AllReduce(tensor, ToOp(op), ToOptions(t, stream));
           },
           py::arg("tensor"), py::arg("op"), py::arg("timeout") = py::none(), py::arg("stream") = 0,
           py::call_guard<py::gil_scoped_release>())
      .def("broadcast",
           [](ProcessGroup& group, const at::Tensor& tensor, int root, std::optional<double> t, uintptr_t stream) {
             return group.Broadcast(tensor, root, ToOptions(t, stream));
           },
           py::arg("tensor"), py::arg("root"), py::arg("timeout") = py::none(), py::arg("stream") = 0,
           py::call_guard<py::gil_scoped_release>())
      .def("all_gather",
           [](ProcessGroup& group, const at::Tensor& output, const at::Tensor& input,
              std::optional<double> t, uintptr_t stream) { return group.AllGather(output, input, ToOptions(t, stream)); },
           py::arg("output"), py::arg("input"), py::arg("timeout") = py::none(), py::arg("stream") = 0,
           py::call_guard<py::gil_scoped_release>())
      .def("reduce_scatter",
           [](ProcessGroup& group, const at::Tensor& output, const at::Tensor& input, int op,
              std::optional<double> t, uintptr_t stream) {
             return group.ReduceScatter(output, input, ToOp(op), ToOptions(t, stream));
           },
           py::arg("output"), py::arg("input"), py::arg("op"), py::arg("timeout") = py::none(), py::arg("stream") = 0,
           py::call_guard<py::gil_scoped_release>())
      .def("barrier",
           [](ProcessGroup& group, std::optional<double> t) { return group.Barrier(ToOptions(t)); },
           py::arg("timeout") = py::none(), py::call_guard<py::gil_scoped_release>());
}

}  // namespace terra::python
