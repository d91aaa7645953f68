#!/usr/bin/env bash
# Builds a Horovod wheel from its PyPI source against the torch installed for PYTHON.
#   scripts/build_horovod.sh PYTHON OUT_DIR [SDIST]
# Horovod's CMake files ask for C++14; PyTorch >= 2.1 headers need C++17, so the source is
# patched. CPU collectives use Gloo; MTL_HOROVOD_GPU=1 (on a CUDA machine) adds NCCL, with
# kernels for HOROVOD_BUILD_CUDA_CC_LIST (e.g. 90 for H100/H200; default: every arch nvcc knows).
# SDIST is a horovod-X.tar.gz already on disk; without it the pinned version is downloaded.
set -euo pipefail
PYTHON=$1 OUT=$2 SDIST=${3:-}
VERSION=${HOROVOD_VERSION:-0.28.1}

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
if [ -z "$SDIST" ]; then
  "$PYTHON" -m pip download -q --no-deps --no-binary :all: "horovod==$VERSION" -d "$build"
  SDIST=$(echo "$build"/horovod-*.tar.gz)
fi
tar -xzf "$SDIST" -C "$build"
src=$(echo "$build"/horovod-*/)
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
# CUDA >= 13 (its CCCL headers) needs C++17 for the NCCL build's kernels too.
sed -i 's/set(CMAKE_CUDA_STANDARD 11)/set(CMAKE_CUDA_STANDARD 17)/' "$src/horovod/common/ops/cuda/CMakeLists.txt"
grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt" || { echo "C++17 patch did not apply" >&2; exit 1; }

# Newer g++ (13+) no longer pulls standard headers in transitively; Horovod relies on that.
export CXXFLAGS="${CXXFLAGS:-}$(printf -- " -include %s" cstdint string stdexcept memory algorithm limits functional)"
gpu_env=()
[ "${MTL_HOROVOD_GPU:-0}" = 1 ] && gpu_env=(HOROVOD_GPU_OPERATIONS=NCCL)
env HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
    HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_CPU_OPERATIONS=GLOO \
    CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$(nproc)" "${gpu_env[@]}" \
    "$PYTHON" -m pip wheel -q --no-build-isolation --no-deps -w "$build/dist" "$src"
mkdir -p "$OUT"
cp "$build"/dist/horovod-*.whl "$OUT/"
