"""Safe reading of source directories, atomic writes, state files, the lock, the verdict cache.

May import: the core.
"""
