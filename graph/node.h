// A node's identity (design.md §5) and its stable structural hash.
//
// Two ATen calls are the same node when their NodeIdentity is equal: same
// operator and overload, same non-tensor arguments, same metadata for every
// tensor input, same program location. The structural hash is Hash64 over
// the canonical encoding (EncodeIdentity): fixed-width little-endian fields in
// a fixed order, so it is identical across processes, ranks and hosts (never
// std::hash). The canonical encoding is also the wire encoding of a node
// (serialize.h), so a round trip preserves hashes by construction.
//
// Plain C++ on purpose (no c10): dtype and device type carry the numeric value
// of c10::ScalarType and c10::DeviceType, which the recorder converts with a cast.
// Value types; no threading concerns.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "graph/wire.h"

namespace terra::graph {

// Metadata of one tensor input.
struct TensorMeta {
  uint8_t dtype = 0;        // c10::ScalarType value
  uint8_t device_type = 0;  // c10::DeviceType value (0 CPU, 1 CUDA)
  int16_t device_index = -1;
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;

  bool operator==(const TensorMeta&) const = default;
};

// One Python frame: the code object (an id the recorder keeps stable for the
// process and equal across ranks, e.g. a hash of file:qualname:firstlineno) and
// the instruction offset (or line) within it.
struct Frame {
  uint64_t code_id = 0;
  uint32_t offset = 0;

  bool operator==(const Frame&) const = default;
};

// Where an op was issued. Either Python frames (outermost first) plus loop
// context, or, for ops the autograd engine issues, the hash of the forward node
// that created the backward function (frames then empty).
//   loop_context: ids of the enclosing loops as the recorder sees them, never
//     iteration counters, so each iteration of a loop body issues the same nodes.
//   ordinal: the op's index among consecutive ops issued from the same frames
//     (one Python call may run several ATen ops) or by the same backward
//     function; it keeps those ops distinct nodes instead of a false self-loop.
struct Location {
  std::vector<Frame> frames;
  std::vector<uint32_t> loop_context;
  uint64_t backward_of = 0;  // nonzero: a backward op
  uint32_t ordinal = 0;

  bool IsBackward() const { return backward_of != 0; }
  bool operator==(const Location&) const = default;
};

struct NodeIdentity {
  std::string op;                  // schema name, e.g. "aten::add"
  std::string overload;            // e.g. "Tensor"; empty for the default overload
  std::string args;                // canonical encoding of the non-tensor arguments (ArgsEncoder)
  std::vector<TensorMeta> inputs;  // one per tensor input, in argument order
  Location location;

  bool operator==(const NodeIdentity&) const = default;
};

// Builds NodeIdentity::args: each argument as a one-byte tag and a fixed-width
// value, so equal argument lists give equal bytes.
class ArgsEncoder {
 public:
  enum Tag : uint8_t { kNone = 0, kBool, kInt, kDouble, kString, kIntList, kFed };
  ArgsEncoder& None();
  ArgsEncoder& Bool(bool v);
  ArgsEncoder& Int(int64_t v);
  ArgsEncoder& Double(double v);  // by bit pattern: -0.0 and 0.0 differ, NaNs by payload
  ArgsEncoder& String(std::string_view v);
  ArgsEncoder& IntList(const std::vector<int64_t>& v);
  // An argument whose value is fed at run time, not part of the identity:
  // only its kind (kInt, kDouble, ...) is encoded.
  ArgsEncoder& Fed(Tag kind);
  // The same, also mixing the fed value's bits into fed_hash() (which is not
  // part of the encoding): co-execution replays a backward segment only
  // while the forward ops' fed values are those it was learned with.
  ArgsEncoder& Fed(Tag kind, uint64_t value_bits) {
    fed_hash_ = CombineWord(fed_hash_, value_bits);
    return Fed(kind);
  }
  // 0: no fed value since Clear.
  uint64_t fed_hash() const { return fed_hash_; }
  std::string Take() { return out_.Take(); }
  // For reuse without allocating: the bytes so far, and a reset.
  std::string_view bytes() const { return out_.data(); }
  void Clear() {
    out_.Clear();
    fed_hash_ = 0;
  }

 private:
  ByteWriter out_;
  uint64_t fed_hash_ = 0;
};

// Limits the decoder enforces on untrusted bytes; the encoder checks them too.
inline constexpr size_t kMaxNameBytes = 1024;
inline constexpr size_t kMaxArgsBytes = 1 << 20;
inline constexpr size_t kMaxTensorInputs = 1 << 16;
inline constexpr size_t kMaxDims = 64;
inline constexpr size_t kMaxFrames = 4096;
inline constexpr size_t kMaxLoopDepth = 1024;

void EncodeIdentity(const NodeIdentity& id, ByteWriter& out);
NodeIdentity DecodeIdentity(ByteReader& in);

// A list of tensor metadata (a node's outputs) in the identity's layout for
// its inputs: a u32 count, then each tensor. MetasHash is Hash64 of those
// bytes; the recorder streams the same bytes from live tensors.
void EncodeMetas(const std::vector<TensorMeta>& metas, ByteWriter& out);
std::vector<TensorMeta> DecodeMetas(ByteReader& in, const char* what);
uint64_t MetasHash(const std::vector<TensorMeta>& metas);

uint64_t Hash64(std::string_view bytes);  // HashWriter over these bytes
uint64_t StructuralHash(const NodeIdentity& id);
// The hash of `id` without its input metadata: equal for the variants (other
// shapes, dtypes, strides) of one op issued at one location.
uint64_t VariantKey(const NodeIdentity& id);

// "aten::add.Tensor"
std::string QualifiedName(const NodeIdentity& id);
// A short human-readable location: "code 0x1f2e+14" (innermost frame) or
// "backward of 0x9a3c #2".
std::string ShortLocation(const Location& loc);

}  // namespace terra::graph
