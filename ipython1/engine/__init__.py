"""Engine-side concepts: code that runs inside an engine (client commands' halves,
rejoining the controller after a loss, restarting in place)."""
