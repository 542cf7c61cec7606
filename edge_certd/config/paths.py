"""The configuration keys that hold paths: tidied when loaded, checked by the rules."""

from __future__ import annotations

PATH_KEYS: tuple[tuple[str, ...], ...] = (
    ("drop_dir",),
    ("package_roots_dir",),
    ("state_dir",),
    ("control_socket",),
    ("trust_store", "ca_dir"),
    ("trust_store", "system_bundle"),
    ("bundles", "dir"),
    ("bundles", "env_file"),
    ("gateway", "connection_string_file"),
    ("gateway", "result_file"),
    ("metrics", "textfile_dir"),
)
PATH_LIST_KEYS = ("keyvault_export_dirs", "pfx_password_files")
