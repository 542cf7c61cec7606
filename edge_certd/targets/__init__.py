"""Trust targets: one module per place trust must reach, behind one interface (`base`), and
one registry (`registry`) that says which a configuration enables. May import: core, store.
"""
