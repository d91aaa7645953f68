#!/usr/bin/env bash
# Creates Airflow's own virtual environment (.venv-airflow): Airflow 3 with the Apache Spark
# provider, apart from the project's .venv as in production (the provider pulls pyspark-client,
# which would overwrite parts of the full PySpark install in .venv). The DAG's tasks run the
# project's spark-submit; Airflow itself needs neither PySpark nor PyTorch to parse the DAG.
#
# Pinned: the two top-level packages below, and every package they pull in by the lock at the
# end of this file (Airflow's constraints approach: its official constraints files live on
# GitHub, so this lock was made from a verified install here: `pip check` clean, the DAG parsed
# and run). To move to other versions: change the pins, run `scripts/bootstrap_airflow.sh
# --relock` (installs the pins unconstrained into a scratch environment and prints a new lock),
# paste its output over the lock, run tests/test_airflow_dag.py.
#
# Safe to run again: it does nothing when the environment was made by this very file (a stamp
# keyed on its hash); any change to the file rebuilds the environment from scratch. Wheels come
# from pip's cache after the first time (PIP_CACHE_DIR, default ~/.cache/pip).
#
#   scripts/bootstrap_airflow.sh            # create or check .venv-airflow (MTL_AIRFLOW_VENV moves it)
#   scripts/bootstrap_airflow.sh --relock   # print a fresh lock for the pins
set -euo pipefail

AIRFLOW_VERSION=3.3.2
SPARK_PROVIDER_VERSION=6.3.4

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT="$ROOT/scripts/bootstrap_airflow.sh"
VENV=${MTL_AIRFLOW_VENV:-$ROOT/.venv-airflow}
PYTHON=${PYTHON:-python3.11}
PINS=("apache-airflow==$AIRFLOW_VERSION" "apache-airflow-providers-apache-spark==$SPARK_PROVIDER_VERSION")
STARTED=$SECONDS

say() { printf '[bootstrap-airflow] %s\n' "$*" >&2; }
die() { printf '[bootstrap-airflow] error: %s\n' "$*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null || die "$PYTHON not found: Python 3.11 is required (set PYTHON=/path/to/python3.11)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || die "$PYTHON is not Python 3.11"

if [ "${1:-}" = "--relock" ]; then
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  say "installing ${PINS[*]} without the lock into $scratch"
  "$PYTHON" -m venv "$scratch/venv"
  "$scratch/venv/bin/python" -m pip install -q --disable-pip-version-check "${PINS[@]}"
  "$scratch/venv/bin/python" -m pip check >&2
  "$scratch/venv/bin/python" -m pip freeze --all --disable-pip-version-check | grep -viE '^(pip|setuptools|wheel)=='
  say "done in $((SECONDS - STARTED))s: paste the lines above over the lock at the end of $SCRIPT"
  exit 0
fi

stamp_key=$(sha256sum "$SCRIPT" | cut -c1-16)
stamp="$VENV/.bootstrap-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_key" ] && [ -x "$VENV/bin/airflow" ]; then
  say "Airflow environment $VENV is up to date (checked in $((SECONDS - STARTED))s)"
  exit 0
fi

if [ -e "$VENV" ]; then
  say "rebuilding $VENV (not made by this version of $SCRIPT)"
  rm -rf "$VENV"
fi
say "creating $VENV: Airflow $AIRFLOW_VERSION with apache-airflow-providers-apache-spark $SPARK_PROVIDER_VERSION"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
sed '1,/^__LOCK__$/d' "$SCRIPT" > "$VENV/constraints.txt"
"${PIP[@]}" install -q -c "$VENV/constraints.txt" "${PINS[@]}"
"${PIP[@]}" check >&2 || die "the Airflow environment has conflicting requirements (see above)"

installed=$("$VENV/bin/python" -c '
import importlib.metadata as m
print(m.version("apache-airflow"), m.version("apache-airflow-providers-apache-spark"))')
[ "$installed" = "$AIRFLOW_VERSION $SPARK_PROVIDER_VERSION" ] || die "expected $AIRFLOW_VERSION $SPARK_PROVIDER_VERSION, got $installed"
"$VENV/bin/python" -c 'from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator' \
  || die "the Spark provider does not import"

echo "$stamp_key" > "$stamp"
say "ready: $VENV (Airflow $AIRFLOW_VERSION, Spark provider $SPARK_PROVIDER_VERSION) in $((SECONDS - STARTED))s"
exit 0

# The lock: every package of the environment, as `--relock` printed it (pip constraints format).
__LOCK__
a2wsgi==1.10.10
aiosmtplib==5.1.3
aiosqlite==0.22.1
alembic==1.20.1
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
apache-airflow==3.3.2
apache-airflow-core==3.3.2
apache-airflow-providers-apache-spark==6.3.4
apache-airflow-providers-common-compat==1.23.0
apache-airflow-providers-common-io==1.11.0
apache-airflow-providers-common-sql==2.4.0
apache-airflow-providers-smtp==3.2.0
apache-airflow-providers-standard==1.21.0
apache-airflow-task-sdk==1.3.2
argcomplete==3.7.2
arrow==1.4.0
asgiref==3.13.0
attrs==26.1.0
babel==2.19.0
cachetools==8.0.2
cadwyn==7.0.0
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
click==8.5.1
colorlog==6.12.0
cron_descriptor==2.2.1
croniter==7.0.0
cryptography==50.0.2
Deprecated==1.3.1
dill==0.4.1
dnspython==2.9.2
email-validator==2.4.0
fastapi==0.136.3
fastapi-cli==0.0.34
fsspec==2026.9.0
googleapis-common-protos==1.76.0
greenback==1.3.0
greenlet==3.5.6
grpcio==1.85.3
grpcio-status==1.85.3
h11==0.16.0
httpcore==1.0.9
httptools==0.9.0
httpx==0.28.1
idna==3.20
importlib_metadata==10.2.0
isoduration==20.11.0
itsdangerous==2.2.0
Jinja2==3.1.6
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
lazy-importer==0.1.0
lazy-object-proxy==1.13.0
libcst==1.9.0
linkify-it-py==2.2.0
lockfile==0.12.2
Mako==1.4.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
methodtools==0.4.7
more-itertools==11.2.1
msgspec==0.22.0
natsort==8.4.0
numpy==2.4.6
opentelemetry-api==1.45.2
opentelemetry-exporter-http-transport==0.66b2
opentelemetry-exporter-otlp==1.45.2
opentelemetry-exporter-otlp-common==0.66b2
opentelemetry-exporter-otlp-proto-common==1.45.2
opentelemetry-exporter-otlp-proto-grpc==1.45.2
opentelemetry-exporter-otlp-proto-http==1.45.2
opentelemetry-proto==1.45.2
opentelemetry-sdk==1.45.2
opentelemetry-semantic-conventions==0.66b2
outcome==1.3.0.post0
packaging==26.4
pandas==3.1.1
pathlib_abc==0.5.2
pathspec==1.1.1
pendulum==3.3.0
pluggy==1.7.0
protobuf==7.36.2
psutil==7.2.2
pyarrow==26.0.1
pycparser==3.12
pydantic==2.14.4
pydantic-extra-types==2.11.1
pydantic-settings==2.16.3
pydantic_core==2.50.5
Pygments==2.21.0
pygtrie==2.6.2
PyJWT==2.15.1
pyspark-client==4.2.0
python-daemon==3.1.2
python-dateutil==4.0.0
python-dotenv==1.2.4
python-multipart==0.0.34
python-slugify==9.2.0
PyYAML==6.0.4
referencing==0.37.0
requests==2.34.2
rich==15.0.0
rich-argparse==1.8.0
rich-toolkit==0.20.6
rpds-py==2026.9.1
setproctitle==1.3.8
shellingham==1.5.4
six==1.17.0
sniffio==1.3.1
SQLAlchemy==2.1.9
sqlparse==0.6.1
starlette==1.10.0
structlog==26.1.0
svcs==26.2.0
tabulate==0.10.0
tenacity==9.2.1
termcolor==3.3.0
text-unidecode==1.3
typer==0.29.2
typing-inspection==0.4.5
typing_extensions==4.16.0
tzdata==2026.6
universal_pathlib==0.3.10
urllib3==2.8.0
uuid6==2025.0.1
uvicorn==0.54.0
uvloop==0.23.0
watchfiles==1.3.0
websockets==17.4
wirerope==1.0.0
wrapt==2.5.2
zipp==4.1.2
zstandard==0.25.0
