#!/usr/bin/env bash
# The 8-minute GPU check (benchmarks/gpu_check.py; benchmarks/README.md, "GPU check").
# Installs the wheels carried in $ACT_FAST_WHEELS (default: .whl/ in the repository root) into a
# private folder first, so the machine's own torch / triton / transformers stay as they are.
#   benchmarks/gpu_check.sh [--smoke] [--out DIR] [--budget S] [--only STEPS]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${ACT_FAST_WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    SITE=${TMPDIR:-/tmp}/act_fast_gpu_check_site
    echo "installing carried wheels from $WHEELS into $SITE: $(cd "$WHEELS" && ls *.whl | tr '\n' ' ')"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl || exit 2
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "no carried wheels in $WHEELS: using the installed packages"
fi
exec "$PY" benchmarks/gpu_check.py "$@"
