# Progress lines for the long steps of scripts/run.sh and scripts/test.sh, so a
# build is never mistaken for a hang. Sourced; PROGRESS_TAG names the caller.
#
#   phase_start TEXT          "TAG: TEXT ..." and starts the phase's clock
#   phase_end [TEXT]          "TAG: TEXT done in N s" (default: the start's TEXT)
#   ninja_progress DIR LOG    ninja -C DIR, whole output in LOG, a line at every
#                             tenth of the steps: "TAG:   DIR: 40% (48/120 steps, 21 s)"

PROGRESS_TAG=${PROGRESS_TAG:-progress}

phase_start() {
  _phase_text=$1
  _phase_t0=$SECONDS
  echo "$PROGRESS_TAG: $1 ..."
}

phase_end() {
  echo "$PROGRESS_TAG: ${1:-$_phase_text} done in $((SECONDS - _phase_t0)) s"
}

# ninja prints "[N/TOTAL] what" per step when its output is not a terminal.
ninja_progress() {
  local dir=$1 log=$2 t0=$SECONDS shown=0 line n total tenth rc
  : >"$log"
  {
    ninja -C "$dir" 2>&1
    echo "ninja-exit $?"
  } | {
    rc=1
    while IFS= read -r line; do
      if [[ $line =~ ^ninja-exit\ ([0-9]+)$ ]]; then
        rc=${BASH_REMATCH[1]}
        continue
      fi
      printf '%s\n' "$line" >>"$log"
      [[ $line =~ ^\[([0-9]+)/([0-9]+)\] ]] || continue
      n=${BASH_REMATCH[1]} total=${BASH_REMATCH[2]}
      tenth=$((n * 10 / total))
      if [ "$tenth" -gt "$shown" ]; then
        shown=$tenth
        echo "$PROGRESS_TAG:   $dir: $((tenth * 10))% ($n/$total steps, $((SECONDS - t0)) s)"
      fi
    done
    exit "$rc"
  }
}
