"""Running a cluster's processes: the engine supervisor (ipcluster start --restart-engines)."""
