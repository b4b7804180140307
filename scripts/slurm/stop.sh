#!/usr/bin/env bash
# stop.sh - stop the daemons that scripts/slurm/start.sh started, by the PIDs it recorded
# (never by name), so a cluster someone else runs is left alone.
#   SLURM_CI_DIR=/tmp/slurm-ci   same as for start.sh
#   SLURM_CI_CANCEL_JOBS=1        first scancel every job of this cluster (so no slurmstepd lingers)
set -uo pipefail
PREFIX=${SLURM_CI_DIR:-/tmp/slurm-ci}
STARTED=$PREFIX/run/started
CANCEL=${SLURM_CI_CANCEL_JOBS:-1}
export SLURM_CONF=$PREFIX/etc/slurm.conf
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

alive() {
  local pid=$1 comm=$2 st
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/stat" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
  st=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
  [ "$st" != Z ] && [ "$st" != X ]
}

[ -d "$STARTED" ] || { echo "stop.sh: nothing recorded in $STARTED"; exit 0; }

if [ "$CANCEL" = 1 ] && [ -s "$STARTED/slurmctld.pid" ] && alive "$(cat "$STARTED/slurmctld.pid")" slurmctld; then
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    echo "stop.sh: cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null || true
    for _ in $(seq 50); do [ -z "$(timeout 5 squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

rc=0
for name in slurmd slurmctld slurmdbd mariadbd munged; do
  f=$STARTED/$name.pid
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if alive "$pid" "$name"; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 150); do alive "$pid" "$name" || break; sleep 0.2; done
    if alive "$pid" "$name"; then
      echo "stop.sh: $name (pid $pid) ignored SIGTERM for 30 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null
      sleep 0.5
    fi
    if alive "$pid" "$name"; then echo "stop.sh: could not stop $name (pid $pid)"; rc=1; continue; fi
    echo "stop.sh: stopped $name (pid $pid)"
  else
    echo "stop.sh: $name (pid $pid) was not running"
  fi
  rm -f "$f"
done
exit $rc
