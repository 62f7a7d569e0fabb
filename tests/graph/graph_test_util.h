// Small builders for graph tests: an op named `name` gets a fixed identity
// (one float32 CPU input of shape {4}, a frame derived from the name), so a
// trace can be written as a list of names.
#pragma once

#include <string>
#include <vector>

#include "graph/trace.h"

namespace terra::graph::testing {

inline NodeIdentity Op(const std::string& name, std::vector<int64_t> sizes = {4}) {
  NodeIdentity id;
  id.op = "aten::" + name;
  id.overload = "Tensor";
  id.inputs.push_back({/*dtype=*/6, /*device_type=*/0, /*device_index=*/-1, sizes, {1}});
  id.location.frames = {{0xC0DE, 10}, {0xF00D, static_cast<uint32_t>(name.size() * 2)}};
  return id;
}

// Appends `name`, consuming the previous node's output (or program input 0).
inline uint32_t Push(Trace& trace, const std::string& name) {
  ValueRef in = trace.size() == 0 ? ValueRef::External(ValueKind::kProgramInput, 0)
                                  : ValueRef::Output(static_cast<uint32_t>(trace.size() - 1));
  return trace.Add(Op(name), {in}, 1);
}

inline Trace MakeTrace(const std::vector<std::string>& names) {
  Trace t;
  for (const auto& n : names) Push(t, n);
  return t;
}

}  // namespace terra::graph::testing
