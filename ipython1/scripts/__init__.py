"""Command-line entry points: ipcontroller, ipengine, ipcluster."""
