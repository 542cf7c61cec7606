"""Reading a configuration file's YAML: only what a configuration needs, and every failure a
`yaml.YAMLError` with a line.

`yaml.safe_load` is safe from code execution, but not from surprises: `2023-02-30` is a
timestamp whose construction raises ValueError, a 5,000-digit integer raises ValueError
(Python's int-to-str limit), `!!int abc` raises ValueError, 10,000 nested brackets raise
RecursionError, aliases can expand exponentially (the "billion laughs"), and a repeated key
silently replaces the first. The daemon keeps its running configuration on a reload only
when loading raises ConfigError, so every one of those must become a plain YAML error here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import yaml
from yaml.constructor import ConstructorError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "Refused", "load_yaml", "node_paths"]

MAX_BYTES = 1024 * 1024  # the example, fully commented, is under 6 KB
MAX_DEPTH = 8  # the deepest real key is on_change.commands[i][j]: depth 4
MAX_ITEMS = 256  # entries in one list or mapping
MAX_NODES = 10_000  # values in the whole file; stops a 1 MB list early
MAX_SCALAR = 4096  # characters in one value (PATH_MAX)
MAX_NUMBER = 24  # characters in an int or float: any sane count, far below int's str limit

_MERGE = "tag:yaml.org,2002:merge"


class Refused(ConstructorError):
    """A YAML construct a configuration never needs; `problem` says which and where."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(None, None, problem, mark)


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that builds only str, int, float, bool, None, list and dict."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self.paths: dict[int, str] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            # Refused outright: an alias is the one way to make a small file expand into a
            # huge tree, and a configuration has no need to repeat itself.
            raise Refused("aliases (*name) are not supported", self._mark())
        self._depth += 1
        self._nodes += 1
        try:
            if self._nodes > MAX_NODES:
                raise Refused(f"more than {MAX_NODES} values in one file", self._mark())
            if self._depth > MAX_DEPTH:
                raise Refused(f"nested deeper than {MAX_DEPTH} levels", self._mark())
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def _mark(self) -> yaml.Mark | None:
        # check_event() leaves the event it looked at here (yaml/parser.py).
        event = getattr(self, "current_event", None)
        return getattr(event, "start_mark", None)

    def _where(self, node: yaml.Node) -> str:
        path = self.paths.get(id(node))
        return f"{path}: " if path else ""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            if len(node.value) > MAX_ITEMS:
                raise Refused(f"{self._where(node)}more than {MAX_ITEMS} keys", node.start_mark)
            first: dict[str, int] = {}
            for key_node, _value in node.value:
                if key_node.tag == _MERGE:
                    raise Refused("merge keys (<<) are not supported", key_node.start_mark)
                if not isinstance(key_node, yaml.ScalarNode):
                    raise Refused(f"{self._where(node)}a key must be a plain name", key_node.start_mark)
                key = str(key_node.value)
                if key in first:
                    raise Refused(
                        f"{self._where(node)}duplicate key {key!r} (first at line {first[key]}); "
                        "a repeated key would silently replace the first",
                        key_node.start_mark,
                    )
                first[key] = key_node.start_mark.line + 1
        result: dict[Any, Any] = super().construct_mapping(node, deep)
        return result

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> list[Any]:
        if isinstance(node, yaml.SequenceNode) and len(node.value) > MAX_ITEMS:
            raise Refused(f"{self._where(node)}more than {MAX_ITEMS} entries", node.start_mark)
        result: list[Any] = super().construct_sequence(node, deep)
        return result


def _number(build: Callable[[Any, Any], Any], kind: str) -> Callable[[_ConfigLoader, Any], Any]:
    def construct(loader: _ConfigLoader, node: Any) -> Any:
        text = str(getattr(node, "value", ""))
        if len(text) > MAX_NUMBER:
            raise Refused(f"{loader._where(node)}{kind} longer than {MAX_NUMBER} characters", node.start_mark)
        try:
            return build(loader, node)
        except (ValueError, OverflowError, TypeError):
            raise Refused(
                f"{loader._where(node)}not a valid {kind}: {text[:40]!r}", node.start_mark
            ) from None

    return construct


def _string(loader: _ConfigLoader, node: Any) -> str:
    value = loader.construct_scalar(node)  # raises ConstructorError on a collection
    if len(value) > MAX_SCALAR:
        raise Refused(f"{loader._where(node)}value longer than {MAX_SCALAR} characters", node.start_mark)
    return str(value)


def _refuse(kind: str) -> Callable[[_ConfigLoader, yaml.Node], Any]:
    def construct(loader: _ConfigLoader, node: yaml.Node) -> Any:
        raise Refused(f"{loader._where(node)}{kind} values are not supported", node.start_mark)

    return construct


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _number(yaml.SafeLoader.construct_yaml_int, "integer"))
_ConfigLoader.add_constructor(
    "tag:yaml.org,2002:float", _number(yaml.SafeLoader.construct_yaml_float, "number")
)
_ConfigLoader.add_constructor("tag:yaml.org,2002:str", _string)
# An unquoted date stays the text it is: no key takes a date, and constructing one can raise
# ValueError (2023-02-30) outside yaml's own errors.
_ConfigLoader.add_constructor("tag:yaml.org,2002:timestamp", _string)
for _tag, _kind in (("binary", "!!binary"), ("set", "!!set"), ("omap", "!!omap"), ("pairs", "!!pairs")):
    _ConfigLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse(_kind))


def _walk(node: yaml.Node, path: str) -> Iterator[tuple[yaml.Node, str]]:
    yield node, path
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            yield from _walk(value_node, f"{path}.{key}" if path else key)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _walk(item, f"{path}.{i}" if path else str(i))


def node_paths(root: yaml.Node | None) -> dict[int, str]:
    """id(node) -> dotted key path ("watch.rescan_interval", "keyvault_export_dirs.0")."""
    return {} if root is None else {id(n): p for n, p in _walk(root, "")}


def load_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document into plain values, and its node tree for line numbers.

    Raises:
        yaml.YAMLError: for anything not valid YAML or not allowed here; `problem_mark`
            holds the line. Nothing else escapes, whatever `text` holds.
    """
    loader = _ConfigLoader(text)
    try:
        try:
            root = loader.get_single_node()
            loader.paths = node_paths(root)
            data = None if root is None else loader.construct_document(root)
        except (RecursionError, ValueError, OverflowError, TypeError, MemoryError) as exc:
            # Not expected after the bounds above; kept so a PyYAML corner case we missed is
            # still a configuration error and never kills the daemon at a reload.
            raise yaml.YAMLError(f"cannot be read ({type(exc).__name__})") from None
        return data, root
    finally:
        loader.dispose()
