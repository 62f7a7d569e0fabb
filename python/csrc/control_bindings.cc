// Bindings of the control plane client. Every blocking call releases the GIL.
#include <pybind11/chrono.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "comm/control/client.h"
#include "python/csrc/bindings.h"

namespace py = pybind11;

namespace terra::python {

using comm::control::ClientOptions;
using comm::control::ControlClient;
using comm::control::Heartbeat;
using Millis = std::chrono::milliseconds;

namespace {

ClientOptions MakeOptions(const std::string& host, int port, const std::string& secret,
                          int64_t rank, double connect_timeout_s) {
  ClientOptions options;
  options.host = host;
  options.port = static_cast<uint16_t>(port);
  options.secret = secret;
  options.rank = rank;
  options.connect_timeout = Millis(static_cast<int64_t>(connect_timeout_s * 1000));
  return options;
}

Millis ToMillis(double seconds) { return Millis(static_cast<int64_t>(seconds * 1000)); }

}  // namespace

void BindControl(py::module_& m) {
  py::class_<ControlClient>(m, "ControlClient")
      .def(py::init([](const std::string& host, int port, const std::string& secret, int64_t rank,
                       double connect_timeout_s) {
             return std::make_unique<ControlClient>(
                 MakeOptions(host, port, secret, rank, connect_timeout_s));
           }),
           py::arg("host"), py::arg("port"), py::arg("secret"), py::arg("rank"),
           py::arg("connect_timeout"), py::call_guard<py::gil_scoped_release>())
      .def("set",
           [](ControlClient& c, const std::string& key, const py::bytes& value) {
             std::string v = value;
             py::gil_scoped_release release;
             c.Set(key, v);
           })
      .def("get",
           [](ControlClient& c, const std::string& key, double timeout_s) {
             std::string value;
             {
               py::gil_scoped_release release;
               value = c.Get(key, ToMillis(timeout_s));
             }
             return py::bytes(value);
           })
      .def("add",
           [](ControlClient& c, const std::string& key, int64_t delta) { return c.Add(key, delta); },
           py::call_guard<py::gil_scoped_release>())
      .def("wait",
           [](ControlClient& c, const std::vector<std::string>& keys, double timeout_s) {
             c.Wait(keys, ToMillis(timeout_s));
           },
           py::call_guard<py::gil_scoped_release>())
      .def("check", &ControlClient::Check, py::call_guard<py::gil_scoped_release>())
      .def("barrier",
           [](ControlClient& c, const std::string& name, int64_t world_size, double timeout_s) {
             c.Barrier(name, world_size, ToMillis(timeout_s));
           },
           py::call_guard<py::gil_scoped_release>());

  py::class_<Heartbeat>(m, "Heartbeat")
      .def(py::init([](const std::string& host, int port, const std::string& secret, int64_t rank,
                       double interval_s) {
             return std::make_unique<Heartbeat>(MakeOptions(host, port, secret, rank, 60.0),
                                                ToMillis(interval_s));
           }),
           py::arg("host"), py::arg("port"), py::arg("secret"), py::arg("rank"),
           py::arg("interval"), py::call_guard<py::gil_scoped_release>())
      .def("stop_silently", &Heartbeat::StopSilently, py::call_guard<py::gil_scoped_release>());
}

}  // namespace terra::python
