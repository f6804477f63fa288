"""Engine-side halves of client commands: code that runs inside an engine."""
