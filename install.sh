#!/usr/bin/env bash
# Install pyscale (editable, with its compiled extension) into the active Python environment.
#  - keeps a torch that is already installed (e.g. a CUDA build on a GPU machine);
#  - otherwise installs the pinned CPU build (torch==2.13.0), never a multi-GB CUDA build by accident;
#  - pins triton/numpy to versions known to work together (constraints.txt).
# PYSCALE_EXTRAS selects the extras (default "dev": tests, lint, pandas, matplotlib, NVML).
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
EXTRAS="${PYSCALE_EXTRAS:-dev}"
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

"${PIP[@]}" -q "setuptools>=64" wheel "pybind11>=2.12"
# No build isolation: the build needs only setuptools + pybind11 (never torch), and this works offline.
"${PIP[@]}" -q --no-build-isolation -c "$constraints" -e ".[${EXTRAS}]"
echo "pyscale: installed; try \`pyscale info\`"
