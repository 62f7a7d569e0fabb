#include "comm/bench/report.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace terra::comm::bench {
namespace {

std::string Format(const char* format, double value) {
  char text[64];
  std::snprintf(text, sizeof(text), format, value);
  return text;
}

std::string OpName(const Row& row) { return row.op ? ReduceOpName(*row.op) : "none"; }

// JSON for a finite double; null for NaN and infinities, which JSON lacks.
std::string Number(double value) { return std::isfinite(value) ? Format("%.6g", value) : "null"; }

std::string Quoted(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += Format("\\u%04x", static_cast<unsigned char>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace

void PrintPreamble(std::ostream& out, const BenchOptions& options, const RunEnvironment& env) {
  out << "# terra-bench-collectives: " << env.world_size << " ranks, backend " << env.backend
      << ", device " << env.device << ", host " << env.host << "\n"
      << "# sizes " << options.min_bytes << " to " << options.max_bytes << " B by x"
      << options.factor << ", warmup " << options.warmup << ", iters " << options.iterations
      << ", check " << (options.check ? "on" : "off") << "\n"
      << "# time: slowest rank's mean over back-to-back blocking collectives after a barrier;"
      << " GB/s = 1e9 B/s\n";
}

void PrintTableHeader(std::ostream& out, const BenchCollective& collective, bool raw) {
  // The widths of PrintTableRow's columns, '#' in place of the first space.
  constexpr const char* kColumns = "#%12s %13s %9s %7s %7s %10s %8s %8s %7s";
  constexpr const char* kRawColumns = " %10s %10s %9s";
  char line[256];
  out << "#\n# " << CollectiveKindName(collective.kind()) << "\n";
  std::snprintf(line, sizeof(line), kColumns, "size", "count", "type", "redop", "root", "time",
                "algbw", "busbw", "#wrong");
  out << line;
  if (raw) {
    std::snprintf(line, sizeof(line), kRawColumns, "raw time", "raw busbw", "ours/raw");
    out << line;
  }
  std::snprintf(line, sizeof(line), kColumns, "(B)", "(elements)", "", "", "", "(us)", "(GB/s)",
                "(GB/s)", "");
  std::string units = line;
  if (raw) {
    std::snprintf(line, sizeof(line), kRawColumns, "(us)", "(GB/s)", "busbw");
    units += line;
  }
  units.erase(units.find_last_not_of(' ') + 1);
  out << "\n" << units << "\n";
}

void PrintTableRow(std::ostream& out, const Row& row) {
  char line[256];
  std::string wrong = row.wrong ? std::to_string(*row.wrong) : "N/A";
  std::snprintf(line, sizeof(line), "%13zu %13zu %9s %7s %7d %10.2f %8.3f %8.3f %7s", row.bytes,
                row.count, DataTypeName(row.dtype), OpName(row).c_str(), row.root.value_or(-1),
                row.time_us, row.algbw, row.busbw, wrong.c_str());
  out << line;
  if (row.raw_time_us) {
    std::snprintf(line, sizeof(line), " %10.2f %10.3f %9.2f", *row.raw_time_us, *row.raw_busbw,
                  *row.raw_time_us / row.time_us);
    out << line;
  }
  out << "\n" << std::flush;
}

void PrintSummary(std::ostream& out, const BenchOptions& options, const std::vector<Row>& rows) {
  int64_t wrong = 0;
  double busbw = 0;
  for (const Row& row : rows) {
    wrong += row.wrong.value_or(0);
    busbw += row.busbw;
  }
  out << "#\n# wrong elements: "
      << (options.check ? std::to_string(wrong) + (wrong == 0 ? " OK" : " FAILED")
                        : std::string("not checked (--check)"))
      << "\n# mean busbw: "
      << Format("%.3f", rows.empty() ? 0.0 : busbw / static_cast<double>(rows.size())) << " GB/s\n";
}

void WriteJson(const std::string& path, const BenchOptions& options, const RunEnvironment& env,
               const std::vector<Row>& rows) {
  std::ostringstream json;
  json << "{\n  \"benchmark\": \"terra-bench-collectives\",\n  \"settings\": {\"ops\": [";
  for (size_t i = 0; i < options.collectives.size(); ++i) {
    json << (i ? ", " : "") << Quoted(CollectiveKindName(options.collectives[i]));
  }
  json << "], \"min_bytes\": " << options.min_bytes << ", \"max_bytes\": " << options.max_bytes
       << ", \"factor\": " << options.factor << ", \"warmup\": " << options.warmup
       << ", \"iters\": " << options.iterations
       << ", \"check\": " << (options.check ? "true" : "false")
       << ", \"dtype\": " << Quoted(DataTypeName(options.dtype))
       << ", \"reduce\": " << Quoted(ReduceOpName(options.op)) << ", \"root\": " << options.root
       << ", \"raw_mpi\": " << (options.raw_mpi ? "true" : "false") << "},\n";
  json << "  \"environment\": {\"world_size\": " << env.world_size
       << ", \"host\": " << Quoted(env.host) << ", \"backend\": " << Quoted(env.backend)
       << ", \"device\": " << Quoted(env.device) << "},\n  \"rows\": [";
  int64_t wrong = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& row = rows[i];
    wrong += row.wrong.value_or(0);
    json << (i ? ",\n" : "\n") << "    {\"op\": " << Quoted(CollectiveKindName(row.collective))
         << ", \"bytes\": " << row.bytes << ", \"count\": " << row.count
         << ", \"dtype\": " << Quoted(DataTypeName(row.dtype))
         << ", \"redop\": " << Quoted(OpName(row)) << ", \"root\": " << row.root.value_or(-1)
         << ", \"time_us\": " << Number(row.time_us) << ", \"algbw_gbps\": " << Number(row.algbw)
         << ", \"busbw_gbps\": " << Number(row.busbw)
         << ", \"wrong\": " << (row.wrong ? std::to_string(*row.wrong) : "null");
    if (row.raw_time_us) {
      json << ", \"raw_time_us\": " << Number(*row.raw_time_us)
           << ", \"raw_busbw_gbps\": " << Number(*row.raw_busbw)
           << ", \"ours_over_raw_busbw\": " << Number(*row.raw_time_us / row.time_us);
    }
    json << "}";
  }
  json << "\n  ],\n  \"wrong\": " << (options.check ? std::to_string(wrong) : "null") << "\n}\n";
  std::ofstream file(path);
  file << json.str();
  file.close();
  TERRA_CHECK(file.good(), "--json: cannot write '", path,
              "'; give a path in a directory that exists and is writable");
}

}  // namespace terra::comm::bench
