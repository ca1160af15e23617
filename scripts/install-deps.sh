#!/usr/bin/env bash
# Installs every Debian package saegrid needs to build, test and run. Idempotent: packages
# already present are skipped, so a second run costs one dpkg query.
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git
  # the fuzzers (scripts/fuzz.sh, part of `make test`): clang with libFuzzer and the sanitizers
  clang libclang-rt-14-dev
  # engine: LibTorch (CPU) with c10d/Gloo, and a fast BLAS (without it fp32 GEMM is ~50x slower)
  libtorch-dev libgloo-dev libopenblas0-openmp libopenblas-openmp-dev
  # control plane
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto
  libabsl-dev libsqlite3-dev sqlite3 libssl-dev openssl
  # observability
  prometheus-cpp-dev prometheus
  # config parsing and tests
  nlohmann-json3-dev libyaml-cpp-dev libgtest-dev libgmock-dev libbenchmark-dev
  # helpers used by scripts and tests
  python3 python3-numpy python3-grpcio python3-protobuf python3-kubernetes python3-yaml jq
  # `saegrid eval`'s PNG figures (docs/evaluations.md)
  gnuplot-nox
  # deployment checks: promtool (prometheus), docker-compose config; `kubectl kustomize` uses the
  # kubectl of the base image (not in Debian's archive)
  docker-compose
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
