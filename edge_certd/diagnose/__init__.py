"""`verify` and `doctor`: probes (the side effects), judges (pure) and rendering.

May import: the core, the store, the targets and the configuration.
"""
