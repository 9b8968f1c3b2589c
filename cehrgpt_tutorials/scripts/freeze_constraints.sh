#!/bin/sh
# freeze_constraints.sh: print a new cehrgpt_tutorials/constraints.txt from the current .venv.
# Run it only after `make test` passed on that venv (see the header it prints for the whole recipe).
#
#   sh cehrgpt_tutorials/scripts/freeze_constraints.sh > cehrgpt_tutorials/constraints.txt.new \
#     && mv cehrgpt_tutorials/constraints.txt.new cehrgpt_tutorials/constraints.txt
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
cat <<'HEADER'
# The complete pin set of the tested, working environment: every distribution installed in .venv
# (Python 3.10, Linux x86_64) at the exact version the test suite passed on. `make setup` installs
# the project with it: pip install --constraint cehrgpt_tutorials/constraints.txt -e '.[test]'
#
# Why pin everything: cehrgpt 0.1.9 pins cehrbert 1.4.9 and cehrbert_data 0.1.1 but leaves most of
# their dependencies open, and an unpinned install today picks versions that don't import together
# (pyarrow 26 with numpy 1.26, TensorFlow's Keras 3 with transformers 4.44).
#
# Refresh (when upgrading on purpose): build a venv without this file, test it, then freeze it:
#   rm -rf .venv && python3.10 -m venv .venv && .venv/bin/pip install -e '.[test]' 'xformers<0.0.1'
#   CEHRGPT_SKIP_SETUP=1 make test    # the tests must pass on exactly what will be frozen
#   sh cehrgpt_tutorials/scripts/freeze_constraints.sh > constraints.new && mv constraints.new cehrgpt_tutorials/constraints.txt
#
# As in the official cehrgpt tutorial's constraints, xformers is blocked: its wheels pin other torch
# releases and pull several GB of CUDA libraries; cehrgpt does not need it (femr 0.2.0 doesn't ask).
xformers<0.0.1

HEADER
# --all keeps pip and setuptools pinned too; our own editable project is not a dependency.
"$python" -m pip freeze --all --exclude-editable --disable-pip-version-check | grep -iv '^cehrgpt-tutorials'
