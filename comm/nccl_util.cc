#include "comm/nccl_util.h"

#include <unistd.h>

#include "runtime/base/check.h"

namespace terra::comm {
namespace {

std::string Where(const char* call, const char* file, int line, const NcclContext& context) {
  return StrCat(call, " failed at ", file, ":", line, " on rank ", context.rank, " (host ",
                context.host, "): ");
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

std::string HostName() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "unknown";
  return name;
}

std::string CudaErrorText(cudaError_t rc) {
  return StrCat(cudaGetErrorName(rc), " (", cudaGetErrorString(rc), ")");
}

std::string NcclErrorText(ncclResult_t rc) {
  const char* last = ncclGetLastError(nullptr);
  std::string text = ncclGetErrorString(rc);
  if (last != nullptr && *last != '\0') text += StrCat(" (NCCL: ", last, ")");
  return text;
}

void CheckCuda(cudaError_t rc, const char* call, const char* file, int line,
               const NcclContext& context) {
  if (rc == cudaSuccess) return;
  throw Error(Where(call, file, line, context) + CudaErrorText(rc));
}

void CheckNccl(ncclResult_t rc, const char* call, const char* file, int line,
               const NcclContext& context) {
  if (rc == ncclSuccess) return;
  if (rc == ncclInProgress) {
    throw TimeoutError(Where(call, file, line, context) +
                       "still in progress when its deadline passed or the communicator broke: "
                       "another rank did not join it (it died, hangs, or created or called "
                       "its NCCL communicators differently)");
  }
  throw Error(Where(call, file, line, context) + NcclErrorText(rc));
}

ncclDataType_t NcclType(DataType dtype) {
  switch (dtype) {
    case DataType::kFloat32:
      return ncclFloat32;
    case DataType::kFloat64:
      return ncclFloat64;
    case DataType::kFloat16:
      return ncclFloat16;
    case DataType::kBFloat16:
      return ncclBfloat16;
    case DataType::kInt32:
      return ncclInt32;
    case DataType::kInt64:
      return ncclInt64;
    case DataType::kUInt8:
      return ncclUint8;
    case DataType::kInt8:
      return ncclInt8;
  }
  TERRA_INTERNAL_CHECK(false, "unknown DataType ", static_cast<int>(dtype));
}

ncclRedOp_t NcclOp(ReduceOp op, DataType dtype) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kAvg:
      return IsFloatingPoint(dtype) ? ncclAvg : ncclSum;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
  }
  TERRA_INTERNAL_CHECK(false, "unknown ReduceOp ", static_cast<int>(op));
}

std::string UniqueIdToHex(const ncclUniqueId& id) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  for (char c : id.internal) {
    auto byte = static_cast<unsigned char>(c);
    hex += kDigits[byte >> 4];
    hex += kDigits[byte & 15];
  }
  return hex;
}

bool UniqueIdFromHex(const std::string& hex, ncclUniqueId* id) {
  if (hex.size() != 2 * sizeof(id->internal)) return false;
  for (size_t i = 0; i < sizeof(id->internal); ++i) {
    int high = HexDigit(hex[2 * i]), low = HexDigit(hex[2 * i + 1]);
    if (high < 0 || low < 0) return false;
    id->internal[i] = static_cast<char>(high * 16 + low);
  }
  return true;
}

DeviceGuard::DeviceGuard(int device, const NcclContext& context) : device_(device) {
  TERRA_CUDA_CHECK(context, cudaGetDevice(&previous_));
  if (previous_ != device_) TERRA_CUDA_CHECK(context, cudaSetDevice(device_));
}

DeviceGuard::~DeviceGuard() {
  if (previous_ != device_) (void)cudaSetDevice(previous_);
}

}  // namespace terra::comm
