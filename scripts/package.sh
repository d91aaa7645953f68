#!/usr/bin/env bash
# Builds what a cluster needs to run the jobs (README.md, "Running on a cluster"):
#   dist/mtl-<version>.zip              the mtl package, for spark-submit --py-files
#   dist/mtl-env-<profile>.tar.gz       a packed virtual environment (venv-pack), for
#                                       --archives dist/mtl-env-<profile>.tar.gz#environment
# Profiles: "full" (default) is the pinned stack of setup.cfg, what the executors import when
# they evaluate, score and train (torch, horovod, ...); "spark" is only what the Spark-side jobs'
# executors import (numpy, pandas, pyarrow, pyyaml), a tenth of the size.
# The environment is built from .venv/pins.txt (written by `make setup`) into a fresh venv, so
# nothing editable or test-only is packed; it is cached under ~/.cache/mtl-recsys/envs keyed by
# the pins and this script, and rebuilt only when they change. The target machines need the same
# Python 3.11 at the same path as this one (venv-pack keeps the interpreter outside the archive).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MTL_VENV:-$ROOT/.venv}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/mtl-recsys
PROFILE=full
OUT=$ROOT/dist

say() { printf '[package] %s\n' "$*" >&2; }
die() { printf '[package] error: %s\n' "$*" >&2; exit 1; }
usage() {
  sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  echo "usage: $0 [--profile full|spark] [--out DIR]"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE=${2:?--profile needs a value}; shift 2 ;;
    --out) OUT=${2:?--out needs a folder}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
case "$PROFILE" in full|spark) ;; *) die "--profile must be full or spark, got $PROFILE" ;; esac
[ -f "$VENV/pins.txt" ] || die "$VENV/pins.txt not found: run \`make setup\` first"
PYTHON=$(readlink -f "$VENV/bin/python")
mkdir -p "$OUT"

version=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mtl-recsys"))')
zip_path="$OUT/mtl-$version.zip"
"$VENV/bin/python" - "$ROOT" "$zip_path" <<'PY'
import pathlib, sys, zipfile
root, out = pathlib.Path(sys.argv[1]), sys.argv[2]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for path in sorted((root / "mtl").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            z.write(path, path.relative_to(root))
PY
say "built $zip_path"

# Requirements of the profile: the pins, with the cluster's own Spark left out (its python/lib
# zips come first on the executors' PYTHONPATH) and Horovod from the wheel `make setup` built.
reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
if [ "$PROFILE" = spark ]; then
  grep -Ei '^(numpy|pandas|pyarrow|pyyaml)==' "$VENV/pins.txt" > "$reqs"
else
  grep -Evi '^(pyspark|delta-spark|pytest|pytest-xdist|execnet|ruff|psutil|scikit-learn|venv-pack)==' "$VENV/pins.txt" > "$reqs"
  horovod=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("horovod"))')
  wheel=$(ls "$CACHE"/wheels/horovod-*/horovod-"$horovod"-*.whl 2>/dev/null | head -1 || true)
  [ -n "$wheel" ] || die "no cached Horovod $horovod wheel under $CACHE/wheels: run \`make setup\`"
  echo "$wheel" >> "$reqs"
fi
key=$(cat "$reqs" "${BASH_SOURCE[0]}" <(echo "$PYTHON") | sha256sum | cut -c1-16)
cached="$CACHE/envs/mtl-env-$PROFILE-$key.tar.gz"
archive="$OUT/mtl-env-$PROFILE.tar.gz"

if [ ! -f "$cached" ]; then
  build=$(mktemp -d)
  trap 'rm -f "$reqs"; rm -rf "$build"' EXIT
  say "building the $PROFILE environment ($(wc -l < "$reqs") pinned requirements; minutes for full)"
  "$PYTHON" -m venv "$build/env"
  "$build/env/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
  [ -x "$VENV/bin/venv-pack" ] || die "venv-pack not found in $VENV: run \`make setup\`"
  mkdir -p "$CACHE/envs"
  say "packing it (venv-pack)"
  "$VENV/bin/venv-pack" -p "$build/env" -o "$cached.tmp" --format tar.gz --compress-level 1 -q \
    --exclude 'lib/python3.11/site-packages/pip/*' --exclude '*/__pycache__/*'
  chmod 644 "$cached.tmp"
  mv "$cached.tmp" "$cached"
else
  say "using the cached $PROFILE environment $cached"
fi
# A hard link where dist/ and the cache share a file system, else a copy: never a symlink, which
# would dangle once dist/ is copied to another machine.
rm -f "$archive"
ln "$cached" "$archive" 2>/dev/null || cp "$cached" "$archive"
say "built $archive ($(du -h "$cached" | cut -f1))"
echo "$archive"
