#!/usr/bin/env bash
# Run the precompute as a Ray job on a private, throw-away local Ray head: the same path a cluster takes.
#
#   bash cluster/submit_local.sh --data data/sample --model models/multilingual-e5-small --out h5/
#
# Starts `ray start --head --block` in its own session with its own --temp-dir and free ports, waits for the
# dashboard, runs `ray job submit --working-dir <repo> -- python precompute/run.py "$@"`, and on exit (also on
# error or Ctrl-C) stops the job and then exactly that head: the processes of the session setsid gave it.
# Prints `xel: ray head pid N`.
# Relative --data/--model/--out are made absolute first (the job runs in an uploaded copy of the repo).
# Exit status: the job driver's exit code (0 when the store is complete).
# Env: XEL_RAY_NUM_CPUS (default 2), XEL_RAY_NUM_GPUS (default 0), RAY (default: ray), PYTHON (default: python).
set -euo pipefail
set +m  # no job control: a background `setsid` then runs in place and its PID is the head's

RAY="${RAY:-ray}"
PYTHON="${PYTHON:-python}"
NUM_CPUS="${XEL_RAY_NUM_CPUS:-2}"
NUM_GPUS="${XEL_RAY_NUM_GPUS:-0}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"  # a private head on 127.0.0.1; no token to hand around
export RAY_USAGE_STATS_ENABLED=0
# Ray starts its workers at niceness 15, so the encoder actors of this private head got a small share of the CPU
# whenever anything else ran; xel's own local Ray runs them at 0 (precompute/ray_session.py); a value given wins
export RAY_worker_niceness="${RAY_worker_niceness:-0}"
export HDF5_USE_FILE_LOCKING="${HDF5_USE_FILE_LOCKING:-FALSE}"

args=()
while (($#)); do
  case "$1" in
    --data | --model | --out)
      (($# >= 2)) || { echo "xel: $1 needs a value" >&2; exit 2; }
      args+=("$1" "$(realpath -m -- "$2")"); shift 2 ;;
    --data=* | --model=* | --out=*)
      args+=("${1%%=*}" "$(realpath -m -- "${1#*=}")"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done

free_ports() {  # N distinct free ports: every socket stays bound until all are chosen, so none is handed out twice
  "$PYTHON" -c '
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
' "$1"
}

TEMP_DIR="$(mktemp -d /tmp/xel-ray.XXXXXX)"
HEAD_PID=""
SUBMIT_PID=""
SUBMISSION_ID=""
ADDRESS=""
session_pids() {  # live (not zombie) processes of the head's session: the head, GCS, raylet, its workers
  ps -eo pid=,sid=,stat= | awk -v s="$HEAD_PID" '$2 == s && $3 !~ /^Z/ { print $1 }'
}
stop_head() {
  local status=$? pids
  trap - INT TERM
  if [[ -n "$SUBMIT_PID" ]]; then
    kill -TERM "$SUBMIT_PID" 2>/dev/null || true
    wait "$SUBMIT_PID" 2>/dev/null || true
    # the driver runs in its own session (Ray's job supervisor starts it so): stop it through Ray
    echo "xel: stopping job $SUBMISSION_ID" >&2
    timeout 30 "$RAY" job stop --address "$ADDRESS" "$SUBMISSION_ID" >/dev/null 2>&1 || true
  fi
  if [[ -n "$HEAD_PID" ]]; then
    # setsid gave the head a session of its own, so it holds our Ray processes only (workers get their own
    # process groups inside it). A graceful raylet shutdown takes ~10 s; this head is thrown away: 3 s, then KILL.
    pids="$(session_pids)"
    if [[ -n "$pids" ]]; then
      kill -TERM $pids 2>/dev/null || true
      for _ in $(seq 1 15); do [[ -n "$(session_pids)" ]] || break; sleep 0.2; done
      pids="$(session_pids)"
      if [[ -n "$pids" ]]; then kill -KILL $pids 2>/dev/null || true; fi
    fi
    wait "$HEAD_PID" 2>/dev/null || true
  fi
  rm -rf -- "$TEMP_DIR"
  exit "$status"
}
trap stop_head EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# one call: four separate calls could get the same port back (it is free again once the socket closes); Ray then
# refuses to start ("trying to use a port number … that is used by other components")
read -r GCS_PORT DASHBOARD_PORT CLIENT_PORT AGENT_PORT < <(free_ports 4)
# setsid: the head and every process it starts share a new session whose id is HEAD_PID
setsid "$RAY" start --head --block --temp-dir "$TEMP_DIR" --port "$GCS_PORT" \
  --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
  --ray-client-server-port "$CLIENT_PORT" --dashboard-agent-listen-port "$AGENT_PORT" \
  --num-cpus "$NUM_CPUS" --num-gpus "$NUM_GPUS" --disable-usage-stats >"$TEMP_DIR/head.log" 2>&1 &
HEAD_PID=$!
echo "xel: ray head pid $HEAD_PID (temp dir $TEMP_DIR, dashboard http://127.0.0.1:$DASHBOARD_PORT)"

ADDRESS="http://127.0.0.1:$DASHBOARD_PORT"
ready=0
for _ in $(seq 1 120); do
  if ! kill -0 "$HEAD_PID" 2>/dev/null; then
    echo "xel: ray head exited before its dashboard came up; its log:" >&2
    cat "$TEMP_DIR/head.log" >&2
    exit 1
  fi
  if "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "$ADDRESS/api/version" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.5
done
if ((!ready)); then
  echo "xel: the dashboard at $ADDRESS did not answer within 60 s; head log:" >&2
  cat "$TEMP_DIR/head.log" >&2
  exit 1
fi

SUBMISSION_ID="xel-precompute-$(date +%Y%m%d-%H%M%S)-$$"
cd "$REPO_ROOT"
RUNTIME_ENV='{"excludes": ["models/", "runs/", "h5/", "index/", ".git/", ".venv/", "build/", "*.egg-info/"],
  "env_vars": {"HDF5_USE_FILE_LOCKING": "FALSE"}}'
# in the background and waited for, so that a signal to this script runs the trap at once
"$RAY" job submit --address "$ADDRESS" --submission-id "$SUBMISSION_ID" --working-dir . \
  --runtime-env-json "$RUNTIME_ENV" \
  -- python precompute/run.py "${args[@]}" &
SUBMIT_PID=$!
SUBMIT_STATUS=0
wait "$SUBMIT_PID" || SUBMIT_STATUS=$?
SUBMIT_PID=""
# `ray job submit` says 0 or 1; the driver's own exit code is in the job's details
JOB_STATUS="$("$PYTHON" -c '
import json, sys, urllib.request
details = json.load(urllib.request.urlopen(sys.argv[1], timeout=10))
code = details.get("driver_exit_code")
print(code if isinstance(code, int) else "")
' "$ADDRESS/api/jobs/$SUBMISSION_ID" 2>/dev/null || true)"
exit "${JOB_STATUS:-$SUBMIT_STATUS}"
