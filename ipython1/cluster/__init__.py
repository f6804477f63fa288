"""Clusters from Python and their size: ipython1.Cluster, ipcluster engines add/remove."""
