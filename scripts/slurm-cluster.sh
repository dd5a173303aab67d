#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the Slurm tests: no systemd, no cgroups, loopback only.
#   scripts/slurm-cluster.sh up       install the Debian packages if missing, start, wait for a finished job (root)
#   scripts/slurm-cluster.sh down     stop the daemons `up` started, by their pid files
#   scripts/slurm-cluster.sh status   exit 0 if the cluster answers, 1 if not
# Everything lives in RUNTREE_SLURM_DIR (default /var/lib/runtree-slurm): configuration, controller state, the
# accounting database, logs, pid files and two fake GPUs. Clients find the configuration through the symlink
# /etc/slurm/slurm.conf (or SLURM_CONF=$RUNTREE_SLURM_DIR/etc/slurm.conf).
# Exit codes: 0 done; 1 failed (the log's tail is printed); 77 cannot run here (not root, no apt) - tests skip.
set -euo pipefail

STATE=${RUNTREE_SLURM_DIR:-/var/lib/runtree-slurm}
PARTITION=${RUNTREE_SLURM_PARTITION:-debug}
DB_PORT=${RUNTREE_SLURM_DB_PORT:-6820}
# scancel sends SIGTERM, then SIGKILL after this; submitit jobs ignore SIGTERM, and no job starts on the node meanwhile.
KILL_WAIT=${RUNTREE_SLURM_KILL_WAIT:-2}
# Slots the node offers: its cores (config_overrides would let it claim more).
CPUS=${RUNTREE_SLURM_CPUS:-$(nproc)}
CLUSTER=runtree
NODE=$(hostname -s)
ETC=$STATE/etc RUN=$STATE/run LOG=$STATE/log
export SLURM_CONF=$ETC/slurm.conf
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
COMMANDS=(slurmctld slurmd sbatch sacct sacctmgr sinfo slurmdbd munged munge mariadbd mariadb mariadb-install-db)
T0=$(date +%s.%N)

say() { echo "slurm-cluster: $*"; }
elapsed() { echo "$(date +%s.%N) $T0" | awk '{printf "%.1f", $1 - $2}'; }
pidfile() { case $1 in munged) echo "$RUN/munge/munged.pid" ;; mariadbd) echo "$RUN/mysqld/mariadbd.pid" ;;
  *) echo "$RUN/$1.pid" ;; esac; }

# The pid of our running daemon NAME, or nothing. The name check keeps a reused pid from being taken for ours.
ourpid() {
  local f pid
  f=$(pidfile "$1")
  [[ -s $f ]] || return 0
  pid=$(tr -dc 0-9 <"$f")
  [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]] && echo "$pid"
  return 0
}

cluster_answers() {
  [[ -n $(ourpid slurmctld) ]] || return 1
  timeout 10 sinfo -h -p "$PARTITION" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

# stop NAME...: SIGTERM to each of ours, then wait until all are gone (SIGKILL after 15 s).
stop() {
  local name pid pids=() names=() i
  for name in "$@"; do
    pid=$(ourpid "$name")
    [[ -z $pid ]] && { rm -f "$(pidfile "$name")"; continue; }
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid") names+=("$name")
  done
  for i in "${!pids[@]}"; do
    pid=${pids[i]} name=${names[i]}
    for _ in $(seq 150); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    if [[ -d /proc/$pid ]]; then
      say "$name ($pid) ignored SIGTERM for 15 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 50); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    fi
    rm -f "$(pidfile "$name")"
    say "stopped $name ($pid)"
  done
}

# Reverse start order; the database and munge depend on nothing of each other, so they stop together.
stop_all() { stop slurmd; stop slurmctld; stop slurmdbd; stop mariadbd munged; }

# On a failed `up`: say why, show the log that explains it, stop whatever runs.
fail() {
  local msg=$1 log=${2:-}
  say "up failed: $msg"
  [[ -n $log && -f $log ]] && { echo "--- last lines of $log:"; tail -n 25 "$log"; echo "---"; }
  stop_all >/dev/null
  exit 1
}

# wait_for SECONDS DAEMON LOG CMD...: poll CMD until it succeeds; stop early if DAEMON died.
wait_for() {
  local secs=$1 daemon=$2 log=$3
  shift 3
  local deadline
  deadline=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    [[ -z $daemon || -n $(ourpid "$daemon") ]] || fail "$daemon exited during start-up" "$log"
    (($(date +%s) < deadline)) || fail "no answer from '$*' after $secs s" "$log"
    sleep 0.1
  done
}

install_packages() {
  local missing=() c
  for c in "${COMMANDS[@]}"; do command -v "$c" >/dev/null || missing+=("$c"); done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || { say "cannot run here: ${missing[*]} missing and no apt-get"; exit 77; }
  say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q "${PACKAGES[@]}" >"$LOG/apt.log" 2>&1; then
    apt-get update -q >>"$LOG/apt.log" 2>&1 || true
    apt-get install -y -q "${PACKAGES[@]}" >>"$LOG/apt.log" 2>&1 ||
      { tail -n 15 "$LOG/apt.log"; say "cannot run here: apt-get install failed (see $LOG/apt.log)"; exit 77; }
  fi
}

write_config() {
  local pass
  [[ -s $ETC/db.pass ]] || (umask 077 && od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$ETC/db.pass")
  pass=$(cat "$ETC/db.pass")
  cat >"$ETC/slurm.conf" <<EOF
# Written by scripts/slurm-cluster.sh; rewritten on every \`up\`.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStorageTRES=gres/gpu
ReturnToService=2
KillWait=$KILL_WAIT
MpiDefault=none
MailProg=/bin/true
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Gres=gpu:2 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$ETC/gres.conf" <<EOF
AutoDetect=off
NodeName=$NODE Name=gpu File=$STATE/dev/nvidia[0-1]
EOF
  (umask 077 && cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$NODE
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF
  )
  chmod 600 "$ETC/slurmdbd.conf"
}

prepare_dirs() {
  mkdir -p "$ETC" "$LOG" "$STATE/ctld" "$STATE/slurmd" "$STATE/dev" "$RUN"
  chmod 755 "$STATE" "$RUN" "$LOG"
  install -d -o munge -g munge -m 700 "$RUN/munge"
  install -d -o mysql -g mysql -m 755 "$RUN/mysqld"
  install -d -o munge -g munge -m 755 /run/munge
  local f
  for f in munged mariadbd; do
    touch "$LOG/$f.log"
    chown "$([[ $f == munged ]] && echo munge || echo mysql)" "$LOG/$f.log"
    chmod 640 "$LOG/$f.log"
  done
  local i
  for i in 0 1; do
    [[ -c $STATE/dev/nvidia$i ]] || { rm -f "$STATE/dev/nvidia$i"; mknod -m 666 "$STATE/dev/nvidia$i" c 195 $i; }
  done
  if [[ -e /etc/slurm/slurm.conf || -L /etc/slurm/slurm.conf ]] &&
    [[ $(readlink /etc/slurm/slurm.conf) != "$ETC/slurm.conf" ]]; then
    [[ -L /etc/slurm/slurm.conf ]] || fail "/etc/slurm/slurm.conf exists and is not ours; move it away"
  fi
  mkdir -p /etc/slurm
  ln -sfn "$ETC/slurm.conf" /etc/slurm/slurm.conf
  if [[ ! -s /etc/munge/munge.key ]]; then
    install -d -o munge -g munge -m 700 /etc/munge
    (umask 077 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none)
    chown munge:munge /etc/munge/munge.key
  fi
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [[ -n $(ourpid munged) ]] || say "using the munged already running (not ours: \`down\` leaves it)"
    return 0
  fi
  runuser -u munge -- munged --pid-file="$(pidfile munged)" --log-file="$LOG/munged.log" 9>&- ||
    fail "munged did not start" "$LOG/munged.log"
  wait_for 20 munged "$LOG/munged.log" bash -c 'munge -n | unmunge'
}

sql() { mariadb --no-defaults --socket="$RUN/mysqld/mysqld.sock" -u root -e "$1"; }

start_mariadb() {
  local fresh_db=0
  if [[ ! -d $STATE/mysql/mysql ]]; then
    rm -rf "$STATE/mysql"
    install -d -o mysql -g mysql -m 750 "$STATE/mysql"
    mariadb-install-db --no-defaults --datadir="$STATE/mysql" --user=mysql --skip-test-db \
      --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 ||
      fail "mariadb-install-db failed" "$LOG/mariadb-install.log"
    fresh_db=1
  fi
  setsid mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql" --socket="$RUN/mysqld/mysqld.sock" \
    --pid-file="$(pidfile mariadbd)" --log-error="$LOG/mariadbd.log" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --skip-name-resolve --performance-schema=OFF --innodb-buffer-pool-size=32M </dev/null >/dev/null 2>&1 9>&- &
  local pid=$! i
  for i in $(seq 300); do
    [[ -n $(ourpid mariadbd) ]] && break
    [[ -d /proc/$pid ]] || fail "mariadbd exited during start-up" "$LOG/mariadbd.log"
    sleep 0.1
  done
  wait_for 60 mariadbd "$LOG/mariadbd.log" sql 'select 1'
  local pass
  pass=$(cat "$ETC/db.pass")
  # Ids restart at 1 with a fresh controller state; old jobs in the database would clash with them in sacct.
  if [[ ! -e $STATE/ctld/job_state && $fresh_db == 0 ]]; then
    say "fresh controller state: dropping the old accounting database"
    sql 'DROP DATABASE IF EXISTS slurm_acct_db' || fail "could not drop slurm_acct_db" "$LOG/mariadbd.log"
  fi
  sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
       ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
       GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || fail "could not create the database user"
}

start_slurm_daemon() {
  local name=$1 log=$LOG/$1.log
  shift
  "$name" "$@" 9>&- || fail "$name did not start" "$log"
  local i
  for i in $(seq 100); do [[ -n $(ourpid "$name") ]] && return 0; sleep 0.1; done
  fail "$name wrote no pid file" "$log"
}

# The first batch jobs after slurmctld starts wait a few seconds; a finished warm-up job means tests won't.
warm_up() {
  local out job state deadline
  deadline=$(($(date +%s) + 60))
  out=$(sbatch --parsable -p "$PARTITION" -J runtree-warm-up -o /dev/null --wrap true 2>&1) ||
    fail "warm-up sbatch refused: $out" "$LOG/slurmctld.log"
  job=${out%%;*}
  while :; do
    state=$(sacct -n -X -P -j "$job" -o State 2>/dev/null | head -n1)
    [[ $state == COMPLETED ]] && return 0
    [[ $state =~ ^(FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL) ]] &&
      fail "warm-up job $job ended $state" "$LOG/slurmd.log"
    (($(date +%s) < deadline)) || fail "warm-up job $job not COMPLETED after 60 s (state '$state')" "$LOG/slurmctld.log"
    sleep 0.1
  done
}

up() {
  [[ $(id -u) == 0 ]] || { say "cannot run here: \`up\` needs root (it installs packages and starts daemons)"; exit 77; }
  mkdir -p "$STATE/log"
  exec 9>"$STATE/.lock"
  flock 9
  if cluster_answers; then
    say "already up: partition $PARTITION (node $NODE); state $STATE"
    return 0
  fi
  stop_all >/dev/null  # leftovers of a half-started or crashed cluster
  install_packages
  prepare_dirs
  write_config
  start_munge
  start_mariadb
  start_slurm_daemon slurmdbd
  wait_for 30 slurmdbd "$LOG/slurmdbd.log" sacctmgr -n list cluster
  if [[ -z $(sacctmgr -n -P list cluster format=cluster where cluster="$CLUSTER" 2>/dev/null) ]]; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr could not add cluster $CLUSTER" "$LOG/slurmdbd.log"
  fi
  start_slurm_daemon slurmctld
  start_slurm_daemon slurmd
  wait_for 30 slurmd "$LOG/slurmctld.log" cluster_answers
  warm_up
  say "ready in $(elapsed) s: partition $PARTITION (node $NODE, $CPUS CPUs, gpu:2); state $STATE"
}

down() {
  [[ -d $STATE ]] || { say "nothing to stop (no $STATE)"; return 0; }
  if [[ -w $STATE ]]; then
    exec 9>"$STATE/.lock"
    flock 9
  fi
  stop_all
  say "down"
}

status() {
  if cluster_answers; then
    say "up: partition $PARTITION (node $NODE); state $STATE"
  else
    say "not up"
    return 1
  fi
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
