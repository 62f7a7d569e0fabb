#include "graph/node.h"

#include <cstdio>
#include <cstring>

#include "runtime/base/check.h"

namespace terra::graph {

ArgsEncoder& ArgsEncoder::None() {
  out_.U8(kNone);
  return *this;
}

ArgsEncoder& ArgsEncoder::Bool(bool v) {
  out_.U8(kBool);
  out_.U8(v ? 1 : 0);
  return *this;
}

ArgsEncoder& ArgsEncoder::Int(int64_t v) {
  out_.U8(kInt);
  out_.I64(v);
  return *this;
}

ArgsEncoder& ArgsEncoder::Double(double v) {
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof bits);
  out_.U8(kDouble);
  out_.U64(bits);
  return *this;
}

ArgsEncoder& ArgsEncoder::String(std::string_view v) {
  out_.U8(kString);
  out_.Bytes(v);
  return *this;
}

ArgsEncoder& ArgsEncoder::IntList(const std::vector<int64_t>& v) {
  out_.U8(kIntList);
  out_.U32(static_cast<uint32_t>(v.size()));
  for (int64_t x : v) out_.I64(x);
  return *this;
}

namespace {


std::vector<int64_t> DecodeInts(ByteReader& in, const char* what) {
  uint32_t n = in.Count(what, 8, kMaxDims);
  std::vector<int64_t> v(n);
  for (auto& x : v) x = in.I64(what);
  return v;
}

}  // namespace

ArgsEncoder& ArgsEncoder::Fed(Tag kind) {
  out_.U8(kFed);
  out_.U8(kind);
  return *this;
}

namespace {

template <typename Writer>
void EncodeIntsTo(const std::vector<int64_t>& v, Writer& out) {
  out.U32(static_cast<uint32_t>(v.size()));
  for (int64_t x : v) out.I64(x);
}

// A count, then each tensor's metadata: the layout of a node's tensor inputs
// and of its outputs.
template <typename Writer>
void EncodeMetasTo(const std::vector<TensorMeta>& metas, Writer& out) {
  TERRA_CHECK(metas.size() <= kMaxTensorInputs, "more than ", kMaxTensorInputs, " tensors");
  out.U32(static_cast<uint32_t>(metas.size()));
  for (const TensorMeta& t : metas) {
    TERRA_CHECK(t.sizes.size() <= kMaxDims && t.strides.size() <= kMaxDims,
                "a tensor has more than ", kMaxDims, " dimensions");
    out.U8(t.dtype);
    out.U8(t.device_type);
    out.U16(static_cast<uint16_t>(t.device_index));
    EncodeIntsTo(t.sizes, out);
    EncodeIntsTo(t.strides, out);
  }
}

// Field order is the format: changing it changes every hash (bump the wire
// version in serialize.cc and the golden hash in node_test.cc). Writer is a
// ByteWriter (the wire format) or a HashWriter (the structural hash of the
// same bytes, without materializing them).
template <typename Writer>
void EncodeTo(const NodeIdentity& id, Writer& out) {
  TERRA_CHECK(id.op.size() <= kMaxNameBytes && id.overload.size() <= kMaxNameBytes,
              "operator name longer than ", kMaxNameBytes, " bytes: ", id.op);
  TERRA_CHECK(id.args.size() <= kMaxArgsBytes, "non-tensor arguments of ", id.op, " exceed ",
              kMaxArgsBytes, " bytes encoded");
  TERRA_CHECK(
      id.location.frames.size() <= kMaxFrames && id.location.loop_context.size() <= kMaxLoopDepth,
      "location of ", id.op, " is too deep");
  out.Bytes(id.op);
  out.Bytes(id.overload);
  out.Bytes(id.args);
  EncodeMetasTo(id.inputs, out);
  const Location& loc = id.location;
  out.U32(static_cast<uint32_t>(loc.frames.size()));
  for (const Frame& f : loc.frames) {
    out.U64(f.code_id);
    out.U32(f.offset);
  }
  out.U32(static_cast<uint32_t>(loc.loop_context.size()));
  for (uint32_t l : loc.loop_context) out.U32(l);
  out.U64(loc.backward_of);
  out.U32(loc.ordinal);
}

}  // namespace

void EncodeIdentity(const NodeIdentity& id, ByteWriter& out) { EncodeTo(id, out); }

void EncodeMetas(const std::vector<TensorMeta>& metas, ByteWriter& out) { EncodeMetasTo(metas, out); }

std::vector<TensorMeta> DecodeMetas(ByteReader& in, const char* what) {
  std::vector<TensorMeta> metas(in.Count(what, 12, kMaxTensorInputs));
  for (TensorMeta& t : metas) {
    t.dtype = in.U8("dtype");
    t.device_type = in.U8("device type");
    t.device_index = static_cast<int16_t>(in.U16("device index"));
    t.sizes = DecodeInts(in, "sizes");
    t.strides = DecodeInts(in, "strides");
  }
  return metas;
}

uint64_t MetasHash(const std::vector<TensorMeta>& metas) {
  HashWriter out;
  EncodeMetasTo(metas, out);
  return out.state();
}

NodeIdentity DecodeIdentity(ByteReader& in) {
  NodeIdentity id;
  id.op = std::string(in.Bytes("operator name", kMaxNameBytes));
  id.overload = std::string(in.Bytes("overload name", kMaxNameBytes));
  id.args = std::string(in.Bytes("non-tensor arguments", kMaxArgsBytes));
  id.inputs = DecodeMetas(in, "tensor input count");
  Location& loc = id.location;
  loc.frames.resize(in.Count("frame count", 12, kMaxFrames));
  for (Frame& f : loc.frames) {
    f.code_id = in.U64("frame code id");
    f.offset = in.U32("frame offset");
  }
  loc.loop_context.resize(in.Count("loop context depth", 4, kMaxLoopDepth));
  for (uint32_t& l : loc.loop_context) l = in.U32("loop id");
  loc.backward_of = in.U64("backward_of");
  loc.ordinal = in.U32("ordinal");
  return id;
}

uint64_t Hash64(std::string_view bytes) {
  HashWriter h;
  h.Raw(bytes);
  return h.state();
}

uint64_t StructuralHash(const NodeIdentity& id) {
  HashWriter out;
  EncodeTo(id, out);
  return out.state();
}

uint64_t VariantKey(const NodeIdentity& id) {
  NodeIdentity key = id;
  key.inputs.clear();
  return StructuralHash(key);
}

std::string QualifiedName(const NodeIdentity& id) {
  return id.overload.empty() ? id.op : id.op + "." + id.overload;
}

std::string ShortLocation(const Location& loc) {
  char buf[96];
  if (loc.IsBackward()) {
    std::snprintf(buf, sizeof buf, "backward of 0x%llx #%u",
                  static_cast<unsigned long long>(loc.backward_of), loc.ordinal);
  } else if (loc.frames.empty()) {
    std::snprintf(buf, sizeof buf, "no frame #%u", loc.ordinal);
  } else {
    const Frame& f = loc.frames.back();
    std::snprintf(buf, sizeof buf, "code 0x%llx+%u #%u", static_cast<unsigned long long>(f.code_id),
                  f.offset, loc.ordinal);
  }
  return buf;
}

}  // namespace terra::graph
