#include "comm/bench/options.h"

#include <cerrno>
#include <cstdlib>
#include <limits>

namespace terra::comm::bench {
namespace {

constexpr const char* kSeeHelp = "; run terra-bench-collectives --help for every option";

[[noreturn]] void Fail(const std::string& flag, const std::string& problem) {
  throw UsageError(StrCat(flag, ": ", problem, kSeeHelp));
}

int64_t ParseInteger(const std::string& flag, const std::string& text, int64_t min) {
  errno = 0;
  char* end = nullptr;
  long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || value < min ||
      value > std::numeric_limits<int>::max()) {
    Fail(flag, StrCat("'", text, "' is not an integer >= ", min));
  }
  return value;
}

std::vector<CollectiveKind> ParseCollectives(const std::string& text) {
  using K = CollectiveKind;
  if (text == "all") return {K::kAllreduce, K::kAllgather, K::kReduceScatter, K::kBroadcast};
  for (K kind : {K::kAllreduce, K::kAllgather, K::kReduceScatter, K::kBroadcast}) {
    if (text == CollectiveKindName(kind)) return {kind};
  }
  Fail("--op", StrCat("unknown collective '", text,
                      "'; give allreduce, allgather, reduce_scatter, broadcast or all"));
}

DataType ParseDataType(const std::string& text) {
  using D = DataType;
  for (D dtype : {D::kFloat32, D::kFloat64, D::kFloat16, D::kBFloat16, D::kInt32, D::kInt64,
                  D::kUInt8, D::kInt8}) {
    if (text == DataTypeName(dtype)) return dtype;
  }
  Fail("--dtype", StrCat("unknown type '", text,
                         "'; give float32, float64, float16, bfloat16, int32, int64, uint8 or "
                         "int8"));
}

ReduceOp ParseReduceOp(const std::string& text) {
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin}) {
    if (text == ReduceOpName(op)) return op;
  }
  Fail("--reduce", StrCat("unknown reduction '", text, "'; give sum, avg, max or min"));
}

DeviceType ParseDevice(const std::string& text) {
  if (text == "cpu") return DeviceType::kCpu;
  if (text == "cuda") return DeviceType::kCuda;
  Fail("--device", StrCat("unknown device '", text, "'; give cpu or cuda"));
}

}  // namespace

size_t ParseSize(const std::string& flag, const std::string& text) {
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  std::string suffix = text.substr(digits);
  int shift = -1;
  if (suffix.empty()) shift = 0;
  if (suffix == "K" || suffix == "k") shift = 10;
  if (suffix == "M" || suffix == "m") shift = 20;
  if (suffix == "G" || suffix == "g") shift = 30;
  if (digits == 0 || digits > 12 || shift < 0) {
    Fail(flag, StrCat("'", text,
                      "' is not a size; give bytes as an integer with an optional K, M or G "
                      "suffix (1K = 1024), e.g. 64M"));
  }
  size_t bytes = std::stoull(text.substr(0, digits)) << shift;
  if (bytes == 0) Fail(flag, "a size must be at least 1 byte");
  return bytes;
}

BenchOptions ParseOptions(const std::vector<std::string>& args) {
  BenchOptions options;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i];
    std::string value;
    bool inline_value = false;
    if (size_t eq = flag.find('='); flag.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      inline_value = true;
    }
    // The option's value: after '=' or the next argument.
    auto next = [&]() -> const std::string& {
      if (inline_value) return value;
      if (i + 1 >= args.size()) Fail(flag, "needs a value");
      return args[++i];
    };
    auto no_value = [&] {
      if (inline_value) Fail(flag, "takes no value");
    };
    if (flag == "-h" || flag == "--help") {
      options.help = true;
    } else if (flag == "--op") {
      options.collectives = ParseCollectives(next());
    } else if (flag == "-b" || flag == "--min-bytes") {
      options.min_bytes = ParseSize(flag, next());
    } else if (flag == "-e" || flag == "--max-bytes") {
      options.max_bytes = ParseSize(flag, next());
    } else if (flag == "-f" || flag == "--factor") {
      options.factor = static_cast<size_t>(ParseInteger(flag, next(), 2));
    } else if (flag == "-w" || flag == "--warmup") {
      options.warmup = static_cast<int>(ParseInteger(flag, next(), 0));
    } else if (flag == "-n" || flag == "--iters") {
      options.iterations = static_cast<int>(ParseInteger(flag, next(), 1));
    } else if (flag == "--check") {
      no_value();
      options.check = true;
    } else if (flag == "--dtype") {
      options.dtype = ParseDataType(next());
    } else if (flag == "--reduce") {
      options.op = ParseReduceOp(next());
    } else if (flag == "--root") {
      options.root = static_cast<int>(ParseInteger(flag, next(), 0));
    } else if (flag == "--device") {
      options.device = ParseDevice(next());
    } else if (flag == "--json") {
      options.json_path = next();
      if (options.json_path.empty()) Fail(flag, "needs a file path");
    } else if (flag == "--no-raw-mpi") {
      no_value();
      options.raw_mpi = false;
    } else if (flag == "--inject-error") {
      no_value();
      options.inject_error = true;
    } else {
      Fail(flag, "unknown option");
    }
  }
  if (options.min_bytes > options.max_bytes) {
    Fail("-b", StrCat(options.min_bytes, " bytes is more than -e (", options.max_bytes,
                      " bytes); give -b <= -e"));
  }
  return options;
}

std::vector<size_t> SizeSteps(const BenchOptions& options) {
  std::vector<size_t> sizes;
  for (size_t bytes = options.min_bytes; bytes <= options.max_bytes; bytes *= options.factor) {
    sizes.push_back(bytes);
    if (bytes > options.max_bytes / options.factor) break;  // the next step would overflow
  }
  return sizes;
}

std::string UsageText() {
  return R"(Usage: terrarun -np N terra-bench-collectives [options]

Times collectives across the ranks of a terrarun job, in the manner of
nccl-tests: for each size, warm-up, barrier, then --iters back-to-back
collectives (each waited before the next is submitted); the slowest rank's
mean time is reported with algorithm and bus bandwidth.

  --op OP            allreduce | allgather | reduce_scatter | broadcast | all
                     (default allreduce)
  -b, --min-bytes S  smallest size (default 1K); S is bytes with an optional
                     K, M or G suffix (binary: 1K = 1024)
  -e, --max-bytes S  largest size (default 64M)
  -f, --factor F     multiply the size by F between steps (default 4)
  -w, --warmup N     untimed collectives per size (default 5)
  -n, --iters N      timed collectives per size (default 20)
  --check            verify every result element exactly; count wrong ones
                     (the exit status is 1 if any is wrong)
  --dtype T          float32 | float64 | float16 | bfloat16 | int32 | int64 |
                     uint8 | int8 (default float32)
  --reduce OP        sum | avg | max | min, for allreduce and reduce_scatter
                     (default sum)
  --root R           broadcast's root rank (default 0)
  --device D         cpu (MPI) | cuda (NCCL) (default cpu)
  --json PATH        also write the settings and every row as JSON (rank 0)
  --no-raw-mpi       do not time plain MPI_Allreduce beside allreduce
  -h, --help         this text

Exit status: 0 all good, 1 wrong results or a failed collective, 2 bad
arguments or not started by terrarun.
)";
}

}  // namespace terra::comm::bench
