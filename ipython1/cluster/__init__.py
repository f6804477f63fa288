"""Clusters and the nodes they run on.

Clusters from Python and their size: ipython1.Cluster, ipcluster engines
add/remove (handle.py, resize.py), and the engine supervisor (ipcluster start
--restart-engines). Launchers that get nodes for engines: ssh,
Slurm, SGE, PBS, LSF (ipcluster start --engines).

``local`` and ``mpiexec`` engines are started by ``ipcluster`` itself (forked
engines, one mpiexec); every other kind is an :class:`ILauncher` here, chosen
by name and rebuilt from its record for ``ipcluster status`` and ``stop``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from ipython1.cluster.batch import BatchLauncher, BatchOptions
from ipython1.cluster.launcher import (
    EngineCommand,
    ILauncher,
    LaunchError,
    Runner,
    clear_state,
    load_state,
    run_command,
    save_state,
)
from ipython1.cluster.lsf import LSFLauncher
from ipython1.cluster.pbs import PBSLauncher
from ipython1.cluster.sge import SGELauncher
from ipython1.cluster.slurm import SlurmLauncher, SlurmStepLauncher, in_allocation
from ipython1.cluster.ssh import SSHLauncher
from ipython1.common.clusterdir import ClusterDir

__all__ = [
    "BATCH_LAUNCHERS", "ENGINE_KINDS", "EngineCommand", "ILauncher", "LaunchError",
    "BatchOptions", "clear_state", "launcher_from_state", "load_state", "make_launcher",
    "save_state",
]

BATCH_LAUNCHERS: dict[str, type[BatchLauncher]] = {
    "slurm": SlurmLauncher, "sge": SGELauncher, "pbs": PBSLauncher, "lsf": LSFLauncher,
}
ENGINE_KINDS = ("local", "mpiexec", "ssh", *BATCH_LAUNCHERS)
_REBUILD: dict[str, Any] = {**BATCH_LAUNCHERS, "ssh": SSHLauncher,
                            "slurm-step": SlurmStepLauncher}


def make_launcher(kind: str, cluster_dir: ClusterDir, engine: EngineCommand,
                  options: Mapping[str, Any], environ: Mapping[str, str],
                  run: Runner = run_command) -> Any:
    """Return the launcher for --engines kind, configured from ipcluster's start options."""
    if kind == "ssh":
        return SSHLauncher.from_options(cluster_dir, engine, options.get("hosts"),
                                        options.get("hostfile"), options.get("ssh-args") or "",
                                        supervised=bool(options.get("restart-engines")))
    if kind not in BATCH_LAUNCHERS:
        raise LaunchError(f"unknown --engines {kind!r}: choose one of {', '.join(ENGINE_KINDS)}")
    if kind == "slurm" and in_allocation(environ):
        return SlurmStepLauncher(cluster_dir, engine, shlex.split(options.get("srun-args") or ""),
                                 environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID", ""))
    batch = BatchOptions(
        queue=options.get("queue"), time=options.get("time"), template=options.get("template"),
        engines_per_job=options.get("engines-per-job"),
        extra_args=list(options.get("sbatch-arg") or []) if kind == "slurm"
        else list(options.get("batch-arg") or []),
        partition=options.get("partition"), account=options.get("account"),
        qos=options.get("qos"), srun_args=shlex.split(options.get("srun-args") or ""))
    if kind != "slurm":
        for name in ("partition", "account", "qos", "sbatch-arg"):
            if options.get(name):
                raise LaunchError(f"--{name} is for --engines slurm")
    try:
        return BATCH_LAUNCHERS[kind](cluster_dir, engine, batch, run)
    except ValueError as e:
        raise LaunchError(str(e)) from None


def launcher_from_state(cluster_dir: ClusterDir, run: Runner = run_command) -> Any | None:
    """Rebuild the launcher recorded by `ipcluster start`, or None when there is none."""
    data = load_state(cluster_dir)
    if not data or data.get("launcher") not in _REBUILD:
        return None
    return _REBUILD[data["launcher"]].from_state(cluster_dir, data, run)
