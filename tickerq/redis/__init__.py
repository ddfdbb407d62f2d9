"""Redis coordination primitives: connection, keys, scripts, context and threads."""
