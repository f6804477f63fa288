"""Twisted plugins: `twistd ipcontroller` and `twistd ipengine`."""

from twisted.application.service import ServiceMaker

ipcontroller = ServiceMaker(
    "ipython1 controller", "ipython1.scripts.ipcontroller",
    "Controller with a queue per engine, published over Foolscap.", "ipcontroller")
ipengine = ServiceMaker(
    "ipython1 engine", "ipython1.scripts.ipengine",
    "IPython engine that registers with a controller.", "ipengine")
