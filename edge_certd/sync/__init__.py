"""scan → judge → plan → apply → record, under the state lock; and the one-shot operations.

May import: the core, the store, the targets, the configuration and the journal.
"""
