"""The fork parent imports what each forked engine would import (ipengine --fork).

An import after the fork runs once per engine (~40 ms CPU each before the
warm-up covered them: most of a forked engine's start-up CPU). Checked in a
fresh interpreter, with no socket opened and no reactor running: warm up,
then do what an engine does between its fork and its registration.
"""

from __future__ import annotations

import json
import subprocess
import sys

ENGINE_START = """
import json, sys
from ipython1.scripts import ipengine
ipengine._warm_up()
before = set(sys.modules)
ipengine._after_fork()
from ipython1.common import wire
from ipython1.engine.kernel import EngineKernel
from ipython1.engine.runner import ShellRunner
from ipython1.engine.service import EngineService
from ipython1.transport import tcpchannel
from ipython1.transport.data import stream
runner = ShellRunner()
service = EngineService("unused.furl", runner)
EngineKernel(runner=runner)
stream.server_context(wire.ec_certificate_pem())
tcpchannel.engine_context()
"controller".encode("idna")
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_a_forked_engine_imports_nothing_the_parent_did_not() -> None:
    out = subprocess.run([sys.executable, "-c", ENGINE_START], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert json.loads(out.splitlines()[-1]) == []


CERTIFICATE_AFTER_FORK = """
import os, resource, sys
from ipython1.scripts import ipengine
ipengine._warm_up()
pid = os.fork()
if pid:
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
from foolscap.api import Tub
from ipython1.common import wire
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
Tub(certData=wire.ec_certificate_pem())
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, flush=True)
os._exit(0)
"""


def test_a_forked_engine_s_certificate_and_tub_find_openssl_warm() -> None:
    # Cold, OpenSSL's first key, certificate and TLS context cost ~1,250 page
    # faults in each engine; warmed in the parent, ~630.
    out = subprocess.run([sys.executable, "-c", CERTIFICATE_AFTER_FORK], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert int(out.split()[-1]) < 900


KERNEL_AFTER_FORK = """
import os, resource, sys
from ipython1.scripts import ipengine
ipengine._warm_up()
ipengine._after_fork()  # the reactor's waker; no reactor runs
from ipython1.engine.kernel import EngineKernel
from ipython1.engine.runner import ShellRunner
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        kernel = EngineKernel(runner=ShellRunner())
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        kernel.shell.run_cell("import os; mine = os.getpid()")
        print(faults, kernel.shell.user_ns["mine"] == os.getpid(), flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
"""


def test_forked_engines_take_the_parent_s_shell_each_its_own_copy() -> None:
    # Built in each engine the shell cost ~1,100 page faults (8-18 ms CPU).
    out = subprocess.run([sys.executable, "-c", KERNEL_AFTER_FORK], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    children = [line.split() for line in out.splitlines()]
    assert len(children) == 2
    for faults, own_namespace in children:
        assert int(faults) < 300 and own_namespace == "True"
