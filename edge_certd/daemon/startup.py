"""The one line the daemon logs when it starts: what it runs, watches, writes and checks."""

from __future__ import annotations

from edge_certd import __version__
from edge_certd.config import Config
from edge_certd.core.text import printable
from edge_certd.targets.java import JavaTruststore
from edge_certd.targets.registry import followers


def start_line(config: Config) -> str:
    """`edge-certd 1.2.0 started: watching …; writing …; gateway …`, for the journal.

    Paths come from the configuration, which an administrator wrote; they are still escaped,
    as everything that reaches the journal is.
    """
    sources = [config.drop_dir, *config.keyvault_export_dirs]
    if config.package_roots_dir:
        sources.append(f"{config.package_roots_dir}/*")
    targets = [f"system store ({config.trust_store.ca_dir})", f"bundles ({config.bundles.dir})"]
    for target in followers(config):
        if isinstance(target, JavaTruststore) and target.store_type:
            targets.append(f"Java truststore ({target.store_type})")
    targets.append(f"env file ({config.bundles.env_file})")
    gateway = config.gateway.host or (
        f"from {config.gateway.connection_string_file}" if config.gateway.connection_string_file else None
    )
    return printable(
        f"edge-certd {__version__} started: watching {', '.join(sources)}; writing {', '.join(targets)}; "
        + (f"gateway {gateway}" if gateway else "no gateway configured"),
        1000,
    )
