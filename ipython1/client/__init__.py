"""Client-side concepts built on the multi-engine client."""
