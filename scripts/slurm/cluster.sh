#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, from Debian's packages, for `make test-slurm`:
# munged, mariadbd (for slurmdbd, which `sacct` and therefore submitit need), slurmdbd, slurmctld and slurmd,
# every one started here, with all its state, logs, sockets and pid files under one folder ($SLURM_TEST_DIR,
# default .slurm-test/ of the checkout, git-ignored), on ports that were free when it came up.
#
#   bash scripts/slurm/cluster.sh install   # the Debian packages, when missing (idempotent; root and apt-get)
#   bash scripts/slurm/cluster.sh up        # start the daemons; prints the SLURM_CONF to export
#   bash scripts/slurm/cluster.sh down      # cancel the jobs, stop exactly the daemons started by `up` (pid files)
#   bash scripts/slurm/cluster.sh status    # which of them are running
#
# Nothing here touches the system's own Slurm, munge or MariaDB set-up: no service is started (there is no systemd
# on this machine kind, and Debian's policy-rc.d keeps the packages' scripts from starting theirs).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
S="${SLURM_TEST_DIR:-$ROOT/.slurm-test}"
CLUSTER=identitystudy
DAEMONS=(slurmd slurmctld slurmdbd mariadbd munged)     # the order they are stopped in

log() { echo "[slurm-test] $*" >&2; }

install_packages() {
  local need=()
  command -v slurmctld >/dev/null || need+=(slurmctld)
  command -v slurmd >/dev/null || need+=(slurmd)
  command -v sbatch >/dev/null || need+=(slurm-client)
  command -v munged >/dev/null || need+=(munge)
  command -v slurmdbd >/dev/null || need+=(slurmdbd)
  command -v mariadbd >/dev/null || need+=(mariadb-server)
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    log "missing Debian packages: ${need[*]}; install them with: sudo apt-get install ${need[*]}"
    exit 1
  fi
  log "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # the packages' scripts must not start the stock daemons (munge, mariadb, slurm*): a deny-all policy-rc.d while
  # installing, where the machine has none of its own
  local policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 0755 "$policy"
  fi
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null || {
    [ -n "$policy" ] && rm -f "$policy"; exit 1; }
  [ -n "$policy" ] && rm -f "$policy"
  return 0
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# the pid file of daemon $1 (munged's lives in the munge-owned folder: munged refuses a pid file in a shared one)
pidfile() { if [ "$1" = munged ]; then echo "$S/munge/munged.pid"; else echo "$S/run/$1.pid"; fi; }

# whether daemon $1 of its pid file is alive and is that program (a pid file of a dead daemon may name a reused pid)
alive() {
  local pid
  [ -s "$(pidfile "$1")" ] || return 1
  pid="$(tr -dc 0-9 < "$(pidfile "$1")")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "$1"
}

# wait (at most $1 seconds) until the command "$2..." succeeds; every try is itself bounded by `timeout`
wait_for() {
  local deadline=$((SECONDS + $1)) what="$2"; shift 2
  until timeout 5 "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "timed out waiting for $what; logs in $S/log"
      tail -n 20 "$S"/log/*.log >&2 || true
      return 1
    fi
    sleep 0.3
  done
}

write_configs() {
  local ctld_port slurmd_port dbd_port db_port cpus mem
  ctld_port=$(free_port); slurmd_port=$(free_port); dbd_port=$(free_port); db_port=$(free_port)
  # the node as slurmd detects it (RealMemory above the detected value would mark the node INVAL)
  cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  cat > "$S/slurm.conf" <<EOF
# written by scripts/slurm/cluster.sh: a one-node test cluster, all state under $S
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$S/munge/munge.socket,cred_expire=10
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/run/slurmctld.pid
SlurmdPidFile=$S/run/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
MailProg=/bin/true
MpiDefault=none
KillWait=5
MinJobAge=600
# sacct through slurmdbd; slurmctld takes the munge socket for it from AccountingStoragePass, not from AuthInfo
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
AccountingStoragePass=$S/munge/munge.socket
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$S/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$S/munge/munge.socket
DbdHost=localhost
DbdPort=$dbd_port
SlurmUser=root
PidFile=$S/run/slurmdbd.pid
LogFile=$S/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=slurm-test
StorageLoc=slurm_acct_db
EOF
  chmod 0600 "$S/slurmdbd.conf"     # slurmdbd refuses a config that others can read
  echo "$db_port" > "$S/mariadb.port"
}

up() {
  install_packages
  if alive slurmctld || alive slurmd || alive slurmdbd || alive mariadbd || alive munged; then
    log "some daemons of $S are running already; bringing them down first"
    down
  fi
  trap 'log "bringing the cluster up failed: stopping what was started"; down; exit 1' ERR
  rm -rf "$S"
  mkdir -p "$S"/{run,log,state,spool,munge,mariadb}
  write_configs
  export SLURM_CONF="$S/slurm.conf"

  # munge: a key of our own, the daemon as the munge user on a socket of our own
  chown munge:munge "$S/munge"
  mungekey --create --keyfile="$S/munge/munge.key" >/dev/null
  chown munge:munge "$S/munge/munge.key"; chmod 0600 "$S/munge/munge.key"
  runuser -u munge -- munged --socket="$S/munge/munge.socket" --key-file="$S/munge/munge.key" \
    --pid-file="$S/munge/munged.pid" --log-file="$S/munge/munged.log" --seed-file="$S/munge/munge.seed"
  wait_for 20 munged munge --socket="$S/munge/munge.socket" -n

  # MariaDB for slurmdbd: a private server on 127.0.0.1 and a port of our own
  local db_port; db_port=$(cat "$S/mariadb.port")
  mariadb-install-db --no-defaults --user=root --datadir="$S/mariadb/data" --auth-root-authentication-method=socket \
    --skip-test-db > "$S/log/mariadb-install.log" 2>&1
  (mariadbd --no-defaults --user=root --datadir="$S/mariadb/data" --port="$db_port" --bind-address=127.0.0.1 \
     --socket="$S/mariadb/mariadb.sock" --pid-file="$S/run/mariadbd.pid" --log-error="$S/log/mariadbd.log" \
     --skip-log-bin --innodb-buffer-pool-size=64M < /dev/null > /dev/null 2>&1 &)
  wait_for 60 mariadbd mariadb --no-defaults --socket="$S/mariadb/mariadb.sock" -u root -e "select 1"
  mariadb --no-defaults --socket="$S/mariadb/mariadb.sock" -u root -e "
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-test';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-test';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

  slurmdbd       # it reads the slurmdbd.conf beside slurm.conf ($SLURM_CONF)
  wait_for 60 slurmdbd sacctmgr -i list cluster
  timeout 20 sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
  slurmctld
  wait_for 60 "slurmctld UP" bash -c 'scontrol ping | grep -q UP'
  slurmd -N localhost
  wait_for 60 "the node to be idle" bash -c 'sinfo -h -N -o %t | grep -qx idle'
  wait_for 30 sacct sacct -n -X
  trap - ERR
  log "up: export SLURM_CONF=$S/slurm.conf"
  echo "$S/slurm.conf"
}

# stop one daemon by its pid file: TERM, then KILL after a deadline; nothing else is signalled
stop() {
  local name=$1 pid deadline
  alive "$name" || { rm -f "$(pidfile "$name")"; return 0; }
  pid="$(tr -dc 0-9 < "$(pidfile "$name")")"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + 15))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not stop in 15 s: killed"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$(pidfile "$name")"
}

down() {
  [ -d "$S" ] || return 0
  export SLURM_CONF="$S/slurm.conf"
  if alive slurmctld; then   # the jobs first, so that no job step (slurmstepd) outlives its slurmd
    timeout 10 scancel --full --quiet --state=PENDING,RUNNING,SUSPENDED,REQUEUED -u "$(id -un)" 2>/dev/null || true
    timeout 10 scancel --quiet -u "$(id -un)" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while [ -n "$(timeout 5 squeue -h -o %i 2>/dev/null || true)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
  fi
  for d in "${DAEMONS[@]}"; do stop "$d"; done
  log "down: every daemon started from $S is stopped"
}

status() {
  for d in "${DAEMONS[@]}"; do
    if alive "$d"; then echo "$d running (pid $(cat "$(pidfile "$d")"))"; else echo "$d stopped"; fi
  done
}

case "${1:-}" in
  install) install_packages ;;
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac
