"""scan → judge → plan → apply → record, under the state lock; and the one-shot operations.

May import: the core, the store, the targets, the configuration (and the worker). `journal`
is here because a sync is what the journal mostly hears; the daemon and the CLI emit
through it too.
"""
