# Sourced by the GPU scripts (gpu_check.sh, gpu_models.sh): $OUT, the log and summary files, and `step`.
# Set LOG_NAME / SUMMARY_NAME and DEFAULT_STEPS before sourcing; the script's arguments pick the steps.
OUT=${OUT:-$PWD/gpu-out}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
LOG=$OUT/$LOG_NAME
SUMMARY=$OUT/$SUMMARY_NAME
: >"$LOG"
: >"$SUMMARY"
export PYTHONUNBUFFERED=1
STEPS=" ${STEP_ARGS:-$DEFAULT_STEPS} "

# step NAME TIMEOUT_S CMD...: runs CMD if NAME was asked for; output to the terminal and $LOG, status to $SUMMARY.
step() {
  local name=$1 limit=$2 rc=0 start=$SECONDS
  shift 2
  [[ $STEPS == *" $name "* ]] || return 0
  echo "== $name: $*" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG" || rc=$?
  printf '%-9s rc=%-3s %4ss (limit %ss)\n' "$name" "$rc" "$((SECONDS - start))" "$limit" | tee -a "$SUMMARY"
}

# The summary, last: the card's name and each step's status; the script fails if any step did.
finish() {
  echo
  echo "== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
  cat "$SUMMARY"
  ! grep -qv 'rc=0 ' "$SUMMARY"
}
