"""Controller-side concepts that outlive one controller process (the task journal)."""
