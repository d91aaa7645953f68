#!/usr/bin/env bash
# Creates the project's virtual environment (.venv) with the pinned stack from setup.cfg.
# Horovod is built once from its PyPI source by scripts/build_horovod.sh (C++17, Gloo; NCCL too
# with MTL_HOROVOD_GPU=1 on a CUDA machine) and its wheel cached under ~/.cache/mtl-recsys, keyed
# by the versions it was built against and by the build script itself. Safe to run again: it does nothing when the environment is up to date.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MTL_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3.11}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/mtl-recsys
HOROVOD_GPU=${MTL_HOROVOD_GPU:-0}
# A change to how Horovod is built gives cached wheels a new key, so they are rebuilt.
HOROVOD_RECIPE=$(sha256sum "$ROOT/scripts/build_horovod.sh" | cut -c1-8)

say() { printf '[bootstrap] %s\n' "$*" >&2; }
die() { printf '[bootstrap] error: %s\n' "$*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null || die "$PYTHON not found: Python 3.11 is required (set PYTHON=/path/to/python3.11)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || die "$PYTHON is not Python 3.11"
command -v java >/dev/null || die "java not found: Spark 4 needs Java 17 (e.g. apt-get install openjdk-17-jre-headless)"
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
[ "${java_major:-0}" -ge 17 ] || die "Java 17 or newer is required, found ${java_major:-unknown}"
command -v cmake >/dev/null && command -v g++ >/dev/null || die "cmake and g++ are needed to build Horovod (apt-get install cmake g++)"

stamp_key=$(cat "$ROOT/setup.cfg" "$ROOT/scripts/bootstrap.sh" "$ROOT/scripts/build_horovod.sh" | sha256sum | cut -c1-16)-gpu$HOROVOD_GPU
stamp="$VENV/.bootstrap-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_key" ]; then
  say "environment $VENV is up to date"
  exit 0
fi

say "creating $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip wheel "setuptools==80.10.2"

pins() {  # pinned requirements from setup.cfg; "$1" = extra names to leave out, regex
  "$VENV/bin/python" - "$ROOT/setup.cfg" "$1" <<'PY'
import configparser, re, sys
cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
reqs = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
reqs += [r.strip() for r in cfg["options.extras_require"]["test"].splitlines() if r.strip()]
print("\n".join(r for r in reqs if not re.match(sys.argv[2], r)))
PY
}
say "installing the pinned stack (PySpark, Delta, PyTorch, Petastorm, ...)"
pins '^horovod\b' > "$VENV/pins.txt"
"${PIP[@]}" install -q -r "$VENV/pins.txt"

torch_version=$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
horovod_pin=$(pins '^(?!horovod\b)' | sed 's/.*==//')
wheel_dir="$CACHE/wheels/horovod-${horovod_pin}_torch-${torch_version}_cp311_gpu${HOROVOD_GPU}_r${HOROVOD_RECIPE}"
if ! ls "$wheel_dir"/horovod-*.whl >/dev/null 2>&1; then
  say "building Horovod $horovod_pin against torch $torch_version (a few minutes; cached in $wheel_dir)"
  HOROVOD_VERSION=$horovod_pin bash "$ROOT/scripts/build_horovod.sh" "$VENV/bin/python" "$wheel_dir"
else
  say "using cached Horovod wheel from $wheel_dir"
fi

say "installing Horovod and this project (editable)"
"${PIP[@]}" install -q --find-links "$wheel_dir" --only-binary horovod -e "$ROOT[test]"

check=$("$VENV/bin/horovodrun" --check-build)
echo "$check" | grep -q '\[X\] PyTorch' || die "Horovod was built without PyTorch support:"$'\n'"$check"
echo "$check" | grep -q '\[X\] Gloo' || die "Horovod was built without Gloo:"$'\n'"$check"
if [ "$HOROVOD_GPU" = 1 ]; then
  echo "$check" | grep -q '\[X\] NCCL' || die "Horovod was built without NCCL:"$'\n'"$check"
fi
echo "$stamp_key" > "$stamp"
say "ready: $VENV (Horovod with PyTorch and Gloo)"
