"""Engine-side concepts beside the kernel (rejoining the controller after a loss)."""
