"""Several nodes, one set of limits (SPEC §2.8): the Redis backends of the shared-state
protocols, leases of capacity, the fallback when Redis is away, and node heartbeats.
Without ``[cluster] redis`` nothing here runs: the embedded backends serve one node."""
