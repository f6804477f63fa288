"""The client's role: modules only client processes import."""
