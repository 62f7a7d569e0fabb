#include "comm/control/protocol.h"

#include <array>
#include <limits>
#include <type_traits>
#include <utility>

#include "runtime/base/check.h"

namespace terra::comm::control {
namespace {

// How many strings and integers each MessageType carries. variable_strings:
// min_strings or more (kWait and kCheck name one key or several).
struct Shape {
  uint16_t min_strings;
  bool variable_strings;
  uint16_t ints;
};

constexpr size_t kTypeCount = 13;  // index 0 is unused: types start at 1

constexpr std::array<Shape, kTypeCount> kShapes = {{
    {0, false, 0},  // (unused)
    {1, false, 3},  // kHello{secret; version, rank, channel}
    {0, false, 0},  // kOk{}
    {1, false, 1},  // kError{message; StatusCode}
    {2, false, 0},  // kSet{key, value}
    {1, false, 1},  // kGet{key; timeout_ms}
    {1, true, 1},   // kWait{keys...; timeout_ms}
    {1, false, 1},  // kAdd{key; delta}
    {1, true, 0},   // kCheck{keys...}
    {1, false, 0},  // kValue{value}
    {0, false, 1},  // kInteger{value}
    {0, false, 0},  // kHeartbeat{}
    {0, false, 0},  // kGoodbye{}
}};

constexpr size_t kFixedHeaderBytes = 1 + 2 + 2;

bool KnownType(uint8_t raw) { return raw >= 1 && raw < kTypeCount; }

bool ShapeMatches(MessageType type, size_t strings, size_t ints) {
  const Shape& shape = kShapes[static_cast<uint8_t>(type)];
  bool strings_ok = shape.variable_strings ? strings >= shape.min_strings
                                           : strings == shape.min_strings;
  return strings_ok && ints == shape.ints;
}

template <typename T>
void AppendLittleEndian(std::string* out, T value) {
  using U = std::make_unsigned_t<T>;
  U bits = static_cast<U>(value);
  for (size_t i = 0; i < sizeof(T); ++i) {
    out->push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
  }
}

// Reads little-endian integers from a payload without ever passing its end.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}

  template <typename T>
  bool Read(T* value) {
    using U = std::make_unsigned_t<T>;
    if (remaining() < sizeof(T)) return false;
    U bits = 0;
    for (size_t i = 0; i < sizeof(T); ++i) {
      bits |= static_cast<U>(static_cast<unsigned char>(bytes_[pos_ + i])) << (8 * i);
    }
    pos_ += sizeof(T);
    *value = static_cast<T>(bits);
    return true;
  }

  bool ReadBytes(size_t count, std::string* out) {
    if (remaining() < count) return false;
    out->assign(bytes_.data() + pos_, count);
    pos_ += count;
    return true;
  }

  size_t remaining() const { return bytes_.size() - pos_; }

 private:
  std::string_view bytes_;
  size_t pos_ = 0;
};

std::optional<Message> Fail(std::string* error, std::string message) {
  if (error != nullptr) *error = std::move(message);
  return std::nullopt;
}

}  // namespace

std::string EncodeFrame(const Message& message) {
  auto raw = static_cast<uint8_t>(message.type);
  TERRA_INTERNAL_CHECK(KnownType(raw), "unknown message type ", int{raw});
  TERRA_INTERNAL_CHECK(ShapeMatches(message.type, message.strings.size(), message.ints.size()),
                       MessageTypeName(message.type), " with ", message.strings.size(),
                       " strings and ", message.ints.size(), " integers");
  TERRA_INTERNAL_CHECK(message.strings.size() <= std::numeric_limits<uint16_t>::max() &&
                           message.ints.size() <= std::numeric_limits<uint16_t>::max(),
                       "too many fields in ", MessageTypeName(message.type));

  size_t payload_size = kFixedHeaderBytes + 8 * message.ints.size();
  for (const std::string& s : message.strings) {
    TERRA_CHECK(s.size() <= std::numeric_limits<uint32_t>::max(),
                "a control-plane string is limited to 4 GiB; got ", s.size(), " bytes");
    payload_size += 4 + s.size();
  }
  TERRA_CHECK(payload_size <= std::numeric_limits<uint32_t>::max(),
              "a control-plane message is limited to 4 GiB; got ", payload_size, " bytes");

  std::string frame;
  frame.reserve(4 + payload_size);
  AppendLittleEndian(&frame, static_cast<uint32_t>(payload_size));
  frame.push_back(static_cast<char>(raw));
  AppendLittleEndian(&frame, static_cast<uint16_t>(message.strings.size()));
  AppendLittleEndian(&frame, static_cast<uint16_t>(message.ints.size()));
  for (const std::string& s : message.strings) {
    AppendLittleEndian(&frame, static_cast<uint32_t>(s.size()));
    frame.append(s);
  }
  for (int64_t value : message.ints) AppendLittleEndian(&frame, value);
  return frame;
}

std::optional<Message> DecodePayload(std::string_view payload, std::string* error) {
  Reader reader(payload);
  uint8_t raw_type = 0;
  uint16_t string_count = 0;
  uint16_t int_count = 0;
  if (!reader.Read(&raw_type) || !reader.Read(&string_count) || !reader.Read(&int_count)) {
    return Fail(error, StrCat("truncated message: ", payload.size(),
                              " bytes cannot hold the 5-byte header"));
  }
  if (!KnownType(raw_type)) {
    return Fail(error, StrCat("unknown message type ", int{raw_type}));
  }
  Message message;
  message.type = static_cast<MessageType>(raw_type);
  if (!ShapeMatches(message.type, string_count, int_count)) {
    return Fail(error, StrCat(MessageTypeName(message.type), " cannot carry ", string_count,
                              " strings and ", int_count, " integers"));
  }
  // Every string needs at least its 4-byte length: reject absurd counts before
  // reserving memory for them.
  if (reader.remaining() < 4 * size_t{string_count} + 8 * size_t{int_count}) {
    return Fail(error, StrCat("truncated ", MessageTypeName(message.type), ": ",
                              reader.remaining(), " bytes left for ", string_count,
                              " strings and ", int_count, " integers"));
  }
  message.strings.resize(string_count);
  for (std::string& s : message.strings) {
    uint32_t length = 0;
    if (!reader.Read(&length) || !reader.ReadBytes(length, &s)) {
      return Fail(error, StrCat("truncated ", MessageTypeName(message.type),
                                ": a string of ", length, " bytes overruns the payload"));
    }
  }
  message.ints.resize(int_count);
  for (int64_t& value : message.ints) {
    if (!reader.Read(&value)) {
      return Fail(error, StrCat("truncated ", MessageTypeName(message.type),
                                ": its integers overrun the payload"));
    }
  }
  if (reader.remaining() != 0) {
    return Fail(error, StrCat(MessageTypeName(message.type), " has ", reader.remaining(),
                              " trailing bytes"));
  }
  return message;
}

uint32_t DecodeLength(const unsigned char header[4]) {
  return uint32_t{header[0]} | uint32_t{header[1]} << 8 | uint32_t{header[2]} << 16 |
         uint32_t{header[3]} << 24;
}

const char* MessageTypeName(MessageType type) {
  switch (type) {
    case MessageType::kHello: return "kHello";
    case MessageType::kOk: return "kOk";
    case MessageType::kError: return "kError";
    case MessageType::kSet: return "kSet";
    case MessageType::kGet: return "kGet";
    case MessageType::kWait: return "kWait";
    case MessageType::kAdd: return "kAdd";
    case MessageType::kCheck: return "kCheck";
    case MessageType::kValue: return "kValue";
    case MessageType::kInteger: return "kInteger";
    case MessageType::kHeartbeat: return "kHeartbeat";
    case MessageType::kGoodbye: return "kGoodbye";
  }
  return "unknown";
}

}  // namespace terra::comm::control
