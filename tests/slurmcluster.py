"""A throw-away single-node SLURM cluster on localhost for the tests (Debian's slurm-wlm + munge).

Everything lives in one folder: its own munge key and socket (so a system munged, if any,
is untouched), a generated ``slurm.conf`` on free ports, state/spool/log files.  Clients
find it through ``SLURM_CONF``.  Needs root (slurmd runs jobs as their submitter).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


class ClusterUnavailable(RuntimeError):
    """slurmctld/slurmd/munged cannot start here (reason in the message)."""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb():
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 2048


class LocalSlurm:
    def __init__(self, root):
        self.root = Path(root)
        self.env = {}
        self.procs = []

    def start(self, timeout=30):
        missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue") if shutil.which(b) is None]
        if missing:
            raise ClusterUnavailable(f"SLURM/munge not installed ({', '.join(missing)} missing; "
                                     "`apt-get install slurm-wlm munge`)")
        if os.geteuid() != 0:
            raise ClusterUnavailable("a local SLURM cluster needs root (slurmd runs jobs as their user)")
        r = self.root
        for sub in ("state", "spool", "munge"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        sock = r / "munge" / "munge.sock"
        munged = subprocess.run(["munged", "--force", f"--socket={sock}", f"--key-file={key}",
                                 f"--pid-file={r / 'munge' / 'munged.pid'}", f"--log-file={r / 'munge' / 'munged.log'}",
                                 f"--seed-file={r / 'munge' / 'munged.seed'}"], capture_output=True, text=True)
        if munged.returncode != 0:
            raise ClusterUnavailable(f"munged did not start: {munged.stderr.strip()[-500:]}")
        cpus = os.cpu_count() or 1
        conf = r / "slurm.conf"
        conf.write_text("\n".join([
            "ClusterName=qsmprepci", "SlurmctldHost=localhost", "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={sock}",
            f"StateSaveLocation={r / 'state'}", f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}", f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'slurmctld.log'}", f"SlurmdLogFile={r / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "SchedulerType=sched/builtin",
            # start a job as soon as its dependency ends: the default batch_sched_delay (3 s)
            # gave one start per 3 s (measured: a chain of 8 dependent 0.2 s jobs took 26 s,
            # 12 s with 0), which made the ~1 s steps of the small demo wait 3x their run time
            "SchedulerParameters=batch_sched_delay=0",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory", "ReturnToService=2",
            "MpiDefault=none", "MinJobAge=600", "SlurmctldTimeout=30", "SlurmdTimeout=30",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={max(1024, _mem_mb() - 1024)} State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP", ""]))
        self.env = {"SLURM_CONF": str(conf)}
        env = {**os.environ, **self.env}
        for cmd in (["slurmctld", "-f", str(conf)], ["slurmd", "-f", str(conf), "-N", "localhost"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                self.stop()
                raise ClusterUnavailable(f"{cmd[0]} did not start: {proc.stderr.strip()[-500:]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env)
            if info.returncode == 0 and info.stdout.strip() in ("idle", "mixed", "allocated"):
                return self
            time.sleep(0.5)
        log = (r / "slurmctld.log").read_text()[-800:] if (r / "slurmctld.log").exists() else ""
        self.stop()
        raise ClusterUnavailable(f"the SLURM node did not become idle in {timeout} s: {log}")

    def wait_idle(self, timeout=900):
        """Wait until the queue is empty."""
        env = {**os.environ, **self.env}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            q = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=env)
            if q.returncode == 0 and not q.stdout.strip():
                return
            time.sleep(2)
        raise TimeoutError("SLURM queue not empty")

    def jobs(self):
        """``scontrol show job`` records (one dict per job still known to slurmctld)."""
        env = {**os.environ, **self.env}
        out = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True, env=env).stdout
        records = []
        for line in out.splitlines():
            rec = {}
            for item in line.split():
                if "=" in item:
                    k, v = item.split("=", 1)
                    rec[k] = v
            if rec:
                records.append(rec)
        return records

    def stop(self):
        env = {**os.environ, **self.env}
        if self.env:
            subprocess.run(["scontrol", "shutdown"], capture_output=True, env=env)
        for pidfile in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            path = self.root / pidfile
            try:
                os.kill(int(path.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
