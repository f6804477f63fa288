"""Client-side concepts beside the kernel's clients (reconnecting after a restart)."""
