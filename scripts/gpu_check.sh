#!/usr/bin/env bash
# A short GPU-node check, run on a lent CUDA machine that has python3 with a CUDA torch but no
# network: builds Horovod with NCCL by scripts/build_horovod.sh from a carried source tarball,
# checks the build, and runs a NCCL allreduce on the GPU.
#   scripts/gpu_check.sh DIR   (DIR holds horovod-*.tar.gz and wheels of its small dependencies)
set -uo pipefail
DIR=$1
PY=$(command -v python3)
WORK=$(mktemp -d)
SITE=$WORK/site
echo "== python: $PY ($($PY --version 2>&1)); $($PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))')"
PIP=("$PY" -m pip)
"$PY" -m pip --version >/dev/null 2>&1 || PIP=(env PYTHONPATH=/usr/local/lib/python3.12/dist-packages "$PY" -m pip)
"${PIP[@]}" install -q --no-index --find-links "$DIR" --target "$SITE" cloudpickle psutil pyyaml packaging cffi pycparser setuptools==80.10.2 wheel || exit 1
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
WHEELS=${HVD_WHEELS:-/tmp/mtl-horovod-gpu-wheels}  # kept between calls while the machine is warm
if ! ls "$WHEELS"/horovod-*.whl >/dev/null 2>&1; then
  echo "== building Horovod with NCCL"
  start=$(date +%s)
  HOROVOD_BUILD_CUDA_CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-90} MTL_HOROVOD_GPU=1 \
    bash scripts/build_horovod.sh "$PY" "$WHEELS" "$(echo "$DIR"/horovod-*.tar.gz)" > "$WORK/build.log" 2>&1 \
    || { grep -E "error:|fatal error" "$WORK/build.log" | grep -v "^ *File" | sort -u | head -15; exit 1; }
  echo "built in $(( $(date +%s) - start ))s: $(ls "$WHEELS")"
fi
"${PIP[@]}" install -q --upgrade --no-deps --target "$SITE" "$WHEELS"/horovod-*.whl || exit 1
export PATH=$SITE/bin:$PATH
horovodrun --check-build
cat > "$WORK/allreduce.py" <<'PY'
import time, torch, horovod.torch as hvd
hvd.init()
torch.cuda.set_device(hvd.local_rank())
x = torch.full((64 * 1024 * 1024,), float(hvd.rank() + 1), device="cuda")  # 256 MiB fp32
out = hvd.allreduce(x, op=hvd.Sum)
torch.cuda.synchronize()
expected = sum(range(1, hvd.size() + 1))
assert torch.all(out == expected), out[:4]
t = time.perf_counter()
for _ in range(20):
    out = hvd.allreduce(x, op=hvd.Sum)
torch.cuda.synchronize()
dt = (time.perf_counter() - t) / 20
print(f"rank {hvd.rank()}/{hvd.size()} NCCL built={hvd.nccl_built()} allreduce 256 MiB: {dt * 1e3:.2f} ms ({x.numel() * 4 / dt / 1e9:.1f} GB/s algorithmic)")
PY
horovodrun -np 1 -H localhost:1 "$PY" "$WORK/allreduce.py"
