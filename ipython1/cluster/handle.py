"""A cluster started and stopped from Python: ``ipython1.Cluster`` (as ipyparallel's).

::

    from ipython1 import Cluster

    with Cluster(n=4) as mec:           # controller + 4 engines, stopped at the end
        mec.map(abs, range(-8, 0))

    cluster = Cluster(n=2, profile="lab").start()
    tc = cluster.task_client()
    cluster.add_engines(2)
    cluster.stop()

It does what ``ipcluster start --daemon`` and ``ipcluster stop`` do, in this
process (the controller and engines are processes of their own), so the
profile's cluster directory is the usual one (``$IPYTHON1_DIR``), and
``ipcluster status`` / ``engines add`` work on it from a shell too. A cluster
still running when the interpreter exits is stopped then.
"""

from __future__ import annotations

import atexit
import io
from typing import Any

from ipython1.cluster import ENGINE_KINDS, resize
from ipython1.common.clusterdir import ClusterDir
from ipython1.scripts import ipcluster


class Cluster:
    """A controller and n engines for one profile, started and stopped from Python.

    ``engines`` is where engines run, as ``ipcluster start --engines``: "local"
    (forked here), "mpi"/"mpiexec", "ssh", "slurm", "sge", "pbs" or "lsf";
    ``launch_options`` are that command's options with ``_`` for ``-``
    (``hosts="h1:4,h2:4"``, ``queue="short"``, ``time="0:30:00"``...), and
    ``location`` what the FURLs advertise to other hosts (docs/deployment.md).
    """

    def __init__(self, n: int = 4, engines: str = "local", profile: str = "default",
                 ip: str = "127.0.0.1", timeout: float = 120.0, location: str | None = None,
                 **launch_options: Any) -> None:
        kind = "mpiexec" if engines == "mpi" else engines
        if kind not in ENGINE_KINDS:
            raise ValueError(f"engines must be one of mpi, {', '.join(ENGINE_KINDS)}; "
                             f"not {engines!r}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int, not {n!r}")
        self.n = n
        self.engines = engines
        self.engines_kind = kind
        self.launch_options = {k.replace("_", "-"): v for k, v in launch_options.items()}
        self.location = location
        self.profile = profile
        self.ip = ip
        self.timeout = timeout
        self.cluster_dir = ClusterDir(profile)
        self.pids: list[int] = []  # controller and engine processes this object started
        self._clients: list[Any] = []
        self._started = False

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Cluster profile={self.profile!r} n={self.n} engines={self.engines!r} {state}>"

    @property
    def running(self) -> bool:
        """Tell whether this cluster's controller is up."""
        return self._started and self.cluster_dir.controller_running()

    def start(self) -> Cluster:
        """Start the controller and engines; return once every engine has registered."""
        if self._started:
            raise RuntimeError(f"{self!r} was started already")
        out = io.StringIO()
        code = ipcluster.start(self.cluster_dir, self.n, self.ip, self.timeout, daemon=True,
                               mpi=self.engines_kind == "mpiexec", out=out,
                               on_start=self.pids.append, location=self.location,
                               engines_kind=self.engines_kind,
                               launch_options=self.launch_options)
        if code != 0:
            raise RuntimeError(out.getvalue().strip() or f"ipcluster start failed ({code})")
        self._started = True
        atexit.register(self._stop_at_exit)
        return self

    def client(self, **kwargs: Any) -> Any:
        """Connect a MultiEngineClient (closed by stop())."""
        # Foolscap and the reactor: only once a client is asked for
        from ipython1.client.blocking import MultiEngineClient

        mec = MultiEngineClient(profile=self.profile, **kwargs)
        self._clients.append(mec)
        return mec

    def task_client(self, **kwargs: Any) -> Any:
        """Connect a TaskClient (closed by stop())."""
        # Foolscap and the reactor: only once a client is asked for
        from ipython1.client.blocking import TaskClient

        tc = TaskClient(profile=self.profile, **kwargs)
        self._clients.append(tc)
        return tc

    def add_engines(self, n: int) -> list[int]:
        """Start n more engines; return their ids once registered."""
        return resize.add_engines(self.cluster_dir, n, self.timeout)

    def remove_engines(self, ids: list[int]) -> list[int]:
        """Stop the engines with these ids."""
        return resize.remove_engines(self.cluster_dir, list(ids))

    def stop(self, grace: float = 10.0) -> None:
        """Close the clients made here, stop every engine and the controller, and wait."""
        for c in self._clients:
            try:
                c.close()
            except Exception:
                pass
        self._clients.clear()
        if not self._started:
            return
        self._started = False
        atexit.unregister(self._stop_at_exit)
        ipcluster.stop(self.cluster_dir, grace, out=io.StringIO())
        ipcluster.stop_pids([p for p in self.pids if ipcluster.pid_alive(p)], grace=3)

    def _stop_at_exit(self) -> None:
        try:
            self.stop(grace=3)
        except Exception:
            pass

    def __enter__(self) -> Any:
        self.start()
        try:
            return self.client()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()
