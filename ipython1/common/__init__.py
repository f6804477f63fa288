"""What every role shares: the op table and the wire constraints."""
