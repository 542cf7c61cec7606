"""A stop that arrives while files are judged.

The loop hands the judge client a `poll` (edge_certd/worker/pool.py calls it a few times a
second while it waits) that raises SyncCancelled once SIGTERM is queued. Whoever started
that sync, the loop itself or a request it serves, gives it up: nothing is applied before
judging ends, so the previous trust stays. Its own module because both `loop` and
`requests` catch it, and `requests` must not import the loop.
"""


class SyncCancelled(Exception):
    """Raised out of a sync's judging phase when the daemon must stop."""
