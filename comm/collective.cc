#include "comm/collective.h"

#include "runtime/base/check.h"

namespace terra::comm {

namespace {

// What every options struct carries.
template <typename Options>
Collective Base(CollectiveKind kind, const Options& options) {
  Collective c;
  c.kind = kind;
  c.timeout = options.timeout;
  c.stream = options.stream;
  return c;
}

}  // namespace

Collective Collective::Of(Buffer buffer, const AllreduceOptions& options) {
  Collective c = Base(CollectiveKind::kAllreduce, options);
  c.input = buffer;
  c.op = options.op;
  return c;
}

Collective Collective::Of(Buffer buffer, const BroadcastOptions& options) {
  Collective c = Base(CollectiveKind::kBroadcast, options);
  c.input = buffer;
  c.root = options.root;
  return c;
}

Collective Collective::Of(Buffer input, Buffer output, const AllgatherOptions& options) {
  Collective c = Base(CollectiveKind::kAllgather, options);
  c.input = input;
  c.output = output;
  return c;
}

Collective Collective::Of(Buffer input, Buffer output, const ReduceScatterOptions& options) {
  Collective c = Base(CollectiveKind::kReduceScatter, options);
  c.input = input;
  c.output = output;
  c.op = options.op;
  return c;
}

Collective Collective::Of(const BarrierOptions& options) {
  return Base(CollectiveKind::kBarrier, options);
}

const char* CollectiveKindName(CollectiveKind kind) {
  switch (kind) {
    case CollectiveKind::kAllreduce:
      return "allreduce";
    case CollectiveKind::kBroadcast:
      return "broadcast";
    case CollectiveKind::kAllgather:
      return "allgather";
    case CollectiveKind::kReduceScatter:
      return "reduce_scatter";
    case CollectiveKind::kBarrier:
      return "barrier";
  }
  return "unknown";
}

std::string Describe(const Collective& c, int rank, int world_size, const char* backend) {
  std::string what = CollectiveKindName(c.kind);
  if (c.reduces()) what += StrCat("(", ReduceOpName(c.op), ")");
  if (c.kind == CollectiveKind::kBroadcast) what += StrCat("(root ", c.root, ")");
  if (c.kind != CollectiveKind::kBarrier) {
    what += StrCat(" of ", c.input.count, " x ", DataTypeName(c.input.dtype));
  }
  return StrCat(what, " on rank ", rank, " of ", world_size, " [", backend, "]");
}

namespace {

void ValidateBuffer(const Buffer& b, const char* role, const Collective& c, DeviceType device_type,
                    const char* backend) {
  const char* kind = CollectiveKindName(c.kind);
  TERRA_CHECK(b.device.type == device_type, kind, ": the ", role, " is on ", DeviceName(b.device),
              ", but the ", backend, " communicator takes ",
              device_type == DeviceType::kCpu ? "CPU" : "CUDA", " buffers only");
  TERRA_CHECK(b.count == 0 || b.data != nullptr, kind, ": the ", role, " has ", b.count,
              " elements but no data pointer");
}

}  // namespace

void Validate(const Collective& c, int world_size, DeviceType device_type, const char* backend) {
  const char* kind = CollectiveKindName(c.kind);
  size_t n = static_cast<size_t>(world_size);
  switch (c.kind) {
    case CollectiveKind::kBarrier:
      return;
    case CollectiveKind::kAllreduce:
      ValidateBuffer(c.input, "buffer", c, device_type, backend);
      return;
    case CollectiveKind::kBroadcast:
      ValidateBuffer(c.input, "buffer", c, device_type, backend);
      TERRA_CHECK(c.root >= 0 && c.root < world_size, kind, ": root ", c.root,
                  " is not a rank of this communicator (0 to ", world_size - 1, ")");
      return;
    case CollectiveKind::kAllgather:
    case CollectiveKind::kReduceScatter:
      break;
  }
  ValidateBuffer(c.input, "input", c, device_type, backend);
  ValidateBuffer(c.output, "output", c, device_type, backend);
  TERRA_CHECK(c.input.dtype == c.output.dtype, kind, ": input is ", DataTypeName(c.input.dtype),
              " but output is ", DataTypeName(c.output.dtype), "; they must match");
  if (c.kind == CollectiveKind::kAllgather) {
    TERRA_CHECK(c.output.count == c.input.count * n, kind, ": the output must hold world size (", n,
                ") x input count (", c.input.count, ") = ", c.input.count * n,
                " elements, but holds ", c.output.count);
  } else {
    TERRA_CHECK(c.input.count == c.output.count * n, kind, ": the input must hold world size (", n,
                ") x output count (", c.output.count, ") = ", c.output.count * n,
                " elements, but holds ", c.input.count);
  }
}

std::string Mismatch(const Collective& a, int rank_a, const Collective& b, int rank_b) {
  auto differ = [&](const char* what, auto va, auto vb) {
    return StrCat(what, " ", va, " on rank ", rank_a, " but ", vb, " on rank ", rank_b);
  };
  if (a.kind != b.kind)
    return differ("collective", CollectiveKindName(a.kind), CollectiveKindName(b.kind));
  if (a.kind == CollectiveKind::kBarrier) return "";
  if (a.input.count != b.input.count) return differ("count", a.input.count, b.input.count);
  if (a.input.dtype != b.input.dtype) {
    return differ("dtype", DataTypeName(a.input.dtype), DataTypeName(b.input.dtype));
  }
  if (a.reduces() && a.op != b.op) return differ("op", ReduceOpName(a.op), ReduceOpName(b.op));
  if (a.kind == CollectiveKind::kBroadcast && a.root != b.root)
    return differ("root", a.root, b.root);
  return "";
}

}  // namespace terra::comm
