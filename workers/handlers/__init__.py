"""Your handler modules. Every module here (not starting with `_`) is imported when a worker starts."""
