#!/usr/bin/env bash
# Coverage-guided fuzzing of the request parser and command parsing with
# AFL++ (cargo-afl), on the stable toolchain. Installs cargo-afl when it is
# missing (it builds AFL++ and its runtime from the crate).
#
#   scripts/fuzz.sh                                   # both targets, 25 s each
#   scripts/fuzz.sh --seconds 3600 --target requests  # a real campaign
#
# Starts from the committed seeds in fuzz/corpus/<target>; the fuzzer's
# queue goes to fuzz/out/<target> (not committed). A crash or hang found is
# copied to fuzz/regressions/<target>/ and the script fails: fix it and
# commit the input (tests/fuzz_corpus.rs replays it on every cargo test).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=25
targets=(requests commands)
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --target) targets=("$2"); shift 2 ;;
    *) echo "usage: $0 [--seconds N] [--target requests|commands]" >&2; exit 2 ;;
  esac
done

if ! cargo afl --version >/dev/null 2>&1; then
  echo "installing cargo-afl"
  cargo install cargo-afl --locked --version '^0.18'
fi
# Builds AFL++ if `cargo install` did not (it says so when it already has).
cargo afl config --build >/dev/null 2>&1 || true

cd fuzz
# cargo-afl builds with -C codegen-units=1, so the first build (sessiond-server
# and its dependencies, instrumented) is slow: here, on 2 shared cores, about
# 8 minutes at opt-level 1 and 18 at 3. Short runs build at 1, real campaigns
# at 3; AFL_OPT_LEVEL overrides.
if [ "$seconds" -le 60 ]; then default_opt=1; else default_opt=3; fi
export AFL_OPT_LEVEL="${AFL_OPT_LEVEL:-$default_opt}"
cargo afl build --release --quiet

# No core_pattern or CPU-governor tuning on shared CI machines.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_UI=1 AFL_QUIET=1 AFL_NO_AFFINITY=1

mkdir -p out
found=0
for t in "${targets[@]}"; do
  rm -rf "out/$t"
  echo "fuzzing $t for ${seconds}s"
  cargo afl fuzz -V "$seconds" -t 1000 -i "corpus/$t" -o "out/$t" "target/release/$t" \
    > "out-$t.log" 2>&1 || { tail -30 "out-$t.log"; exit 1; }
  stats="out/$t/default/fuzzer_stats"
  if [ -f "$stats" ]; then
    grep -E '^(execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs|bitmap_cvg) ' "$stats" \
      | sed "s/^/  $t: /"
  fi
  for kind in crashes hangs; do
    for f in "out/$t/default/$kind"/id:*; do
      [ -e "$f" ] || continue
      mkdir -p "regressions/$t"
      name="$kind-$(sha1sum "$f" | cut -c1-12)"
      cp "$f" "regressions/$t/$name"
      echo "FOUND: $t $kind: fuzz/regressions/$t/$name"
      found=1
    done
  done
  rm -f "out-$t.log"
done
exit "$found"
