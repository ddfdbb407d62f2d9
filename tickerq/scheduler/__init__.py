"""The scheduler: cron and timed jobs that run once across the cluster.

Rooms: ``model`` (statuses and records, plain values), ``store`` (the job store
contract that the Redis and in-memory stores implement), ``cron`` (cron math),
the stores, the executor service and the manager.
"""
