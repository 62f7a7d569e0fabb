# terra_add_gtest(<name> SOURCES <files...> LIBS <targets...> [LABELS <labels...>])
# One GoogleTest executable per unit, registered with CTest test by test.
# Labels: "mpi", "nccl", "gpu", "multirank" mark tests that need hardware or
# several processes; they skip themselves where it is missing.
include_guard(GLOBAL)
include(GoogleTest)

function(terra_add_gtest name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS;LABELS" ${ARGN})
  find_package(GTest REQUIRED)
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} GTest::gtest GTest::gtest_main Threads::Threads)
  gtest_discover_tests(${name}
    DISCOVERY_MODE PRE_TEST
    PROPERTIES LABELS "unit;${ARG_LABELS}" TIMEOUT 120)
endfunction()
