#!/usr/bin/env bash
# A single-node SLURM on this machine (munge, slurmctld and slurmd on localhost), for the tests of
# `fpt sweep --launcher slurm` (tests/test_slurm.py). Needs root and Debian's slurm-wlm and munge
# packages (.ci/run installs them). Does nothing when `sinfo` already shows a usable node; takes a few
# seconds otherwise. Writes /etc/slurm/slurm.conf only when there is none or it is this script's own
# (ClusterName=fptci); state and logs go to $FPT_SLURM_DIR (default /tmp/fpt-slurm).
set -euo pipefail

usable() { sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc|comp)'; }
if usable; then echo "slurm: already up"; exit 0; fi
for tool in munged slurmctld slurmd sinfo; do
  command -v "$tool" >/dev/null || { echo "slurm: $tool not found (apt-get install slurm-wlm munge)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "slurm: starting the daemons needs root" >&2; exit 1; }

dir=${FPT_SLURM_DIR:-/tmp/fpt-slurm}
mkdir -p "$dir/state" "$dir/spool" /etc/slurm

# munge: the key the package made (or one made now), its run directory, the daemon as the munge user
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
  [ -s /etc/munge/munge.key ] || { command -v mungekey >/dev/null && mungekey -c -f -k /etc/munge/munge.key \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
  chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
  chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
  su -s /bin/sh munge -c munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
fi

conf=/etc/slurm/slurm.conf
if [ -f "$conf" ] && ! grep -q '^ClusterName=fptci' "$conf"; then
  echo "slurm: $conf belongs to another cluster; not touching it" >&2; exit 1
fi
host=$(hostname -s)
memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
cat > "$conf" <<EOF
# written by fpt's .ci/slurm.sh: a single-node SLURM for tests
ClusterName=fptci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
NodeName=$host CPUs=$(nproc) RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 100); do usable && { echo "slurm: up ($host)"; exit 0; }; sleep 0.3; done
scontrol update nodename="$host" state=resume 2>/dev/null || true
for _ in $(seq 30); do usable && { echo "slurm: up ($host)"; exit 0; }; sleep 0.3; done
echo "slurm: the node did not come up; sinfo says:" >&2; sinfo >&2 || true
tail -5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
exit 1
