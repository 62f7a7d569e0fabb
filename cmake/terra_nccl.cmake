# The NCCL backend's build option and dependencies (comm/nccl_communicator.h).
#
# TERRA_WITH_NCCL defaults to ON when the CUDA toolkit (nvcc, cudart) and NCCL
# >= 2.14 (ncclCommInitRankConfig, non-blocking communicators) are found, else
# OFF with a STATUS line saying what is missing. ON then defines:
#   terra::nccl   NCCL's header and library (an imported target)
#   the CUDA language (comm/nccl_kernels.cu), shared cudart like Torch's
# OFF builds comm/nccl_unavailable.cc instead: the option adds files, never an
# #if inside a function.
#
# Which NCCL: the nvidia-nccl-cu* wheel that Python3_EXECUTABLE's torch loads,
# then the toolkit's and the system's. A process that imports torch has loaded
# that wheel's libnccl.so.2 before terra._C, and the dynamic loader resolves
# our libnccl.so.2 (same soname) to it: linking the same copy keeps its
# headers (ncclConfig_t's layout, NCCL_VERSION_CODE) and its library in step.
# Override with -DTERRA_NCCL_INCLUDE_DIR=... -DTERRA_NCCL_LIBRARY=....
include_guard(GLOBAL)

find_package(CUDAToolkit QUIET)

execute_process(
  COMMAND ${Python3_EXECUTABLE} -c "import nvidia.nccl as m; print(list(m.__path__)[0])"
  OUTPUT_VARIABLE terra_nccl_wheel OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE terra_nccl_wheel_rc ERROR_QUIET)
if(terra_nccl_wheel_rc EQUAL 0 AND EXISTS "${terra_nccl_wheel}/include/nccl.h")
  find_path(TERRA_NCCL_INCLUDE_DIR nccl.h PATHS ${terra_nccl_wheel}/include NO_DEFAULT_PATH)
  find_library(TERRA_NCCL_LIBRARY NAMES nccl libnccl.so.2 PATHS ${terra_nccl_wheel}/lib
               NO_DEFAULT_PATH)
endif()
find_path(TERRA_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
find_library(TERRA_NCCL_LIBRARY NAMES nccl libnccl.so.2 HINTS ${CUDAToolkit_LIBRARY_DIR})

set(terra_nccl_missing "")
if(NOT CUDAToolkit_FOUND OR NOT CUDAToolkit_NVCC_EXECUTABLE)
  set(terra_nccl_missing "the CUDA toolkit (nvcc, cudart)")
elseif(NOT TERRA_NCCL_INCLUDE_DIR OR NOT TERRA_NCCL_LIBRARY)
  set(terra_nccl_missing "NCCL (nccl.h and libnccl.so.2: pip install nvidia-nccl-cu13, or the toolkit's)")
else()
  file(STRINGS ${TERRA_NCCL_INCLUDE_DIR}/nccl.h terra_nccl_defines
       REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) +[0-9]+")
  string(REGEX REPLACE ".*NCCL_MAJOR +([0-9]+).*NCCL_MINOR +([0-9]+).*NCCL_PATCH +([0-9]+).*"
         "\\1.\\2.\\3" TERRA_NCCL_VERSION "${terra_nccl_defines}")
  if(TERRA_NCCL_VERSION VERSION_LESS 2.14)
    set(terra_nccl_missing "NCCL >= 2.14 (found ${TERRA_NCCL_VERSION} in ${TERRA_NCCL_INCLUDE_DIR})")
  endif()
endif()
if(terra_nccl_missing STREQUAL "")
  set(terra_nccl_default ON)
else()
  set(terra_nccl_default OFF)
endif()

option(TERRA_WITH_NCCL "Build the NCCL backend for CUDA buffers (needs the CUDA toolkit and NCCL)"
       ${terra_nccl_default})

if(NOT TERRA_WITH_NCCL)
  if(terra_nccl_missing STREQUAL "")
    message(STATUS "NCCL backend: off (TERRA_WITH_NCCL=OFF)")
  else()
    message(STATUS "NCCL backend: off, ${terra_nccl_missing} not found")
  endif()
  return()
endif()
if(NOT terra_nccl_missing STREQUAL "")
  message(FATAL_ERROR "TERRA_WITH_NCCL is ON but ${terra_nccl_missing} was not found: install it, "
                      "or configure with -DTERRA_WITH_NCCL=OFF")
endif()
message(STATUS "NCCL backend: NCCL ${TERRA_NCCL_VERSION}, ${TERRA_NCCL_LIBRARY}; "
               "CUDA ${CUDAToolkit_VERSION}")

add_library(terra::nccl INTERFACE IMPORTED GLOBAL)
target_include_directories(terra::nccl SYSTEM INTERFACE ${TERRA_NCCL_INCLUDE_DIR})
target_link_libraries(terra::nccl INTERFACE ${TERRA_NCCL_LIBRARY})

# One small kernel (nccl_kernels.cu): real code for the datacenter GPUs, PTX
# of the newest for the rest.
if(NOT CMAKE_CUDA_COMPILER)
  set(CMAKE_CUDA_COMPILER ${CUDAToolkit_NVCC_EXECUTABLE})
endif()
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  if(CUDAToolkit_VERSION VERSION_GREATER_EQUAL 12.8)
    set(CMAKE_CUDA_ARCHITECTURES 75-real 80-real 90-real 100-real 120)
  else()
    set(CMAKE_CUDA_ARCHITECTURES 70-real 75-real 80)
  endif()
endif()
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)  # the libcudart.so.* that Torch loads, not a second copy
if(TERRA_CCACHE)
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${TERRA_CCACHE})
endif()
enable_language(CUDA)
