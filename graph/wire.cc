#include "graph/wire.h"

#include "runtime/base/check.h"

namespace terra::graph {

void ByteWriter::U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }

void ByteWriter::U16(uint16_t v) {
  char bytes[2];
  for (int i = 0; i < 2; ++i) bytes[i] = static_cast<char>(static_cast<uint8_t>(v >> (8 * i)));
  out_.append(bytes, 2);
}

void ByteWriter::U32(uint32_t v) {
  char bytes[4];
  for (int i = 0; i < 4; ++i) bytes[i] = static_cast<char>(static_cast<uint8_t>(v >> (8 * i)));
  out_.append(bytes, 4);
}

void ByteWriter::U64(uint64_t v) {
  char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(static_cast<uint8_t>(v >> (8 * i)));
  out_.append(bytes, 8);
}

void ByteWriter::Bytes(std::string_view bytes) {
  TERRA_INTERNAL_CHECK(bytes.size() <= UINT32_MAX, "byte string too long to encode");
  U32(static_cast<uint32_t>(bytes.size()));
  out_.append(bytes);
}

void ByteReader::Fail(const char* what, const std::string& why) const {
  detail::ThrowError(StrCat("malformed graph bytes at offset ", offset_, " (", what, "): ", why));
}

void ByteReader::Need(size_t n, const char* what) {
  if (n > Remaining()) {
    Fail(what, StrCat("needs ", n, " bytes, only ", Remaining(), " left"));
  }
}

uint8_t ByteReader::U8(const char* what) {
  Need(1, what);
  return static_cast<uint8_t>(in_[offset_++]);
}

uint16_t ByteReader::U16(const char* what) {
  Need(2, what);
  uint16_t v = 0;
  for (int i = 0; i < 2; ++i)
    v |= static_cast<uint16_t>(static_cast<uint8_t>(in_[offset_++])) << (8 * i);
  return v;
}

uint32_t ByteReader::U32(const char* what) {
  Need(4, what);
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v |= static_cast<uint32_t>(static_cast<uint8_t>(in_[offset_++])) << (8 * i);
  return v;
}

uint64_t ByteReader::U64(const char* what) {
  Need(8, what);
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i)
    v |= static_cast<uint64_t>(static_cast<uint8_t>(in_[offset_++])) << (8 * i);
  return v;
}

std::string_view ByteReader::Raw(const char* what, size_t n) {
  Need(n, what);
  std::string_view out = in_.substr(offset_, n);
  offset_ += n;
  return out;
}

std::string_view ByteReader::Bytes(const char* what, size_t max_len) {
  size_t start = offset_;
  uint32_t n = U32(what);
  if (n > max_len) {
    offset_ = start;
    Fail(what, StrCat("length ", n, " exceeds the limit ", max_len));
  }
  return Raw(what, n);
}

uint32_t ByteReader::Count(const char* what, size_t min_element_bytes, size_t max_count) {
  size_t start = offset_;
  uint32_t n = U32(what);
  if (n > max_count) {
    offset_ = start;
    Fail(what, StrCat("count ", n, " exceeds the limit ", max_count));
  }
  if (min_element_bytes > 0 && n > Remaining() / min_element_bytes) {
    offset_ = start;
    Fail(what, StrCat("count ", n, " cannot fit in the ", Remaining(), " bytes left"));
  }
  return n;
}

}  // namespace terra::graph
