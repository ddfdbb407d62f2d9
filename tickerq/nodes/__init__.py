"""Node liveness: heartbeats, the node registry and dead-node detection."""
