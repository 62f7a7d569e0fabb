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
    # Listing loads LibTorch: over the default 5 s on a cold, loaded CI machine.
    DISCOVERY_TIMEOUT 60
    PROPERTIES TIMEOUT 120)
  # Labels after discovery: gtest_discover_tests flattens a list-valued
  # property (LABELS "unit;gpu" would set LABELS=unit and a property "gpu").
  set(labels_script ${CMAKE_CURRENT_BINARY_DIR}/${name}_labels.cmake)
  file(WRITE ${labels_script}
    "if(${name}_TESTS)\n"
    "  set_tests_properties(\${${name}_TESTS} PROPERTIES LABELS \"unit;${ARG_LABELS}\")\n"
    "endif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${labels_script})
endfunction()
