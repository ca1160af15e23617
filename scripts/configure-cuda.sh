#!/usr/bin/env bash
# Configures a build against a CUDA LibTorch, the same way for the GPU machine's check
# (scripts/gpu-check.sh) and the CUDA worker image (deploy/docker/Dockerfile.worker-cuda):
# LibTorch's CMake package, nvcc, sm_90a with PTX, and NCCL wherever this machine has it.
#   scripts/configure-cuda.sh BUILD_DIR [CMAKE_ARGS...]
# Environment:
#   SAEGRID_TORCH_PREFIX  LibTorch's CMake prefix (default: python3's torch.utils.cmake_prefix_path,
#                         else /opt/libtorch, else CMake's own search: Debian's CPU LibTorch)
#   SAEGRID_EXTRA_PREFIX  more CMAKE_PREFIX_PATH entries (';'-separated), e.g. unpacked Debian packages
#   SAEGRID_NCCL_HOME     a directory with include/nccl.h and lib/libnccl.so* (default: python3's
#                         nvidia.nccl wheel, else CUDA's and the system's own directories)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:?usage: configure-cuda.sh BUILD_DIR [CMAKE_ARGS...]}
shift

torch_prefix=${SAEGRID_TORCH_PREFIX:-}
if [[ -z "$torch_prefix" ]]; then
  torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null || true)
fi
if [[ -z "$torch_prefix" && -d /opt/libtorch ]]; then torch_prefix=/opt/libtorch; fi
prefixes="$torch_prefix"
if [[ -n "${SAEGRID_EXTRA_PREFIX:-}" ]]; then prefixes="${SAEGRID_EXTRA_PREFIX};${prefixes}"; fi

args=(-G Ninja -DCMAKE_BUILD_TYPE="${SAEGRID_BUILD_TYPE:-Release}" "-DCMAKE_PREFIX_PATH=${prefixes}")
nvcc=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
if [[ -x "$nvcc" ]]; then
  args+=("-DCMAKE_CUDA_COMPILER=$nvcc")
  # LibTorch's CUDA config compiles for TORCH_CUDA_ARCH_LIST (else it probes the GPUs); saegrid's
  # own kernels set their architectures themselves (kernels/cuda/CMakeLists.txt).
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
fi

nccl_home=${SAEGRID_NCCL_HOME:-}
if [[ -z "$nccl_home" ]]; then
  nccl_home=$(python3 -c 'import nvidia.nccl, os; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null || true)
fi
if [[ -n "$nccl_home" && -f "$nccl_home/include/nccl.h" ]]; then
  library=$(ls "$nccl_home"/lib/libnccl.so* 2>/dev/null | head -n 1 || true)
  if [[ -n "$library" ]]; then
    # A wheel ships libnccl.so.2 only; find_library wants the unversioned name.
    mkdir -p "$build/nccl"
    ln -sf "$library" "$build/nccl/libnccl.so"
    args+=("-DSAEGRID_NCCL_INCLUDE_DIR=$nccl_home/include" "-DSAEGRID_NCCL_LIBRARY=$build/nccl/libnccl.so")
  fi
fi

echo "saegrid: configuring $build against LibTorch at ${torch_prefix:-the default CMake search}"
cmake -S "$root" -B "$build" "${args[@]}" "$@"
