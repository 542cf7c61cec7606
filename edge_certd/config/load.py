"""Reading the configuration: the file (bounded), YAML (loader.py), the models (model.py), and
the rules the types cannot say (rules.py); every problem as "line N: key: what is wrong".
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from typing import Any

import pydantic
import yaml

import edge_certd.config.rules as rules
from edge_certd.config.loader import MAX_BYTES, Refused, load_yaml
from edge_certd.config.model import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    EXAMPLE_PATH,
    PYDANTIC_V2,
    SBIN_DIRS,
    Config,
)
from edge_certd.config.paths import PATH_KEYS, PATH_LIST_KEYS
from edge_certd.core.errors import ConfigError

# Keys whose values are paths, tidied (`//`, `/./`, a trailing `/`) before validation so the
# overlap rules compare like with like.


def config_path(explicit: str | None) -> tuple[str, bool]:
    """Return the config path to use and whether the user named it.

    Order: --config, then $EDGE_CERTD_CONFIG, then the default path.
    """
    if explicit:
        return explicit, True
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return from_env, True
    return DEFAULT_CONFIG_PATH, False


def load_config(explicit: str | None = None) -> tuple[Config, str]:
    """Load and validate the configuration.

    Returns:
        The config and the path it came from.

    Raises:
        ConfigError: the file named by the user is missing, or any file is invalid. Nothing
            else, whatever the file holds: the daemon keeps its running configuration at a
            reload only on ConfigError.
    """
    path, named = config_path(explicit)
    try:
        raw = _read_regular(path)
    except FileNotFoundError:
        if named:
            raise ConfigError(path, ["file not found"]) from None
        return Config(), path  # no config file: every default applies
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(path, [f"larger than {MAX_BYTES} bytes; this is not a configuration"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"not UTF-8 text (byte {exc.start})"]) from None
    return parse_config(text, path), path


def _read_regular(path: str) -> bytes:
    """At most MAX_BYTES + 1 bytes of a regular file. O_NONBLOCK: a FIFO planted as the
    config must not hang a reload; links are followed (the path is root's choice).
    (config/ may import only core, so this is not store/fsutil's read_bounded.)"""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, a device or a directory)", path)
        chunks, remaining = [], MAX_BYTES + 1
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def parse_config(text: str, path: str = "<config>") -> Config:
    """Validate YAML text as a configuration.

    Raises:
        ConfigError: every problem found, each as "line N: key: what is wrong".
    """
    try:
        data, tree = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(path, [_yaml_problem(exc)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, ["the top level must be a mapping of keys"])
    _tidy_paths(data)
    _resolve_update_command(data)
    try:
        config = Config.model_validate(data) if PYDANTIC_V2 else Config.parse_obj(data)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(str(part) for part in err["loc"])
            problems.append(_describe(tree, loc, _message(err)))
        raise ConfigError(path, problems) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # pydantic wraps a validator's ValueError itself; this is for anything it does not.
        raise ConfigError(path, [f"cannot be validated ({type(exc).__name__}: {exc})"]) from None
    problems = [_describe(tree, key, message) for key, message in rules.check(config)]
    if problems:
        raise ConfigError(path, problems)
    return config


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, Refused):
        return f"{where}{problem}"  # valid YAML, but nothing a configuration needs
    return f"{where}not valid YAML: {problem}"


def _tidy_paths(data: dict[str, Any]) -> None:
    for key in PATH_KEYS:
        node: Any = data
        for part in key[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key[-1] in node:
            node[key[-1]] = rules.tidy_path(node[key[-1]])
    for name in PATH_LIST_KEYS:
        if isinstance(data.get(name), list):
            data[name] = [rules.tidy_path(item) for item in data[name]]


def _resolve_update_command(data: dict[str, Any]) -> None:
    """A bare program name in trust_store.update_command becomes the path it resolves to on
    $PATH or in the sbin directories, so the same configuration works for root and for a
    user whose PATH lacks /usr/sbin. A name found nowhere is left as written."""
    section = data.get("trust_store")
    argv = section.get("update_command") if isinstance(section, dict) else None
    if not isinstance(argv, list) or not argv or not isinstance(argv[0], str):
        return
    program = argv[0]
    if not program or "/" in program:
        return
    search = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    found = shutil.which(program, path=search)
    if found:
        argv[0] = found


def _message(err: Any) -> str:
    # pydantic 1 and 2 word "extra" differently; say it the same way either way.
    kind = str(err.get("type", ""))
    if kind in ("extra_forbidden", "value_error.extra"):
        return f"unknown key (check the spelling against {EXAMPLE_PATH})"
    return str(err["msg"])


def _describe(tree: yaml.Node | None, loc: tuple[str, ...], message: str) -> str:
    line = _line_of(tree, loc)
    where = f"line {line}: " if line else ""
    return f"{where}{'.'.join(loc)}: {message}"


def _line_of(node: yaml.Node | None, loc: tuple[str, ...]) -> int | None:
    """The 1-based line of the deepest YAML node that `loc` reaches."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == part), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line
