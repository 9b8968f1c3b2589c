# shellcheck shell=sh
# Helpers shared by the tutorial's shell scripts (POSIX sh; sourced, never run):
#
#   . "$(dirname "$0")/shell_helpers.sh"
#
#   die MESSAGE...        print "error: MESSAGE" on stderr and exit 1
#   shell_quote WORD      WORD as one shell word ('it'\''s'), quoted only when it needs it
#   print_command WORD... the words as one line a learner can paste into a shell
#   append_word WORD      add WORD, quoted, to $QUOTED_WORDS; `eval "set -- \"\$@\" $QUOTED_WORDS"`
#                         later restores every word as it was (spaces, globs, empty strings)
#   physical_dir DIR      DIR as an absolute path without symlinks, or an error line and status 1:
#                         X=$(physical_dir "$X") || exit 1   (never an empty X on failure)
#   hold_lock FD OUTPUT WHAT  the exclusive lock on OUTPUT (cehrgpt_tutorials/locks.py) on descriptor FD
#                         (8 or 9) for the rest of the script and every program it starts; when another
#                         run holds it, one line naming that run and exit 1. Needs PYTHON_BIN.
#   exit_as_ours STATUS   after one of this project's Python commands failed: it printed its own one-line
#                         error (status 1), so exit with it; any other status (a signal) gets a line here
#   tutorial MODULE ARG...  python -m MODULE from this checkout's cehrgpt_tutorials, wherever the script
#                         runs from (PYTHONPATH for that command only). Needs TUTORIAL_ROOT and PYTHON_BIN.
#   crash_point NAME      kill -9 of the script's process group when CEHRGPT_CRASH_AT=NAME (the fault
#                         tests' way to stop a step at an exact moment; see cehrgpt_tutorials/faults.py)

tutorial() {
    PYTHONPATH="$TUTORIAL_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON_BIN" -m "$@"
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

shell_quote() {
    case "$1" in
        # Safe characters only (no globbing, splitting or expansion): as it is.
        *[!A-Za-z0-9_./:=@%+,-]*|"") printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;;
        *) printf '%s' "$1" ;;
    esac
}

print_command() {
    _line=""
    for _word in "$@"; do
        _line="$_line $(shell_quote "$_word")"
    done
    printf '%s\n' "${_line# }"
}

QUOTED_WORDS=""
append_word() {
    QUOTED_WORDS="$QUOTED_WORDS $(shell_quote "$1")"
}

physical_dir() {
    _dir=$(cd -- "$1" && pwd -P) && [ -n "$_dir" ] || {
        printf "error: cannot enter folder '%s'\n" "$1" >&2
        return 1
    }
    printf '%s\n' "$_dir"
}

hold_lock() {
    _root=$(cd "$(dirname "$0")/../.." && pwd -P) || die "cannot find the tutorial's folder above $0"
    _lock_file=$(PYTHONPATH="$_root${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON_BIN" -m cehrgpt_tutorials.locks path "$2") ||
        die "cannot find the lock file of $2"
    eval "exec $1>>\"\$_lock_file\"" || die "cannot open the lock file $_lock_file"
    PYTHONPATH="$_root${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON_BIN" -m cehrgpt_tutorials.locks take "$1" "$2" "$3" "$$" ||
        exit 1
    # The programs this script starts inherit the descriptor, so they hold the lock too.
    CEHRGPT_HELD_LOCKS="${CEHRGPT_HELD_LOCKS:+$CEHRGPT_HELD_LOCKS:}$_lock_file"
    export CEHRGPT_HELD_LOCKS
}

exit_as_ours() {
    [ "$1" -eq 1 ] && exit 1
    die "stopped with exit status $1"
}

crash_point() {
    [ "${CEHRGPT_CRASH_AT:-}" != "$1" ] || kill -KILL 0
}
