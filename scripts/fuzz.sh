#!/usr/bin/env bash
# Coverage-guided fuzzing of Lanyard's parsers (cargo fuzz, libFuzzer, no sanitizer).
#
#   scripts/fuzz.sh [SECONDS | -runs=N] [TARGET...]
#
# Builds the targets in fuzz/ (its own workspace and lock file), then runs each TARGET (default:
# all) for SECONDS (default 60) or N executions, one after the other, and prints the executions,
# exec/s and coverage of each. The logic of target T is fuzz/checks/T.rs, which the ordinary tests
# replay (cargo test -p ca|issuer-api|workload-agent --test fuzz_regressions) with every input in
# fuzz/regressions/T/.
#
# On a crash, timeout or OOM the input is copied into fuzz/regressions/T/ (commit it: it becomes a
# regression test) and the script exits non-zero after the remaining targets.
#
# Environment:
#   FUZZ_CORPUS  corpus directory, one subdirectory per target (default fuzz/corpus, not in git).
#                An empty one is seeded with the check's hand-written seeds (the target writes
#                them when LANYARD_FUZZ_SEEDS is set) and the regression inputs.
#   FUZZ_ARGS    extra libFuzzer arguments (e.g. "-jobs=2" or "-dict=...").
#   FUZZ_NICE    niceness of builds and runs (default 19: the machine stays usable).
set -euo pipefail
cd "$(dirname "$0")/.."

ALL=(jws acme_payloads csr jwt pem_der server_config agent_config ca_responses)
budget="${1:-60}"
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${ALL[@]}")
case "$budget" in
    -runs=*) limit=("$budget") ;;
    ''|*[!0-9]*) echo "usage: $0 [SECONDS | -runs=N] [TARGET...]" >&2; exit 2 ;;
    *) limit=("-max_total_time=$budget") ;;
esac
for t in "${targets[@]}"; do
    [[ " ${ALL[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target $t (known: ${ALL[*]})" >&2; exit 2; }
done

nice_=(nice -n "${FUZZ_NICE:-19}")
corpus_root="$(realpath -m "${FUZZ_CORPUS:-fuzz/corpus}")"
export RUSTC_BOOTSTRAP=1 # cargo fuzz needs nightly flags; stable 1.95 accepts them this way

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    "${nice_[@]}" cargo install cargo-fuzz --locked
fi

max_len() {
    case "$1" in
        server_config | agent_config) echo 4096 ;;
        *) echo 8192 ;;
    esac
}

crate_of() {
    case "$1" in
        csr | pem_der) echo ca ;;
        jws | acme_payloads | jwt | server_config) echo issuer-api ;;
        agent_config | ca_responses) echo workload-agent ;;
    esac
}

echo "fuzz.sh: building the fuzz targets"
(cd fuzz && "${nice_[@]}" cargo fuzz build -s none)
bin_dir="fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"

failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "$corpus_root/$t" "fuzz/artifacts/$t"
    log="fuzz/artifacts/$t/last-run.log"
    touch "$log.start" # artifacts newer than this are this run's
    seed=()
    if [ -z "$(ls -A "$corpus_root/$t")" ]; then
        # An empty corpus starts from the check's seeds (written by the target itself) and the
        # regression inputs.
        seed=(env "LANYARD_FUZZ_SEEDS=$corpus_root/$t")
        cp fuzz/regressions/"$t"/* "$corpus_root/$t/" 2>/dev/null || true
    fi
    echo "fuzz.sh: $t (${limit[*]}, corpus $corpus_root/$t)"
    set +e
    # shellcheck disable=SC2086
    "${seed[@]}" "${nice_[@]}" "$bin_dir/$t" "$corpus_root/$t" "${limit[@]}" -max_len="$(max_len "$t")" \
        -print_final_stats=1 -timeout=30 -rss_limit_mb=2048 -artifact_prefix="fuzz/artifacts/$t/" \
        ${FUZZ_ARGS:-} >"$log" 2>&1
    rc=$?
    set -e
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
    cov="$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1)"
    line="$t: ${execs:-?} executions, ${rate:-?} exec/s, ${cov:-cov: ?}"
    if [ $rc -ne 0 ]; then
        found=()
        for a in "fuzz/artifacts/$t"/crash-* "fuzz/artifacts/$t"/timeout-* "fuzz/artifacts/$t"/oom-* "fuzz/artifacts/$t"/leak-*; do
            [ -f "$a" ] && [ -z "$(find "$a" -not -newer "$log.start" 2>/dev/null)" ] || continue
            cp "$a" "fuzz/regressions/$t/"
            found+=("fuzz/regressions/$t/$(basename "$a")")
        done
        line="$line, FAILED (exit $rc): ${found[*]:-no artifact; see $log}"
        failed+=("$t")
        grep -m 5 -E "panicked|ERROR: libFuzzer|SUMMARY" "$log" >&2 || true
    fi
    echo "$line"
    summary+=("$line")
done

echo
echo "fuzz.sh: summary"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: failures in ${failed[*]}; inputs copied to fuzz/regressions/ (logs in fuzz/artifacts/)" >&2
    exit 1
fi
