#!/bin/sh
# make_venv.sh: build .venv for the tutorial (what `make setup` runs). Idempotent.
#
#   sh cehrgpt_tutorials/scripts/make_venv.sh [VENV_DIR]     # default: .venv in the repository
#
# 1. Finds Python 3.10: $PYTHON if set (it must be 3.10), else `python3.10` if it runs, else a
#    3.10 installed by pyenv ($PYENV_ROOT/versions/3.10*). pyspark 3.1.2, which cehrgpt 0.1.9
#    needs, cannot run Python UDFs on 3.11+.
# 2. Creates the venv, upgrades pip, installs the project with cehrgpt_tutorials/constraints.txt
#    (every distribution pinned: an unpinned install today picks versions that don't import).
# 3. Only then writes VENV_DIR/.setup-complete; an interrupted install is redone by the next run,
#    and a complete one returns at once.
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${1:-$root/.venv}
constraints=$root/cehrgpt_tutorials/constraints.txt
marker=$venv/.setup-complete

if [ -n "${CEHRGPT_SKIP_SETUP:-}" ]; then
    echo "make setup: CEHRGPT_SKIP_SETUP is set; using $venv as it is"
    exit 0
fi

# The marker records what was installed; a changed pyproject.toml or constraints.txt redoes it.
fingerprint=$(cat "$root/pyproject.toml" "$constraints" | cksum | cut -d' ' -f1)
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$fingerprint" ] && [ -x "$venv/bin/python" ]; then
    echo "make setup: $venv is complete (delete it or run 'make clean-venv' to rebuild)"
    exit 0
fi

is_python310() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' 2>/dev/null
}

python=""
if [ -n "${PYTHON:-}" ]; then
    if is_python310 "$PYTHON"; then
        python=$PYTHON
    else
        found=$("$PYTHON" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo "not runnable")
        echo "error: PYTHON=$PYTHON is Python $found, but this tutorial needs Python 3.10: pyspark 3.1.2 (pinned by cehrgpt 0.1.9) cannot run UDFs on 3.11+. Install 3.10 (e.g. 'pyenv install 3.10', or 'apt install python3.10 python3.10-venv') and set PYTHON to it." >&2
        exit 1
    fi
elif command -v python3.10 >/dev/null 2>&1 && is_python310 python3.10; then
    python=$(command -v python3.10)
else
    for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10; do
        if [ -x "$candidate" ] && is_python310 "$candidate"; then python=$candidate; fi
    done
fi
if [ -z "$python" ]; then
    echo "error: Python 3.10 not found (tried \$PYTHON, python3.10 on PATH, ${PYENV_ROOT:-$HOME/.pyenv}/versions/3.10*). This tutorial needs Python 3.10: pyspark 3.1.2 (pinned by cehrgpt 0.1.9) cannot run UDFs on 3.11+. Install it (e.g. 'pyenv install 3.10', or 'apt install python3.10 python3.10-venv') or set PYTHON=/path/to/python3.10." >&2
    exit 1
fi

rm -f "$marker"
if [ -x "$venv/bin/python" ] && ! is_python310 "$venv/bin/python"; then
    echo "make setup: $venv is not Python 3.10; recreating it"
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "make setup: creating $venv with $python ($("$python" --version 2>&1))"
    "$python" -m venv "$venv"
fi
echo "make setup: installing the pinned environment (about 9 GB; minutes with pip's cache, longer without)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --constraint "$constraints" --upgrade pip
"$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
    --constraint "$constraints" --editable "${root}[test]"
"$venv/bin/python" -m pip check
echo "$fingerprint" > "$marker"
echo "make setup: done, $venv is complete"
