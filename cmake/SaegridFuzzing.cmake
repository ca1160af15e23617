# The fuzzing configuration (-DSAEGRID_BUILD_FUZZERS=ON): clang's libFuzzer with AddressSanitizer
# and UndefinedBehaviorSanitizer on every library built here. UB aborts (no recovery), so that
# libFuzzer records the input. scripts/fuzz.sh configures and runs it.
if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  message(FATAL_ERROR "saegrid: SAEGRID_BUILD_FUZZERS needs clang (-DCMAKE_CXX_COMPILER=clang++); "
                      "install the Debian packages 'clang' and 'libclang-rt-14-dev' (scripts/install-deps.sh).")
endif()

include(CheckCXXSourceCompiles)
set(CMAKE_REQUIRED_FLAGS "-fsanitize=fuzzer,address,undefined")
set(CMAKE_REQUIRED_LINK_OPTIONS "-fsanitize=fuzzer,address,undefined")
check_cxx_source_compiles(
  "#include <cstdint>\n#include <cstddef>\nextern \"C\" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }"
  SAEGRID_HAVE_LIBFUZZER)
unset(CMAKE_REQUIRED_FLAGS)
unset(CMAKE_REQUIRED_LINK_OPTIONS)
saegrid_require(SAEGRID_HAVE_LIBFUZZER "clang's libFuzzer runtime" "libclang-rt-14-dev")

add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
                    -fno-omit-frame-pointer)
add_link_options(-fsanitize=address,undefined)
