"""Clusters from Python and their processes: ipython1.Cluster, ipcluster engines
add/remove, and the engine supervisor (ipcluster start --restart-engines)."""
