"""Which targets a configuration enables, in the order a sync applies them.

The system store goes first: the bundles and the Java truststore copy the system bundle
that its update rebuilds. The env file goes last: it collects what the others contribute.
"""

from __future__ import annotations

from collections.abc import Callable

from edge_certd.config import Config
from edge_certd.targets.base import Target
from edge_certd.targets.bundles import RuntimeBundles
from edge_certd.targets.envfile import EnvFile
from edge_certd.targets.java import JavaTruststore
from edge_certd.targets.system import SystemStore


def system_store(config: Config, heartbeat: Callable[[], None] | None = None) -> SystemStore:
    ts = config.trust_store
    return SystemStore(
        ca_dir=ts.ca_dir,
        system_bundle=ts.system_bundle,
        update_command=ts.update_command,
        timeout=ts.update_timeout,
        heartbeat=heartbeat,
    )


def followers(config: Config, *, bundle_dir: str | None = None) -> tuple[Target, ...]:
    """The targets after the system store, each enabled by the configuration.

    `bundle_dir` roots them elsewhere than bundles.dir: where a container mounts it, for
    what `container-args` prints (nothing is written there).
    """
    bundle_dir = bundle_dir or config.bundles.dir
    bundles = RuntimeBundles(bundle_dir=bundle_dir, system_bundle=config.trust_store.system_bundle)
    java = JavaTruststore(
        mode=config.bundles.java,
        bundle_dir=bundle_dir,
        system_bundle=config.trust_store.system_bundle,
        password=config.bundles.java_password,
    )
    env = EnvFile(path=config.bundles.env_file, contributors=(bundles, java))
    return (bundles, java, env)


def enabled_targets(config: Config, heartbeat: Callable[[], None] | None = None) -> tuple[Target, ...]:
    return (system_store(config, heartbeat), *followers(config))


def bundle_paths(config: Config) -> dict[str, str | None]:
    """Where runtimes find the files, for `status` (None: not written here)."""
    written = {store.key: store.path for target in followers(config) for store in target.stores()}
    return {
        "edge_roots": written.get("edge-roots"),
        "ca_bundle": written.get("ca-bundle"),
        "env_file": config.bundles.env_file,
        "java": written.get("java"),
    }
