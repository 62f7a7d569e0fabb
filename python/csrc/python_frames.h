// The LocationSource of a CPython process: the calling thread's Python frames
// as (code id, instruction byte offset), outermost first.
//
// Code ids are stable across processes and ranks: FNV-1a of the code object's
// file name, qualified name and first line. Each code object seen is kept
// alive (a strong reference) so that its address is never reused for another
// code object while this source exists; the ids of recently seen addresses are
// cached per thread.
//
// CurrentFrames runs for every op, usually while the op's Python binding has
// released the GIL. On CPython 3.11 it walks the thread's own interpreter
// frames directly (only this thread changes them, and it is busy running the
// op), taking the GIL only the first time it meets a code object. On other
// versions it takes the GIL and uses the public frame API (slower; see
// docs/tracing.md).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/tracing_types.h"

namespace terra::python {

class PythonFrames final : public runtime::LocationSource {
 public:
  // `library_prefixes`: file path prefixes of code that is not the program's
  // own (torch, terra, the standard library); Describe skips such frames.
  // `cwd`: file names under it are shown relative to it.
  PythonFrames(std::vector<std::string> library_prefixes, std::string cwd);
  ~PythonFrames() override;  // drops the code references; needs the GIL

  void CurrentFrames(std::vector<graph::Frame>* frames) override;
  // Needs the GIL (the caller holds it when called from Python).
  std::string Describe(const std::vector<graph::Frame>& frames) override;

  // The id of a code object (a PyCodeObject*); computes and caches it.
  uint64_t CodeId(void* code);

 private:
  struct Code {
    void* object = nullptr;  // strong reference
    std::string file;
    std::string name;
    bool library = false;
  };
  uint64_t SlowCodeId(void* code);

  const uint64_t generation_;
  std::vector<std::string> library_prefixes_;
  std::string cwd_;
  std::mutex mu_;
  std::unordered_map<void*, uint64_t> id_of_;
  std::unordered_map<uint64_t, Code> codes_;
};

}  // namespace terra::python
