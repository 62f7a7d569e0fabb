# Torch from the pinned wheel installed in Python3_EXECUTABLE (LibTorch is the
# C++ library inside it). Defines two imported targets:
#   terra::torch         c10 + torch_cpu headers and libraries (ATen)
#   terra::torch_python  plus libtorch_python: the pybind11 casters for tensors
# Only targets that need tensors link them (runtime/, python/): terrarun and
# comm/ never do, and few translation units include ATen (docs/architecture.md).
include_guard(GLOBAL)

execute_process(
  COMMAND ${Python3_EXECUTABLE} -c
    "import os, torch; d = os.path.dirname(torch.__file__); print(d + ';' + str(int(torch.compiled_with_cxx11_abi())))"
  OUTPUT_VARIABLE torch_probe OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE torch_probe_rc)
if(NOT torch_probe_rc EQUAL 0)
  message(FATAL_ERROR "terra needs PyTorch installed in ${Python3_EXECUTABLE}: run scripts/install_deps.sh")
endif()
list(GET torch_probe 0 TERRA_TORCH_DIR)
list(GET torch_probe 1 TERRA_TORCH_CXX11_ABI)
set(TERRA_TORCH_INCLUDE ${TERRA_TORCH_DIR}/include)
set(TERRA_TORCH_LIB ${TERRA_TORCH_DIR}/lib)

function(terra_torch_library target)
  foreach(lib IN LISTS ARGN)
    if(NOT EXISTS ${TERRA_TORCH_LIB}/lib${lib}.so)
      message(FATAL_ERROR "${TERRA_TORCH_LIB}/lib${lib}.so is missing: reinstall torch")
    endif()
    list(APPEND paths ${TERRA_TORCH_LIB}/lib${lib}.so)
  endforeach()
  add_library(${target} INTERFACE IMPORTED GLOBAL)
  target_include_directories(${target} SYSTEM INTERFACE ${TERRA_TORCH_INCLUDE})
  target_compile_definitions(${target} INTERFACE _GLIBCXX_USE_CXX11_ABI=${TERRA_TORCH_CXX11_ABI})
  target_link_libraries(${target} INTERFACE ${paths})
endfunction()

terra_torch_library(terra::torch c10 torch_cpu)
terra_torch_library(terra::torch_python c10 torch_cpu torch_python)
