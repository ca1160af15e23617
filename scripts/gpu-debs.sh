#!/usr/bin/env bash
# Downloads, on a machine with Debian's archive, the Debian packages the engine needs that the
# GPU machine lacks (it has a CUDA LibTorch, nvcc, cmake and ninja, and no network): Abseil,
# nlohmann-json and GoogleTest, into .gpu-debs/ (git-ignored), which the device call carries and
# scripts/gpu-check.sh unpacks into a private prefix. Gloo's headers are not among them: a CUDA
# LibTorch is checked for its own (cmake/SaegridDependencies.cmake).
#   scripts/gpu-debs.sh [DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/.gpu-debs}
packages=(libabsl-dev libabsl20220623 nlohmann-json3-dev libgtest-dev libgmock-dev)
mkdir -p "$dir"
cd "$dir"
rm -f ./*.deb
apt-get download "${packages[@]}"
ls -l ./*.deb
du -sh .
