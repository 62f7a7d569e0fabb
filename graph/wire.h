// Checked little-endian byte encoding, shared by the canonical node encoding
// (node.h, whose bytes define the structural hash) and the wire format
// (serialize.h).
//
// ByteWriter appends fixed-width little-endian integers and length-prefixed
// byte strings, so the bytes are identical on every host and process.
// ByteReader reads them back from untrusted bytes: every read is bounds
// checked, and a failure throws terra::Error naming the offset and the field.
// Neither class is thread-safe; neither owns the bytes a reader reads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace terra::graph {

class ByteWriter {
 public:
  void U8(uint8_t v);
  void U16(uint16_t v);
  void U32(uint32_t v);
  void U64(uint64_t v);
  void I64(int64_t v) { U64(static_cast<uint64_t>(v)); }
  // A u32 length, then the bytes.
  void Bytes(std::string_view bytes);
  void Raw(std::string_view bytes) { out_.append(bytes); }

  const std::string& data() const { return out_; }
  std::string Take() { return std::move(out_); }
  void Clear() { out_.clear(); }  // keeps the capacity

 private:
  std::string out_;
};

// FNV-1a 64 over the bytes a ByteWriter would write, without writing them:
// Fnv1aWriter fed the same calls as a ByteWriter ends with
// Fnv1a64(writer.data()). The validation path uses it to compute a node's
// structural hash (node.h) with no allocation.
class Fnv1aWriter {
 public:
  static constexpr uint64_t kOffsetBasis = 0xcbf29ce484222325ull;
  static constexpr uint64_t kPrime = 0x100000001b3ull;

  explicit Fnv1aWriter(uint64_t state = kOffsetBasis) : h_(state) {}
  void U8(uint8_t v) { h_ = (h_ ^ v) * kPrime; }
  void U16(uint16_t v) {
    U8(static_cast<uint8_t>(v));
    U8(static_cast<uint8_t>(v >> 8));
  }
  void U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) U8(static_cast<uint8_t>(v >> (8 * i)));
  }
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) U8(static_cast<uint8_t>(v >> (8 * i)));
  }
  void I64(int64_t v) { U64(static_cast<uint64_t>(v)); }
  void Bytes(std::string_view bytes) {
    U32(static_cast<uint32_t>(bytes.size()));
    Raw(bytes);
  }
  void Raw(std::string_view bytes) {
    for (char c : bytes) U8(static_cast<uint8_t>(c));
  }
  uint64_t state() const { return h_; }

 private:
  uint64_t h_;
};

class ByteReader {
 public:
  explicit ByteReader(std::string_view in) : in_(in) {}

  // `what` names the field in the error message.
  uint8_t U8(const char* what);
  uint16_t U16(const char* what);
  uint32_t U32(const char* what);
  uint64_t U64(const char* what);
  int64_t I64(const char* what) { return static_cast<int64_t>(U64(what)); }
  // A u32 length (at most max_len), then that many bytes; a view into the input.
  std::string_view Bytes(const char* what, size_t max_len);
  std::string_view Raw(const char* what, size_t n);
  // A u32 element count, checked against max_count and against the bytes left
  // (each element takes at least min_element_bytes), so that a corrupt count
  // can never cause a large allocation.
  uint32_t Count(const char* what, size_t min_element_bytes, size_t max_count);

  size_t offset() const { return offset_; }
  bool AtEnd() const { return offset_ == in_.size(); }
  size_t Remaining() const { return in_.size() - offset_; }
  // Throws terra::Error: "malformed graph bytes at offset N (what): why".
  [[noreturn]] void Fail(const char* what, const std::string& why) const;

 private:
  void Need(size_t n, const char* what);

  std::string_view in_;
  size_t offset_ = 0;
};

}  // namespace terra::graph
