#include "python/csrc/python_frames.h"

#include <Python.h>
#include <frameobject.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
#define TERRA_FRAMES_DIRECT 1
#define Py_BUILD_CORE 1
#include <internal/pycore_frame.h>
#undef Py_BUILD_CORE
#else
#define TERRA_FRAMES_DIRECT 0
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <string_view>
#include <utility>

#include "graph/node.h"

namespace terra::python {
namespace {

std::atomic<uint64_t> next_generation{1};

// Per thread: the last code objects seen, direct-mapped by address. An entry
// is valid only for the PythonFrames of its generation, which keeps the code
// object alive, so an address in a valid entry still names the same code.
struct CacheEntry {
  const void* code = nullptr;
  uint64_t generation = 0;
  uint64_t id = 0;
};
constexpr size_t kCacheSize = 1024;
thread_local std::array<CacheEntry, kCacheSize> tls_cache;

size_t Slot(const void* code) { return (reinterpret_cast<uintptr_t>(code) >> 4) & (kCacheSize - 1); }

std::string Utf8(PyObject* s) {
  if (s == nullptr || !PyUnicode_Check(s)) return "?";
  Py_ssize_t n = 0;
  const char* p = PyUnicode_AsUTF8AndSize(s, &n);
  if (p == nullptr) {
    PyErr_Clear();
    return "?";
  }
  return std::string(p, static_cast<size_t>(n));
}

}  // namespace

PythonFrames::PythonFrames(std::vector<std::string> library_prefixes, std::string cwd)
    : generation_(next_generation.fetch_add(1)),
      library_prefixes_(std::move(library_prefixes)),
      cwd_(std::move(cwd)) {}

PythonFrames::~PythonFrames() {
  if (!Py_IsInitialized()) return;  // the interpreter is gone and took the codes with it
  PyGILState_STATE gil = PyGILState_Ensure();
  for (auto& [id, code] : codes_) Py_XDECREF(static_cast<PyObject*>(code.object));
  PyGILState_Release(gil);
}

uint64_t PythonFrames::CodeId(void* code) {
  CacheEntry& e = tls_cache[Slot(code)];
  if (e.code == code && e.generation == generation_) return e.id;
  const uint64_t id = SlowCodeId(code);
  e = CacheEntry{code, generation_, id};
  return id;
}

uint64_t PythonFrames::SlowCodeId(void* code) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = id_of_.find(code);
    if (it != id_of_.end()) return it->second;
  }
  // First sight of this code object: name it under the GIL (the lock is not
  // held while waiting for the GIL).
  PyGILState_STATE gil = PyGILState_Ensure();
  auto* co = reinterpret_cast<PyCodeObject*>(code);
  Code entry;
  entry.file = Utf8(co->co_filename);
  entry.name = Utf8(co->co_qualname);
  const std::string key = entry.file + '\0' + entry.name + '\0' + std::to_string(co->co_firstlineno);
  const uint64_t id = graph::Hash64(key);
  for (const std::string& prefix : library_prefixes_) {
    if (!prefix.empty() && entry.file.compare(0, prefix.size(), prefix) == 0) entry.library = true;
  }
  if (!entry.file.empty() && entry.file.front() == '<') entry.library = true;  // <frozen ...>, <string>
  Py_INCREF(co);
  entry.object = co;
  bool inserted = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    inserted = id_of_.emplace(code, id).second;
    // Two code objects with the same file, name and first line (a function
    // defined twice by exec) share an id; the first keeps the entry.
    if (inserted) codes_.emplace(id, std::move(entry));
  }
  if (!inserted) Py_DECREF(co);
  PyGILState_Release(gil);
  return id;
}

#if TERRA_FRAMES_DIRECT

void PythonFrames::CurrentFrames(std::vector<graph::Frame>* frames) {
  frames->clear();
  PyThreadState* ts = PyGILState_GetThisThreadState();
  if (ts == nullptr || ts->cframe == nullptr) return;
  for (_PyInterpreterFrame* f = ts->cframe->current_frame; f != nullptr; f = f->previous) {
    if (_PyFrame_IsIncomplete(f)) continue;
    if (frames->size() == graph::kMaxFrames) break;
    const auto offset = static_cast<uint32_t>(_PyInterpreterFrame_LASTI(f) * sizeof(_Py_CODEUNIT));
    frames->push_back(graph::Frame{CodeId(f->f_code), offset});
  }
  std::reverse(frames->begin(), frames->end());
}

#else

void PythonFrames::CurrentFrames(std::vector<graph::Frame>* frames) {
  frames->clear();
  if (PyGILState_GetThisThreadState() == nullptr) return;  // not a Python thread
  PyGILState_STATE gil = PyGILState_Ensure();
  PyFrameObject* f = PyEval_GetFrame();  // borrowed
  Py_XINCREF(f);
  while (f != nullptr && frames->size() < graph::kMaxFrames) {
    PyCodeObject* code = PyFrame_GetCode(f);
    const auto offset = static_cast<uint32_t>(PyFrame_GetLasti(f));
    frames->push_back(graph::Frame{CodeId(code), offset});
    Py_DECREF(code);
    PyFrameObject* back = PyFrame_GetBack(f);
    Py_DECREF(f);
    f = back;
  }
  Py_XDECREF(f);
  PyGILState_Release(gil);
  std::reverse(frames->begin(), frames->end());
}

#endif

std::string PythonFrames::Describe(const std::vector<graph::Frame>& frames) {
  if (frames.empty()) return "no Python frame";
  const graph::Frame* chosen = nullptr;
  const Code* chosen_code = nullptr;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = frames.rbegin(); it != frames.rend(); ++it) {
    auto c = codes_.find(it->code_id);
    if (c == codes_.end()) continue;
    if (chosen == nullptr) {
      chosen = &*it;  // the innermost frame, unless the program's own code is found
      chosen_code = &c->second;
    }
    if (!c->second.library) {
      chosen = &*it;
      chosen_code = &c->second;
      break;
    }
  }
  if (chosen == nullptr) return graph::ShortLocation(graph::Location{frames, {}, 0, 0});
  const int line = PyCode_Addr2Line(static_cast<PyCodeObject*>(chosen_code->object),
                                    static_cast<int>(chosen->offset));
  std::string file = chosen_code->file;
  if (!cwd_.empty() && file.size() > cwd_.size() + 1 && file.compare(0, cwd_.size(), cwd_) == 0 &&
      file[cwd_.size()] == '/') {
    file = file.substr(cwd_.size() + 1);
  }
  return file + ":" + std::to_string(line) + " in " + chosen_code->name;
}

}  // namespace terra::python
