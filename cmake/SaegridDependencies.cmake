# Finds every dependency and, when one is missing, stops with the Debian package to install.
# scripts/install-deps.sh installs all of them.

macro(saegrid_require found_var what debian_package)
  if(NOT ${found_var})
    message(FATAL_ERROR
      "saegrid: ${what} not found. Install the Debian package '${debian_package}' "
      "(or run scripts/install-deps.sh, which installs everything saegrid needs).")
  endif()
endmacro()

# The fuzzing configuration builds only the torch-free parsers (cmake/SaegridFuzzing.cmake).
if(NOT SAEGRID_BUILD_FUZZERS)
  find_package(Torch QUIET)
  saegrid_require(Torch_FOUND "LibTorch (TorchConfig.cmake)" "libtorch-dev")
  # Debian's LibTorch links the system BLAS; the reference BLAS is ~50x slower than OpenBLAS.
  # A CUDA build of LibTorch (a pip wheel's, on a GPU machine) imports c10_cuda and sets
  # CAFFE2_USE_CUDA; Debian's CPU build defines neither. With it, kernels/cuda/ is built into the
  # engine; the CUDA language is enabled here, at the top, because every target links it.
  if(TARGET c10_cuda OR TARGET torch_cuda OR CAFFE2_USE_CUDA)
    set(SAEGRID_TORCH_HAS_CUDA ON)
    enable_language(CUDA)
  else()
    set(SAEGRID_TORCH_HAS_CUDA OFF)
  endif()
  if(EXISTS /usr/lib/x86_64-linux-gnu/libtorch.so AND
     NOT EXISTS /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3 AND
     NOT EXISTS /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3)
    message(FATAL_ERROR "saegrid: OpenBLAS not found; LibTorch would fall back to the reference BLAS "
                        "(~50x slower). Install the Debian package 'libopenblas0-openmp'.")
  endif()
endif()

find_package(absl CONFIG QUIET)
saegrid_require(absl_FOUND "Abseil (abslConfig.cmake)" "libabsl-dev")

find_package(nlohmann_json 3 QUIET)
saegrid_require(nlohmann_json_FOUND "nlohmann-json (nlohmann_jsonConfig.cmake)" "nlohmann-json3-dev")

find_package(Threads REQUIRED)

if(SAEGRID_BUILD_SERVICE OR SAEGRID_BUILD_FUZZERS)
  find_package(Protobuf QUIET)
  saegrid_require(Protobuf_FOUND "Protocol Buffers (libprotobuf + protoc)" "libprotobuf-dev protobuf-compiler")
  find_package(gRPC CONFIG QUIET)
  saegrid_require(gRPC_FOUND "gRPC C++ (gRPCConfig.cmake)" "libgrpc++-dev protobuf-compiler-grpc")
  find_package(yaml-cpp QUIET)
  saegrid_require(yaml-cpp_FOUND "yaml-cpp (yaml-cpp-config.cmake)" "libyaml-cpp-dev")
endif()
if(SAEGRID_BUILD_SERVICE AND NOT SAEGRID_BUILD_FUZZERS)
  find_package(SQLite3 QUIET)
  saegrid_require(SQLite3_FOUND "SQLite 3" "libsqlite3-dev")
  find_package(OpenSSL QUIET)
  saegrid_require(OpenSSL_FOUND "OpenSSL (libcrypto, for SHA-256)" "libssl-dev")
  find_package(prometheus-cpp CONFIG QUIET)
  saegrid_require(prometheus-cpp_FOUND "prometheus-cpp (core)" "prometheus-cpp-dev")
endif()

if(SAEGRID_BUILD_TESTS AND NOT SAEGRID_BUILD_FUZZERS)
  find_package(GTest QUIET)
  saegrid_require(GTest_FOUND "GoogleTest" "libgtest-dev libgmock-dev")
endif()

if(NOT SAEGRID_BUILD_FUZZERS)
  # Collective backends. Gloo is required where its headers are packaged (Debian: libgloo-dev);
  # a LibTorch without them (e.g. a pip wheel on a GPU box) builds without the Gloo backend.
  include(CheckIncludeFileCXX)
  # Debian's LibTorch needs Debian's Gloo headers; another LibTorch may ship its own beside its
  # headers, and without any the engine builds without the Gloo backend.
  find_path(SAEGRID_GLOO_INCLUDE_DIR gloo/algorithm.h HINTS ${TORCH_INCLUDE_DIRS})
  if(SAEGRID_GLOO_INCLUDE_DIR)
    set(SAEGRID_WITH_GLOO ON)
  elseif(Torch_DIR MATCHES "^/usr/lib")
    saegrid_require(SAEGRID_GLOO_INCLUDE_DIR "Gloo headers (gloo/algorithm.h)" "libgloo-dev")
  else()
    message(STATUS "saegrid: no Gloo headers beside this LibTorch: the Gloo backend is not built")
  endif()

  # NCCL: built when the CUDA toolkit and NCCL are found (e.g. /usr/local/cuda).
  option(SAEGRID_ENABLE_NCCL "Build the NCCL backend when CUDA and NCCL are found" ON)
  if(SAEGRID_ENABLE_NCCL)
    find_package(CUDAToolkit QUIET)
    find_path(SAEGRID_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
    find_library(SAEGRID_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64)
    if(CUDAToolkit_FOUND AND SAEGRID_NCCL_INCLUDE_DIR AND SAEGRID_NCCL_LIBRARY)
      set(SAEGRID_WITH_NCCL ON)
      message(STATUS "saegrid: NCCL backend enabled (${SAEGRID_NCCL_LIBRARY})")
    else()
      message(STATUS "saegrid: NCCL backend disabled (CUDA toolkit or NCCL not found)")
    endif()
  endif()
endif()
