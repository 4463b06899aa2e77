#!/usr/bin/env bash
# Test every OpenTofu module and environment offline:
#   scripts/build-tools.sh (tofu + providers into a filesystem mirror, cached),
#   then per directory: tofu fmt -check -recursive, tofu init -backend=false,
#   tofu validate, tofu test (mock providers).
# Exits non-zero on any failure. The last line is
#   tofu: N passed, M failed
# counting tofu test run blocks (from tofu test's own summaries; a directory
# whose tofu test printed no summary counts all its run blocks as failed).
set -uo pipefail

TF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${TONGXIN_CACHE:-$HOME/.cache/tongxin}/tofu

passed=0
failed=0
status=0
declare -a report=()

finish() {
    echo
    echo "== summary"
    local line
    for line in "${report[@]}"; do
        echo "  $line"
    done
    echo "tofu: $passed passed, $failed failed"
    exit "$status"
}

echo "== build-tools"
if ! bash "$TF_DIR/scripts/build-tools.sh"; then
    report+=("build-tools.sh: FAILED")
    status=1
    finish
fi
# shellcheck source=/dev/null
. "$CACHE/env.sh" # PATH (tofu) and TF_CLI_CONFIG_FILE (mirror only)
export TF_IN_AUTOMATION=1 TF_INPUT=0
unset TF_WORKSPACE TF_DATA_DIR

logs=$(mktemp -d "${TMPDIR:-/tmp}/tongxin-tofu-test.XXXXXX")
trap 'rm -rf "$logs"' EXIT

# run_step <label> <log> <command...>: run quietly, show the log on failure.
run_step() {
    local label=$1 log=$2
    shift 2
    if "$@" >"$log" 2>&1; then
        return 0
    fi
    echo "---- $label failed:"
    sed 's/^/    /' "$log"
    return 1
}

count_runs() { # run blocks in a directory's tests
    cat "$1"/tests/*.tftest.hcl 2>/dev/null | grep -cE '^[[:space:]]*run[[:space:]]+"' || true
}

dirs=()
for d in "$TF_DIR"/modules/*/ "$TF_DIR"/environments/*/; do
    [ -d "$d" ] && dirs+=("${d%/}")
done

for dir in "${dirs[@]}"; do
    rel=${dir#"$TF_DIR"/}
    echo "== $rel"
    steps=""
    ok=1
    log=$logs/${rel//\//_}

    if run_step "$rel: tofu fmt -check -recursive" "$log.fmt" tofu -chdir="$dir" fmt -check -recursive -diff -no-color; then
        steps+="fmt ok"
    else
        steps+="fmt FAILED"
        ok=0
    fi

    if run_step "$rel: tofu init" "$log.init" tofu -chdir="$dir" init -backend=false -input=false -no-color; then
        steps+=", init ok"
        if run_step "$rel: tofu validate" "$log.validate" tofu -chdir="$dir" validate -no-color; then
            steps+=", validate ok"
        else
            steps+=", validate FAILED"
            ok=0
        fi

        runs=$(count_runs "$dir")
        tofu -chdir="$dir" test -no-color >"$log.test" 2>&1
        rc=$?
        summary=$(grep -Eo '(Success|Failure)! [0-9]+ passed, [0-9]+ failed' "$log.test" | tail -n1)
        if [ -n "$summary" ]; then
            p=$(sed -E 's/.*! ([0-9]+) passed.*/\1/' <<<"$summary")
            f=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$summary")
        else
            p=0
            f=$runs
        fi
        passed=$((passed + p))
        failed=$((failed + f))
        if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ] || [ -z "$summary" ]; then
            echo "---- $rel: tofu test failed (exit $rc):"
            sed 's/^/    /' "$log.test"
            steps+=", test: $p passed, $f failed"
            ok=0
        else
            grep -E '^(tests/|  run ")' "$log.test" | sed 's/^/    /'
            steps+=", test: $p passed, $f failed"
        fi
    else
        runs=$(count_runs "$dir")
        failed=$((failed + runs))
        steps+=", init FAILED, test: not run ($runs run blocks counted as failed)"
        ok=0
    fi

    [ "$ok" -eq 1 ] || status=1
    report+=("$rel: $steps")
    echo "   $steps"
done

if [ "$passed" -eq 0 ]; then
    report+=("no tofu test run passed")
    status=1
fi
finish
