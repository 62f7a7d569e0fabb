#include "comm/control/protocol.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "runtime/base/check.h"

namespace terra::comm::control {
namespace {

std::string PayloadOf(const Message& message) { return EncodeFrame(message).substr(4); }

std::vector<Message> OneOfEachType() {
  return {
      {MessageType::kHello, {"secret"}, {kProtocolVersion, 3, 1}},
      {MessageType::kOk, {}, {}},
      {MessageType::kError, {"went wrong"}, {2}},
      {MessageType::kSet, {"key", std::string("v\0al", 4)}, {}},
      {MessageType::kGet, {"key"}, {1500}},
      {MessageType::kWait, {"a", "b", "c"}, {-1}},
      {MessageType::kAdd, {"counter"}, {INT64_MIN}},
      {MessageType::kCheck, {"only"}, {}},
      {MessageType::kValue, {""}, {}},
      {MessageType::kInteger, {}, {INT64_MAX}},
      {MessageType::kHeartbeat, {}, {}},
      {MessageType::kGoodbye, {}, {}},
  };
}

TEST(ControlProtocolTest, EveryTypeRoundTrips) {
  for (const Message& message : OneOfEachType()) {
    SCOPED_TRACE(MessageTypeName(message.type));
    std::string frame = EncodeFrame(message);
    ASSERT_GE(frame.size(), 4u);
    EXPECT_EQ(DecodeLength(reinterpret_cast<const unsigned char*>(frame.data())),
              frame.size() - 4);
    std::string error;
    std::optional<Message> decoded = DecodePayload(frame.substr(4), &error);
    ASSERT_TRUE(decoded.has_value()) << error;
    EXPECT_EQ(decoded->type, message.type);
    EXPECT_EQ(decoded->strings, message.strings);
    EXPECT_EQ(decoded->ints, message.ints);
  }
}

TEST(ControlProtocolTest, LayoutIsLittleEndian) {
  std::string frame = EncodeFrame({MessageType::kAdd, {"k"}, {0x0102030405060708}});
  std::string expected = std::string("\x12\0\0\0", 4) +     // payload length 18
                         std::string("\x07\x01\0\x01\0", 5) +  // kAdd, 1 string, 1 int
                         std::string("\x01\0\0\0k", 5) +      // "k"
                         std::string("\x08\x07\x06\x05\x04\x03\x02\x01", 8);
  EXPECT_EQ(frame, expected);
  const unsigned char header[4] = {0x78, 0x56, 0x34, 0x12};
  EXPECT_EQ(DecodeLength(header), 0x12345678u);
}

TEST(ControlProtocolTest, WaitAndCheckTakeSeveralKeys) {
  std::vector<std::string> keys(100, "k");
  std::string error;
  auto wait = DecodePayload(PayloadOf({MessageType::kWait, keys, {5}}), &error);
  ASSERT_TRUE(wait.has_value()) << error;
  EXPECT_EQ(wait->strings.size(), 100u);
  auto check = DecodePayload(PayloadOf({MessageType::kCheck, keys, {}}), &error);
  ASSERT_TRUE(check.has_value()) << error;
}

TEST(ControlProtocolTest, EncodingAWrongShapeIsABug) {
  EXPECT_THROW(EncodeFrame({MessageType::kSet, {"only key"}, {}}), InternalError);
  EXPECT_THROW(EncodeFrame({MessageType::kWait, {}, {5}}), InternalError);
  EXPECT_THROW(EncodeFrame({static_cast<MessageType>(0), {}, {}}), InternalError);
}

TEST(ControlProtocolTest, EveryTruncationIsRejected) {
  for (const Message& message : OneOfEachType()) {
    std::string payload = PayloadOf(message);
    for (size_t n = 0; n < payload.size(); ++n) {
      std::string error;
      EXPECT_FALSE(DecodePayload(std::string_view(payload).substr(0, n), &error))
          << MessageTypeName(message.type) << " cut to " << n << " bytes";
      EXPECT_FALSE(error.empty());
    }
  }
}

TEST(ControlProtocolTest, TrailingBytesAreRejected) {
  std::string payload = PayloadOf({MessageType::kSet, {"k", "v"}, {}}) + "x";
  std::string error;
  EXPECT_FALSE(DecodePayload(payload, &error));
  EXPECT_NE(error.find("trailing"), std::string::npos) << error;
}

TEST(ControlProtocolTest, UnknownTypesAreRejected) {
  for (int type : {0, 13, 200, 255}) {
    std::string payload = PayloadOf({MessageType::kOk, {}, {}});
    payload[0] = static_cast<char>(type);
    std::string error;
    EXPECT_FALSE(DecodePayload(payload, &error)) << type;
    EXPECT_NE(error.find("unknown message type"), std::string::npos) << error;
  }
}

TEST(ControlProtocolTest, WrongShapesAreRejected) {
  // kSet carrying a kGet's shape, and kWait or kCheck with no key.
  std::string payload = PayloadOf({MessageType::kGet, {"k"}, {5}});
  payload[0] = static_cast<char>(MessageType::kSet);
  std::string error;
  EXPECT_FALSE(DecodePayload(payload, &error));
  EXPECT_NE(error.find("kSet"), std::string::npos) << error;

  std::string no_keys("\x06\0\0\x01\0", 5);  // kWait, 0 strings, 1 int
  no_keys += std::string(8, '\0');
  EXPECT_FALSE(DecodePayload(no_keys, &error));
  EXPECT_FALSE(DecodePayload(std::string("\x08\0\0\0\0", 5), &error));  // kCheck{}
  EXPECT_FALSE(DecodePayload(std::string("\x02\0\0\x01\0", 5) + std::string(8, '\0'),
                             &error));  // kOk with an integer
}

TEST(ControlProtocolTest, OverlongStringsAndCountsAreRejected) {
  // kValue whose one string claims 4 GiB.
  std::string huge_string("\x09\x01\0\0\0\xff\xff\xff\xff", 9);
  huge_string += "abc";
  std::string error;
  EXPECT_FALSE(DecodePayload(huge_string, &error));
  EXPECT_NE(error.find("overruns"), std::string::npos) << error;
  // kCheck claiming 65535 keys in 9 bytes.
  std::string many_keys("\x08\xff\xff\0\0\x01\0\0\0k", 10);
  EXPECT_FALSE(DecodePayload(many_keys, &error));
}

TEST(ControlProtocolTest, RandomBytesNeverCrash) {
  std::mt19937 random(12345);
  std::vector<std::string> valid;
  for (const Message& message : OneOfEachType()) valid.push_back(PayloadOf(message));
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string bytes;
    if (i % 2 == 0) {
      // Noise, biased towards known types and small counts to get past the header.
      bytes.resize(random() % 48);
      for (char& b : bytes) b = static_cast<char>(random() % 256);
      if (!bytes.empty()) bytes[0] = static_cast<char>(random() % 14);
      if (bytes.size() > 2) bytes[2] = 0;
      if (bytes.size() > 4) bytes[4] = 0;
    } else {
      // A valid payload with a few bytes flipped.
      bytes = valid[random() % valid.size()];
      for (int flips = 1 + random() % 3; flips > 0; --flips) {
        bytes[random() % bytes.size()] = static_cast<char>(random() % 256);
      }
    }
    std::string error;
    std::optional<Message> decoded = DecodePayload(bytes, &error);
    if (decoded) {
      // Whatever decodes re-encodes to the very same bytes.
      EXPECT_EQ(PayloadOf(*decoded), bytes);
      ++accepted;
    } else {
      EXPECT_FALSE(error.empty());
    }
  }
  EXPECT_GT(accepted, 0);
}

}  // namespace
}  // namespace terra::comm::control
