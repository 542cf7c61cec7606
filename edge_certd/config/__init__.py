"""Configuration: YAML validated by pydantic, handed on as frozen models.

This is the only package that imports pydantic or yaml.

- `model`: the sections and their defaults;
- `load`: the file, then YAML, then the models, then the rules; only ConfigError escapes;
- `loader`: a YAML loader that builds only plain values;
- `rules`: ranges, paths and overlaps the types cannot say;
- `paths`: which keys hold paths.
"""

from edge_certd.config.load import config_path, load_config, parse_config
from edge_certd.config.model import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    EXAMPLE_PATH,
    SBIN_DIRS,
    UPDATE_CA_CERTIFICATES,
    BundlesConfig,
    Config,
    ExpiryConfig,
    GatewayConfig,
    MetricsConfig,
    OnChangeConfig,
    PolicyConfig,
    SourcesConfig,
    TrustStoreConfig,
    WatchConfig,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "EXAMPLE_PATH",
    "SBIN_DIRS",
    "UPDATE_CA_CERTIFICATES",
    "BundlesConfig",
    "Config",
    "ExpiryConfig",
    "GatewayConfig",
    "MetricsConfig",
    "OnChangeConfig",
    "PolicyConfig",
    "SourcesConfig",
    "TrustStoreConfig",
    "WatchConfig",
    "config_path",
    "load_config",
    "parse_config",
]
