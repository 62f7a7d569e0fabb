// The control plane's wire format, shared by ControlServer and ControlClient.
//
// Every message is a frame: a 4-byte little-endian payload length followed by
// the payload. A payload is
//
//   u8  type            (MessageType)
//   u16 string count    u16 integer count      (little-endian)
//   per string: u32 length, then the bytes
//   per integer: i64 (little-endian)
//
// Each MessageType fixes how many strings and integers it carries (see
// kShapes in protocol.cc); DecodePayload rejects anything else, and the reader
// rejects a frame longer than the receiver's limit before reading it.
//
// The conversation on one connection:
//   client -> kHello{strings: secret; ints: protocol version, rank, channel}
//   server -> kOk{} or kError{strings: message; ints: StatusCode} and close.
// Then, on a kStore channel, one request at a time, each answered once:
//   kSet{key, value}            -> kOk
//   kGet{key; timeout_ms}       -> kValue{value} once the key exists, or kError(timeout)
//   kWait{keys...; timeout_ms}  -> kOk once all exist, or kError(timeout)
//   kAdd{key; delta}            -> kInteger{new value} (a missing key counts as 0)
//   kCheck{keys...}             -> kInteger{1 if all exist, else 0}
// On a kHeartbeat channel the client sends kHeartbeat{} periodically and
// kGoodbye{} before a clean close; the server never replies.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace terra::comm::control {

inline constexpr int64_t kProtocolVersion = 1;
inline constexpr uint32_t kDefaultMaxMessageBytes = 64u << 20;

enum class MessageType : uint8_t {
  kHello = 1,
  kOk = 2,
  kError = 3,
  kSet = 4,
  kGet = 5,
  kWait = 6,
  kAdd = 7,
  kCheck = 8,
  kValue = 9,
  kInteger = 10,
  kHeartbeat = 11,
  kGoodbye = 12,
};

enum class Channel : int64_t { kStore = 0, kHeartbeat = 1 };

// The rank a launcher or other observer uses in kHello: it is not a rank of
// the job and is never watched by heartbeats.
inline constexpr int64_t kObserverRank = -1;

struct Message {
  MessageType type = MessageType::kOk;
  std::vector<std::string> strings;
  std::vector<int64_t> ints;
};

// The whole frame: length prefix and payload.
std::string EncodeFrame(const Message& message);

// Decodes one payload (the bytes after the length prefix). Returns nullopt and
// sets *error for a payload that is truncated, has trailing bytes, has an
// unknown type, or a shape that does not match its type.
std::optional<Message> DecodePayload(std::string_view payload, std::string* error);

// Reads the 4-byte length prefix.
uint32_t DecodeLength(const unsigned char header[4]);

const char* MessageTypeName(MessageType type);

}  // namespace terra::comm::control
