"""flowmill: durable task execution for Python."""
