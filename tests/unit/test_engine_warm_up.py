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
