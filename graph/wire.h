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

// A 64-bit hash of the bytes a ByteWriter would write, without writing them:
// HashWriter fed the same calls as a ByteWriter ends with
// Hash64(writer.data()). The validation path uses it to compute a node's
// structural hash (node.h) per op, with no allocation.
//
// The bytes are taken eight at a time, as little-endian words, and each word
// is mixed in with one multiply (not FNV-1a's one multiply per byte, which
// was 5 % of the program's thread on a Python-bound program); the length is
// mixed in last, so trailing zero bytes count. A writer is a value: copy one
// to hash several continuations of a common prefix.
class HashWriter {
 public:
  static constexpr uint64_t kSeed = 0xcbf29ce484222325ull;
  static constexpr uint64_t kMultiplier = 0x9e3779b97f4a7c15ull;  // odd: each step is a bijection

  void U8(uint8_t v) { Put(v, 1); }
  void U16(uint16_t v) { Put(v, 2); }
  void U32(uint32_t v) { Put(v, 4); }
  void U64(uint64_t v) { Put(v, 8); }
  void I64(int64_t v) { U64(static_cast<uint64_t>(v)); }
  void Bytes(std::string_view bytes) {
    U32(static_cast<uint32_t>(bytes.size()));
    Raw(bytes);
  }
  void Raw(std::string_view bytes) {
    size_t i = 0;
    for (; i + 8 <= bytes.size(); i += 8) Put(LoadLittleEndian(bytes.data() + i, 8), 8);
    if (i < bytes.size()) {
      const auto rest = static_cast<unsigned>(bytes.size() - i);
      Put(LoadLittleEndian(bytes.data() + i, rest), rest);
    }
  }
  uint64_t state() const {
    const uint64_t h = pending_bytes_ == 0 ? h_ : Mix(h_, pending_);
    return Mix(h, length_);
  }

 private:
  static uint64_t Mix(uint64_t h, uint64_t word) {
    h = (h ^ word) * kMultiplier;
    return h ^ (h >> 32);
  }
  static uint64_t LoadLittleEndian(const char* p, unsigned n) {
    uint64_t v = 0;
    for (unsigned k = 0; k < n; ++k) v |= uint64_t{static_cast<uint8_t>(p[k])} << (8 * k);
    return v;
  }
  // Appends the low `n` bytes of `v` (1 to 8; the rest of `v` is zero).
  void Put(uint64_t v, unsigned n) {
    length_ += n;
    const unsigned had = pending_bytes_;
    pending_ |= v << (8 * had);  // had < 8: the bytes that fit
    if (had + n < 8) {
      pending_bytes_ = had + n;
      return;
    }
    h_ = Mix(h_, pending_);
    pending_bytes_ = had + n - 8;
    pending_ = pending_bytes_ == 0 ? 0 : v >> (8 * (8 - had));  // the bytes that did not fit
  }

  uint64_t h_ = kSeed;
  uint64_t pending_ = 0;  // the next word's first pending_bytes_ bytes
  unsigned pending_bytes_ = 0;
  uint64_t length_ = 0;
};

// One word folded into a running 64-bit combination (0 to start; order
// matters). For hashes of values that are not a byte stream (HashWriter is
// for those) and never leave the process.
inline uint64_t CombineWord(uint64_t h, uint64_t word) { return ((h ^ word) + 1) * HashWriter::kMultiplier; }

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
