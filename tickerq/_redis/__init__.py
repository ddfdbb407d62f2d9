"""The Redis plumbing (private): connection strings, pools, keys, scripts, error mapping."""
