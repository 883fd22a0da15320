# shellcheck shell=bash disable=SC2154 # out, err: set by the sourcing test
# checks.sh: the client tests' way of reporting checks ("ok - ..." /
# "not ok - ..."), sourced by client_python.sh and client_c.sh.
#
# The test sets 'out' and 'err' (files that hold the last command's stdout
# and stderr) before calling run; checks_passed and checks_failed count.

checks_passed=0 checks_failed=0

ok() {
    checks_passed=$((checks_passed + 1))
    echo "ok - $1"
}

# not_ok TEXT: a failed check; prints the last command's output under it.
not_ok() {
    checks_failed=$((checks_failed + 1))
    echo "not ok - $1"
    [[ -s "$out" ]] && sed 's/^/    stdout: /' "$out" | head -40
    [[ -s "$err" ]] && sed 's/^/    stderr: /' "$err" | head -20
}

# run NAME WANT_RC COMMAND...: runs COMMAND (stdout in $out, stderr in $err)
# and checks its exit code; returns 0 when it matched.
run() {
    local name=$1 want=$2 rc
    shift 2
    "$@" >"$out" 2>"$err"
    rc=$?
    if ((rc != want)); then
        not_ok "$name: exit code $rc, wanted $want"
        return 1
    fi
    return 0
}

# expect NAME FILE PATTERN: FILE matches the extended regex PATTERN.
expect() {
    if grep -Eq -- "$3" "$2"; then
        ok "$1"
    else
        not_ok "$1: no match for /$3/"
    fi
}

# checks_summary: prints the counts; returns 0 when nothing failed.
checks_summary() {
    echo
    echo "$checks_passed passed, $checks_failed failed"
    ((checks_failed == 0))
}
