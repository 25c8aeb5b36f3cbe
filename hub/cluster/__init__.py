"""The hub as a cluster: the leader lease, cluster-wide advisory locks, and SQLite's one-replica data-dir lock.

Replicas share one PostgreSQL database, one broker and the data dir's `tuf/` (a shared directory). Singleton
work (rollout ticks, the telemetry monitor and retention, the TUF expiry refresh) runs only on the replica
holding the leader lease (leader.py); writes any replica may make are serialised where they must be by
transaction-scoped advisory locks (locks.py). On SQLite the hub runs as one process (dirlock.py).
"""
