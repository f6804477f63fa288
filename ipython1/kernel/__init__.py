"""The IPython 0.10 names of modules that now live in their role's package.

``from ipython1.kernel import client``, ``client.MultiEngineClient``,
``client.TaskClient`` and ``ipython1.kernel.asyncclient.get_multiengine_client``
keep working, as does every other module name of before issue 13 (the
``ipython1.kernel.X``, ``ipython1.shell``, ``ipython1.client.views``): importing an
old name gives the new module object itself, so a test that monkeypatches
``ipython1.kernel.engine.X`` patches the engine's module, and ``python -m``
runs the new module. The old names are listed once, in `MOVED`; ``import
ipython1`` installs them. New code imports the new names.

Only ``datachannel`` (large values) and ``commandchannel`` (the channel's
older name) are still files here.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import CodeType, ModuleType

from ipython1.common.errors import TaskRejectError  # IPython 0.10: `from IPython.kernel import`

__all__ = ["MOVED", "TaskRejectError"]

MOVED = {
    "ipython1.kernel.addresses": "ipython1.common.addresses",
    "ipython1.kernel.cluster": "ipython1.common.clusterdir",
    "ipython1.kernel.errors": "ipython1.common.errors",
    "ipython1.kernel.interfaces": "ipython1.common.interfaces",
    "ipython1.kernel.listenguard": "ipython1.common.listenguard",
    "ipython1.kernel.localhost": "ipython1.common.localhost",
    "ipython1.kernel.processes": "ipython1.common.processes",
    "ipython1.kernel.properties": "ipython1.common.properties",
    "ipython1.kernel.replies": "ipython1.common.replies",
    "ipython1.kernel.scatter": "ipython1.common.scatter",
    "ipython1.kernel.serialize": "ipython1.common.serialize",
    "ipython1.kernel.wire": "ipython1.common.wire",
    "ipython1.kernel.backpressure": "ipython1.controller.backpressure",
    "ipython1.kernel.controller": "ipython1.controller.registry",
    "ipython1.kernel.events": "ipython1.controller.events",
    "ipython1.kernel.multiengine": "ipython1.controller.multiengine",
    "ipython1.kernel.queue": "ipython1.controller.queue",
    "ipython1.kernel.session": "ipython1.controller.sessionlog",
    "ipython1.kernel.subscribers": "ipython1.controller.subscribers",
    "ipython1.kernel.task": "ipython1.controller.task",
    "ipython1.kernel.users": "ipython1.controller.userdir",
    "ipython1.kernel.engine": "ipython1.engine.kernel",
    "ipython1.kernel.introspection": "ipython1.engine.introspection",
    "ipython1.kernel.mpi": "ipython1.engine.mpi",
    "ipython1.kernel.streaming": "ipython1.engine.output",
    "ipython1.kernel.asyncclient": "ipython1.client.multiengine",
    "ipython1.kernel.client": "ipython1.client.blocking",
    "ipython1.kernel.results": "ipython1.client.results",
    "ipython1.kernel.taskclient": "ipython1.client.tasks",
    "ipython1.shell": "ipython1.client.shell",
    "ipython1.client.views": "ipython1.client.blocking",
}
"""A module's old full name -> its new one."""


class _OldName(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    """Import an old name of `MOVED` as the module it names now."""

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the old name's spec on the module; give it its own back.
        module.__spec__ = module.__spec__.loader_state

    def get_code(self, fullname: str) -> CodeType | None:
        # `python -m <old name>` runs the new module's code.
        spec = importlib.util.find_spec(MOVED[fullname])
        return spec.loader.get_code(spec.name)

    def get_source(self, fullname: str) -> str | None:
        spec = importlib.util.find_spec(MOVED[fullname])
        return spec.loader.get_source(spec.name)


if not any(isinstance(finder, _OldName) for finder in sys.meta_path):
    sys.meta_path.append(_OldName())
