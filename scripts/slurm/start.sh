#!/usr/bin/env bash
# start.sh - a real single-node SLURM cluster on 127.0.0.1 for tests and CI (Debian 12, root,
# no systemd): installs slurm-wlm + munge (+ MariaDB/slurmdbd for accounting) with apt, writes
# a one-node slurm.conf and starts the daemons. Idempotent: a second call reuses the daemons it
# started (restarting them only if the generated config changed).
#
#   env knobs (all optional):
#     SLURM_CI_DIR=/tmp/slurm-ci   config, state, logs, pids and database live here
#     SLURM_CI_ACCOUNTING=1         1 = MariaDB + slurmdbd, so `sacct` works: without it submitit
#                                   never notices a cancelled job and waits forever
#     SLURM_CI_DB_PORT=13306        TCP port of the private MariaDB (bound to 127.0.0.1)
#     SLURM_CI_SMOKE=1              run one trivial job at the end and wait for it
#     SLURM_CI_WIPE_STATE=0         1 = forget previous jobs (only when slurmctld is not running)
#     SLURM_CI_LINK_ETC=0           1 = also symlink /etc/slurm/slurm.conf to the generated file
#
#   afterwards:  source "$SLURM_CI_DIR/env.sh"   (exports SLURM_CONF) ; sinfo ; sbatch ...
#                tempint-train -m hydra/launcher=slurm model=limnet seed=1,2,3
#   stop:        scripts/slurm/stop.sh            (stops only the daemons this script started)
#
#   Partitions: `debug` (default, preemptible, 15 s grace) and `high` (preempts `debug`), so
#   requeue-on-preemption can be exercised for real.
set -Eeuo pipefail

PREFIX=${SLURM_CI_DIR:-/tmp/slurm-ci}
ACCOUNTING=${SLURM_CI_ACCOUNTING:-1}
DB_PORT=${SLURM_CI_DB_PORT:-13306}
SMOKE=${SLURM_CI_SMOKE:-1}
WIPE_STATE=${SLURM_CI_WIPE_STATE:-0}
LINK_ETC=${SLURM_CI_LINK_ETC:-0}
CLUSTER=ci   # the name slurmctld records in its state folder; keep it stable
CTLD_PORT=6817 SLURMD_PORT=6818 DBD_PORT=6819
DB_PASS=slurmci   # local-only database on 127.0.0.1

ETC=$PREFIX/etc RUN=$PREFIX/run LOG=$PREFIX/log STARTED=$PREFIX/run/started
CONF=$ETC/slurm.conf DBDCONF=$ETC/slurmdbd.conf
DBDATA=$PREFIX/mysql DBRUN=$PREFIX/dbrun DBSOCK=$PREFIX/dbrun/mysqld.sock
export SLURM_CONF=$CONF
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
T0=$(date +%s%N)

say() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '[recipe %4d.%01ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"; }
die() {
  echo "start.sh: ERROR: $*" >&2
  for f in "$LOG"/slurmctld.log "$LOG"/slurmd.log "$LOG"/slurmdbd.log "$DBRUN"/mariadb.err /var/log/munge/munged.log; do
    [ -s "$f" ] && { echo "---- last lines of $f" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

# ---------------------------------------------------------------- preconditions
[ "$(id -u)" = 0 ] || die "must run as root"
[ -r /etc/debian_version ] && command -v apt-get >/dev/null || die "needs a Debian system with apt-get"
mkdir -p "$PREFIX" "$ETC" "$RUN" "$LOG" "$STARTED" "$PREFIX/state" "$PREFIX/spool"
exec 9>"$PREFIX/.recipe.lock"
flock -w 300 9 || die "another start.sh holds $PREFIX/.recipe.lock"

# alive PID COMM: true if PID is a live (non-zombie) process whose comm is COMM
alive() {
  local pid=$1 comm=$2 st
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/stat" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
  st=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
  [ "$st" != Z ] && [ "$st" != X ]
}
# ours NAME COMM: true if the daemon NAME that we recorded is still running
ours() { local p; p=$(cat "$STARTED/$1.pid" 2>/dev/null || true); alive "$p" "$2"; }
port_busy() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.2 s
wait_for() {
  local t=$1 what=$2; shift 2
  local end=$(( $(date +%s) + t ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || die "timed out after ${t}s waiting for $what"
    sleep 0.2
  done
}
# record NAME COMM PIDFILE: wait for the daemon's own pidfile, check it, copy it to $STARTED
record() {
  local name=$1 comm=$2 pidfile=$3 pid="" end=$(( $(date +%s) + 30 ))
  while :; do
    pid=$(cat "$pidfile" 2>/dev/null || true)
    alive "$pid" "$comm" && break
    [ "$(date +%s)" -lt "$end" ] || die "$name did not come up (no live pid in $pidfile)"
    sleep 0.2
  done
  echo "$pid" >"$STARTED/$name.pid"
  say "$name running, pid $pid"
}
# stop_ours NAME COMM: TERM (then KILL) the recorded pid of NAME
stop_ours() {
  local name=$1 comm=$2 pid i
  pid=$(cat "$STARTED/$name.pid" 2>/dev/null || true)
  if alive "$pid" "$comm"; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do alive "$pid" "$comm" || break; sleep 0.2; done
    alive "$pid" "$comm" && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$STARTED/$name.pid"
}

# ---------------------------------------------------------------- 1. packages
PKGS=(munge slurmctld slurmd slurm-client)
[ "$ACCOUNTING" = 1 ] && PKGS+=(slurmdbd mariadb-server mariadb-client)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # keep maintainer scripts from starting the packaged init.d services (we start our own)
  POLICY_CREATED=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; POLICY_CREATED=1
  fi
  ok=0
  for attempt in 1 2 3; do
    if apt-get update -q >"$LOG/apt-update.log" 2>&1 &&
       apt-get install -y -q --no-install-recommends \
         -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
         "${missing[@]}" >"$LOG/apt-install.log" 2>&1; then ok=1; break; fi
    say "apt attempt $attempt failed; retrying"; sleep $((attempt * 5))
  done
  [ "$POLICY_CREATED" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$ok" = 1 ] || { tail -n 20 "$LOG/apt-install.log" "$LOG/apt-update.log" >&2 || true; die "apt-get install failed"; }
  say "packages installed"
fi
say "slurm $(/usr/sbin/slurmd -V 2>/dev/null | awk '{print $2}'), $(/usr/sbin/munged -V 2>&1 | awk '{print $1}')"

# ---------------------------------------------------------------- 2. munge
KEY=/etc/munge/munge.key
if [ ! -s "$KEY" ]; then
  say "creating munge key"
  install -d -o munge -g munge -m 0700 /etc/munge
  ( umask 077; dd if=/dev/urandom of="$KEY" bs=1024 count=1 status=none )
fi
chown munge:munge "$KEY"; chmod 0400 "$KEY"
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  ours munged munged && say "munged already running (ours)" || say "munged already running (not started by this recipe; reusing it)"
else
  rm -f /run/munge/munged.pid
  setpriv --reuid=munge --regid=munge --init-groups -- /usr/sbin/munged 9>&- \
    || die "munged failed to start (see /var/log/munge/munged.log)"
  record munged munged /run/munge/munged.pid
  wait_for 15 "munge to encode/decode" bash -c 'munge -n | unmunge'
fi

# ---------------------------------------------------------------- 3. config
read -r CPUS BOARDS SOCKETS CORES THREADS MEM < <(/usr/sbin/slurmd -C | head -1 | tr ' ' '\n' |
  awk -F= '{v[$1]=$2} END{print v["CPUs"], v["Boards"], v["SocketsPerBoard"], v["CoresPerSocket"], v["ThreadsPerCore"], v["RealMemory"]}')
[[ "$CPUS" =~ ^[0-9]+$ && "$MEM" =~ ^[0-9]+$ ]] || die "could not parse 'slurmd -C' output"
DEFMEM=$(( MEM / CPUS )); [ "$DEFMEM" -gt 1024 ] && DEFMEM=1024

if [ "$ACCOUNTING" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT"
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi

cat >"$CONF.new" <<EOF
# generated by scripts/slurm/start.sh - single node on 127.0.0.1, no cgroups, no systemd
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# credential lifetime = delay before a requeued job may start again (default 120 s)
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$PREFIX/state
SlurmdSpoolDir=$PREFIX/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEFMEM
JobAcctGatherType=jobacct_gather/none
$ACCT
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
EnforcePartLimits=ALL
MinJobAge=600
KillWait=5
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS Boards=$BOARDS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=1 GraceTime=15
PartitionName=high Nodes=localhost Default=NO MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=10 PreemptMode=OFF
EOF
CONF_CHANGED=0
if ! cmp -s "$CONF.new" "$CONF"; then mv "$CONF.new" "$CONF"; CONF_CHANGED=1; say "wrote $CONF"; else rm -f "$CONF.new"; fi

DBD_CHANGED=0
if [ "$ACCOUNTING" = 1 ]; then
  umask_old=$(umask); umask 077
  cat >"$DBDCONF.new" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  umask "$umask_old"
  if ! cmp -s "$DBDCONF.new" "$DBDCONF"; then mv "$DBDCONF.new" "$DBDCONF"; DBD_CHANGED=1; else rm -f "$DBDCONF.new"; fi
  chown root:root "$DBDCONF"; chmod 600 "$DBDCONF"
fi
printf 'export SLURM_CONF=%s\n' "$CONF" >"$PREFIX/env.sh"
if [ "$LINK_ETC" = 1 ]; then
  mkdir -p /etc/slurm
  if [ -e /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" != "$CONF" ]; then
    die "/etc/slurm/slurm.conf exists and is not ours; refusing to replace it"
  fi
  ln -sfn "$CONF" /etc/slurm/slurm.conf
fi

# restart our slurm daemons if their config changed under them
if [ "$CONF_CHANGED" = 1 ] || [ "$DBD_CHANGED" = 1 ]; then
  for d in slurmd slurmctld; do ours $d $d && { say "config changed: restarting $d"; stop_ours $d $d; }; done
  [ "$DBD_CHANGED" = 1 ] && ours slurmdbd slurmdbd && { say "config changed: restarting slurmdbd"; stop_ours slurmdbd slurmdbd; }
fi

# ---------------------------------------------------------------- 4. MariaDB + slurmdbd
if [ "$ACCOUNTING" = 1 ]; then
  install -d -o mysql -g mysql -m 0750 "$DBDATA"
  install -d -o mysql -g mysql -m 0755 "$DBRUN"
  if ours mariadbd mariadbd; then
    say "mariadbd already running (ours)"
  else
    port_busy "$DB_PORT" && die "port $DB_PORT (MariaDB) is already in use; set SLURM_CI_DB_PORT"
    if [ ! -d "$DBDATA/mysql" ]; then
      say "initialising MariaDB datadir"
      mariadb-install-db --no-defaults --user=mysql --datadir="$DBDATA" --skip-test-db \
        >"$LOG/mariadb-install.log" 2>&1 || { tail -n 20 "$LOG/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    rm -f "$DBRUN/mysqld.pid"
    setsid -f /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DBDATA" \
      --socket="$DBSOCK" --pid-file="$DBRUN/mysqld.pid" --log-error="$DBRUN/mariadb.err" \
      --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
      --innodb-buffer-pool-size=64M --innodb-use-native-aio=0 --innodb-lock-wait-timeout=900 \
      </dev/null >/dev/null 2>&1 9>&-
    record mariadbd mariadbd "$DBRUN/mysqld.pid"
  fi
  wait_for 60 "MariaDB to answer" mariadb-admin --no-defaults --socket="$DBSOCK" -uroot ping
  mariadb --no-defaults --socket="$DBSOCK" -uroot -e "
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    FLUSH PRIVILEGES;" || die "could not create the accounting database"

  if ours slurmdbd slurmdbd; then
    say "slurmdbd already running (ours)"
  else
    port_busy "$DBD_PORT" && die "port $DBD_PORT (slurmdbd) is already in use by another process"
    rm -f "$RUN/slurmdbd.pid"
    /usr/sbin/slurmdbd </dev/null 9>&- || die "slurmdbd failed to start"   # reads $ETC/slurmdbd.conf (dir of SLURM_CONF)
    record slurmdbd slurmdbd "$RUN/slurmdbd.pid"
  fi
  wait_for 60 "slurmdbd to answer" sacctmgr -n list cluster
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed"
    say "registered cluster '$CLUSTER' in slurmdbd"
  fi
fi

# ---------------------------------------------------------------- 5. slurmctld + slurmd
if ours slurmctld slurmctld; then
  say "slurmctld already running (ours)"
else
  port_busy "$CTLD_PORT" && die "port $CTLD_PORT (slurmctld) is already in use by another process"
  if [ "$WIPE_STATE" = 1 ]; then rm -rf "${PREFIX:?}/state"; mkdir -p "$PREFIX/state"; fi
  rm -f "$RUN/slurmctld.pid"
  /usr/sbin/slurmctld -f "$CONF" </dev/null 9>&- || die "slurmctld failed to start"
  record slurmctld slurmctld "$RUN/slurmctld.pid"
fi
wait_for 30 "slurmctld to answer 'scontrol ping'" bash -c 'scontrol ping | grep -q "is UP"'

if ours slurmd slurmd; then
  say "slurmd already running (ours)"
else
  port_busy "$SLURMD_PORT" && die "port $SLURMD_PORT (slurmd) is already in use by another process"
  rm -f "$RUN/slurmd.pid"
  /usr/sbin/slurmd -f "$CONF" -N localhost </dev/null 9>&- || die "slurmd failed to start"
  record slurmd slurmd "$RUN/slurmd.pid"
fi

node_ready() {
  local s; s=$(sinfo -h -n localhost -o %T 2>/dev/null | head -1)
  case "$s" in idle|mixed|allocated|completing) return 0 ;;
    down*|drain*|drained*|fail*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true; return 1 ;;
    *) return 1 ;; esac
}
wait_for 60 "node 'localhost' to become idle (sinfo)" node_ready
say "cluster up: $(sinfo -h -o '%P %a %D %T %N' | tr '\n' ';')"

# ---------------------------------------------------------------- 6. smoke test
if [ "$SMOKE" = 1 ]; then
  out=$(timeout 120 sbatch --wait --parsable -J recipe-smoke -o /dev/null --wrap 'true' 2>&1) \
    || die "smoke job failed: $out"
  say "smoke job ${out%%;*} completed"
fi
say "done. Use: source $PREFIX/env.sh   (SLURM_CONF=$CONF)"
say "stop with: $(dirname "$(readlink -f "$0")")/stop.sh"
