"""ipython1: interactive parallel and distributed computing on Twisted and Foolscap."""

__version__ = "0.1.0"
