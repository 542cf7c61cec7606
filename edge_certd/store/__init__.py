"""Safe reading of source directories, atomic writes, state files, the lock, the verdict cache.

May import: the core.

- `sources`: reading a source directory safely (the scan, each entry, `open_source`);
- `directory_rules`: who may write a source directory, and the drop directory's creation;
- `names`: names that are never a source, and the roots packages' directories;
- `fsutil`: atomic writes, only on change, and `read_bounded`;
- `state`: the manifest, the lock, the report files;
- `verdict_cache`: verdicts by content, policy and passwords.
"""
