#!/usr/bin/env bash
# Create (or reuse) the separate virtual environment that runs MONAI Label for `medseg serve`.
# Ships inside the medseg package (medseg/serve/label/recipe/); `medseg serve` runs it on first use,
# workflows/label_venv.sh is a wrapper for a source checkout.
#
#   label_venv.sh            create (and check) or reuse; print the venv path on the last line
#   label_venv.sh --check    only check an existing venv (exit 1 when missing/broken)
#   label_venv.sh --path     print the path of a completely built venv (no import check)
#
# MONAI Label 0.8.5 needs numpy<2, pydicom<3 and monai 1.5.2, which clash with medseg's core
# venv (monai 1.6, pydicom 3), so it lives in its own venv outside the clone:
#   ${MEDSEG_LABEL_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/medseg/label-venv-<hash>}
# where <hash> is taken from requirements.txt and constraints.txt beside this script (exact pins), so CI runs and later sessions reuse
# it and a change of the pins makes a new one. It is large (about 8 GB; torch 2.14.1 with CUDA
# libraries) and takes a few minutes to build the first time; a re-run only checks it (seconds).
# medseg itself is not installed there: `medseg serve` puts the calling medseg package on the
# server's PYTHONPATH (medseg.serve.launcher.medseg_pythonpath), so one venv serves every checkout
# and installation. Venvs built before may hold an editable medseg; PYTHONPATH takes precedence.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PACKAGE="$(cd "$HERE/../../.." && pwd)"   # the medseg package this recipe ships in
REQ="$HERE/requirements.txt"
CONSTRAINTS="$HERE/constraints.txt"
HASH="$( (cat "$REQ" "$CONSTRAINTS"; grep -h '^MONAILABEL_VERSION=' "${BASH_SOURCE[0]}") | sha256sum | cut -c1-12)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/medseg"
VENV="${MEDSEG_LABEL_VENV:-$CACHE/label-venv-$HASH}"
STAMP="$VENV/.medseg-label-venv-$HASH"
PYTHON="${MEDSEG_LABEL_BASE_PYTHON:-python3}"
MONAILABEL_VERSION=0.8.5
NICE=(nice -n 19)

log() { echo "label_venv: $*" >&2; }

check() {
    # import this medseg the way the server does: a folder with only a link to the package on PYTHONPATH
    local shim
    shim="$(mktemp -d)"
    ln -s "$PACKAGE" "$shim/medseg"
    local rc=0
    PYTHONPATH="$shim" "$VENV/bin/python" - "$PACKAGE" <<'PY' >&2 || rc=$?
import importlib, os, sys
package = os.path.realpath(sys.argv[1])
import monai, monailabel, pydicom, highdicom, numpy, torch
import medseg
problems = []
if monai.__version__ != "1.5.2":
    problems.append(f"monai {monai.__version__} (want 1.5.2)")
if int(pydicom.__version__.split(".")[0]) >= 3:
    problems.append(f"pydicom {pydicom.__version__} (want <3)")
if int(numpy.__version__.split(".")[0]) >= 2:
    problems.append(f"numpy {numpy.__version__} (want <2)")
here = os.path.realpath(os.path.dirname(medseg.__file__))
if here != package:
    problems.append(f"medseg imported from {here}, not {package}")
# every medseg module the server or a bundle config imports must import in this venv
for name in ("medseg.io", "medseg.bundle", "medseg.data", "medseg.engine", "medseg.engine.metrics",
             "medseg.networks", "medseg.losses", "medseg.segment", "medseg.serve", "medseg.serve.workdir",
             "medseg.serve.launcher", "medseg.serve.label.seg_output", "medseg.serve.label.app"):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            problems.append(f"{name}: {exc!r}")
    except Exception as exc:  # noqa: BLE001 - report every import failure
        problems.append(f"{name}: {exc!r}")
if problems:
    print("label venv check failed:\n  " + "\n  ".join(problems))
    sys.exit(1)
print(f"label venv ok: monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}, "
      f"pydicom {pydicom.__version__}, highdicom {highdicom.__version__}, numpy {numpy.__version__}")
PY
    rm -rf "$shim"
    return "$rc"
}

if [ "${1:-}" = "--path" ]; then
    # fast: the venv's path when it was built completely (no import check)
    [ -f "$STAMP" ] || { log "no label venv at $VENV: run bash ${BASH_SOURCE[0]}"; exit 1; }
    echo "$VENV"
    exit 0
fi

if [ "${1:-}" = "--check" ]; then
    [ -f "$STAMP" ] || { log "no label venv at $VENV: run bash ${BASH_SOURCE[0]}"; exit 1; }
    check
    echo "$VENV"
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9   # one builder at a time; a second caller waits and then reuses

fresh=0
if [ ! -f "$STAMP" ]; then
    fresh=1
    if [ -e "$VENV" ]; then
        log "removing incomplete venv $VENV"
        rm -rf "$VENV"
    fi
    log "creating $VENV (first time: about 8 GB, a few minutes)"
    start=$SECONDS
    "$PYTHON" -m venv "$VENV"
    "${NICE[@]}" "$VENV/bin/python" -m pip install -q --upgrade setuptools wheel >&2
    # torch first, alone: pip takes the pinned wheels from this machine's wheel folder when there
    "${NICE[@]}" "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" "torch==2.14.1" "torchvision==0.29.1" >&2
    "${NICE[@]}" "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" -r "$REQ" >&2
    # without its sam2 requirement (see requirements.txt); every other requirement is listed there
    "${NICE[@]}" "$VENV/bin/python" -m pip install -q --no-deps "monailabel==$MONAILABEL_VERSION" >&2
    touch "$STAMP"
    log "created in $((SECONDS - start)) s"
fi
# the import check takes a while (torch, MONAI Label): after a build, or on request (--check)
if [ "$fresh" = 1 ]; then
    check
fi
echo "$VENV"
