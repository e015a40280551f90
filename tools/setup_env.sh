#!/usr/bin/env bash
# Build (or reuse) the project environment .venv from requirements/stack.txt.
#
#   bash tools/setup_env.sh          # idempotent: seconds when .venv is already up to date
#   RAMBO_VENV=/path bash tools/setup_env.sh
#
# Stages: build tools -> torch (CPU wheel) -> mmengine & friends -> mmcv 2.1.0 compiled from source
# with its ops (about 10 minutes on 2 cores, cached by pip afterwards) -> mmdet, test tools ->
# this package in editable mode -> the Fashion-MNIST Debian package used by the demo data.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${RAMBO_VENV:-$ROOT/.venv}
STACK=$ROOT/requirements/stack.txt
STAMP=$VENV/.rambo-stack-stamp
PY=$VENV/bin/python

say() { printf '[setup_env] %s\n' "$*"; }

stamp_of() { cat "$STACK" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1; }

env_is_ready() {
    [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_of)" ] \
        && "$PY" -c 'import mmcv.ops, mmdet, rambo_mmdet' >/dev/null 2>&1
}

# Pins of one stage, e.g. `pins mmdet` -> "mmdet==3.3.0 pycocotools==2.0.11 ..."
pins() { awk -v s="@$1" '!/^#/ && $2 == s {print $1}' "$STACK"; }

install_fashion_mnist() {
    if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then return; fi
    say "installing the Debian package dataset-fashion-mnist (source images of the demo data)"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
}

pick_python() {
    for cand in python3.11 python3; do
        if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            echo "$cand"; return
        fi
    done
    echo "[setup_env] error: python 3.11 is required (python3.11 or python3 on PATH)" >&2
    exit 1
}

install_fashion_mnist

if env_is_ready; then
    say "environment $VENV is up to date"
    exit 0
fi

start=$(date +%s)
if [ ! -x "$PY" ]; then
    say "creating virtual environment $VENV"
    "$(pick_python)" -m venv "$VENV"
fi
PIP=("$PY" -m pip install --disable-pip-version-check --progress-bar off -q --no-warn-script-location)

say "stage 1/5: build tools ($(pins build | tr '\n' ' '))"
"${PIP[@]}" $(pins build)
say "stage 2/5: torch ($(pins torch))"
"${PIP[@]}" $(pins torch)
say "stage 3/5: $(pins base | tr '\n' ' ')"
"${PIP[@]}" $(pins base)

if "$PY" -c 'import mmcv.ops' >/dev/null 2>&1; then
    say "stage 4/5: mmcv with ops already installed"
else
    log=$VENV/mmcv-build.log
    say "stage 4/5: compiling $(pins mmcv) with its ops from source: about 10 minutes on 2 cores"
    say "           (only the first time: pip caches the built wheel). Log: $log"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" --no-build-isolation $(pins mmcv) >"$log" 2>&1 &
    build=$!
    while kill -0 "$build" 2>/dev/null; do
        sleep 30
        kill -0 "$build" 2>/dev/null && say "           ... still compiling mmcv ($(( $(date +%s) - start ))s elapsed)"
    done
    if ! wait "$build"; then
        tail -n 40 "$log" >&2
        echo "[setup_env] error: building mmcv failed; full log in $log" >&2
        exit 1
    fi
fi

say "stage 5/5: $(pins mmdet | tr '\n' ' ') and rambo_mmdet (editable)"
"${PIP[@]}" $(pins mmdet)
"${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT"

"$PY" -c 'import mmcv.ops, mmdet, rambo_mmdet'
stamp_of >"$STAMP"
say "environment ready in $(( $(date +%s) - start ))s: $VENV"
