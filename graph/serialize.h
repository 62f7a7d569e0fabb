// The TraceGraph's wire format, for replication across ranks (design.md §8).
//
// Layout, all integers little-endian (ByteWriter):
//   "TRGR"  u16 version (kWireVersion)  u16 flags (0)
//   u64 traces_added  u64 stable_for
//   u32 node_count, then per node:
//     identity (node.h canonical encoding)  u64 hash  u32 num_outputs  u64 visits
//     u8 sync_after
//     outputs (node.h EncodeMetas)  u64 outputs_hash  u8 outputs_vary
//     u32 slots (== tensor inputs), per slot: u32 n, n x (u8 kind, u32 index, u32 output)
//     u32 successors, per edge: u32 to (node index or kExit)  u64 count
//   u32 entry successors, per edge as above
// and nothing after.
//
// Deserialize treats its input as untrusted (it comes off the network): every
// read is bounds checked, every count is bounded by a limit and by the bytes
// left (no large allocation from a corrupt length), every index is range
// checked, each node's hash is recomputed and compared, and identities must be
// distinct. Any violation throws terra::Error naming the offset and the field.
// Both functions are pure; call them from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "graph/trace_graph.h"

namespace terra::graph {

// 3: the structural hash is HashWriter's word-at-a-time mix (2: FNV-1a per byte).
inline constexpr uint16_t kWireVersion = 3;
inline constexpr char kWireMagic[4] = {'T', 'R', 'G', 'R'};

std::string Serialize(const TraceGraph& graph);
TraceGraph Deserialize(std::string_view bytes);

}  // namespace terra::graph
