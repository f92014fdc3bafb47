#!/usr/bin/env bash
# Install pyscale (editable, with its compiled extension) into the active Python environment.
#  - keeps a torch that is already installed (e.g. a CUDA build on a GPU machine);
#  - otherwise installs the pinned CPU build (torch==2.13.0), never a multi-GB CUDA build by accident;
#  - pins triton/numpy to versions known to work together (constraints.txt).
# PYSCALE_EXTRAS selects the extras (default "dev": tests, lint, pandas, matplotlib, NVML); set it empty
# (PYSCALE_EXTRAS=) for none. Offline (no package registry: PIP_NO_INDEX=1), with PYSCALE_EXTRAS= it needs
# nothing beyond what is installed: numpy, scipy, rich, setuptools and pybind11 (and torch to run the ops).
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
EXTRAS="${PYSCALE_EXTRAS-dev}"
PIP=("$PY" -m pip install --disable-pip-version-check --progress-bar off)

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
if "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "pyscale: keeping the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
    # The numpy pin only protects the Triton interpreter (CPU machines); keep the numpy that came with torch.
    grep -v -e '^torch==' -e '^numpy' constraints.txt >"$constraints"
    if "$PY" -c "import triton" >/dev/null 2>&1; then
        grep -v '^triton==' "$constraints" >"$constraints.2" && mv "$constraints.2" "$constraints"
    fi
else
    cp constraints.txt "$constraints"
fi

# Build tools, only what is missing (an offline machine either has them or cannot fetch them):
# setuptools >= 64 and pybind11; `wheel` only for a setuptools older than 70.1, which builds wheels with it.
if ! "$PY" -c "import pybind11, setuptools; assert int(setuptools.__version__.split('.')[0]) >= 64" >/dev/null 2>&1; then
    "${PIP[@]}" -q "setuptools>=64" "pybind11>=2.12"
fi
if ! "$PY" -c "import setuptools.command.bdist_wheel" >/dev/null 2>&1 && ! "$PY" -c "import wheel" >/dev/null 2>&1; then
    "${PIP[@]}" -q wheel
fi
# No build isolation: the build needs only setuptools + pybind11 (never torch), and this works offline.
target="."
[ -n "$EXTRAS" ] && target=".[${EXTRAS}]"
"${PIP[@]}" -q --no-build-isolation -c "$constraints" -e "$target"
echo "pyscale: installed; try \`pyscale info\`"
