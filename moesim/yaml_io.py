"""Reading the YAML files people write: UTF-8 text, YAML 1.2 floats, the line of every key, and
no silent surprises (a key given twice, a binary file, broken YAML are errors that name the file
and the line). The catalog and the scenario loader both read through here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from moesim.file_io import input_problem


class YAMLFileError(ValueError):
    """A file that cannot be read as a YAML mapping; the message names the file (and line)."""


class YAMLLoader(yaml.SafeLoader):
    """A SafeLoader that reads floats as YAML 1.2 does.

    PyYAML follows YAML 1.1, where ``1.0e12`` and ``46.7e9`` (no sign after the ``e``) are
    strings; YAML 1.2 tools (and the JSON Schema of ``moesim schema``) read them as numbers.
    """


YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)

# YAML 1.2 integers: decimal (leading zeros stay decimal: `nodes: 010` is 10, not YAML 1.1's
# octal 8), 0o octal, 0x hex. PyYAML's 1.1 resolver (also 0b, 1_000, base-60 `1:30`) is dropped.
_INT_1_2 = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
YAMLLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in YAMLLoader.yaml_implicit_resolvers.items()
}
YAMLLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_1_2, list("-+0123456789"))


def _construct_int_1_2(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


YAMLLoader.add_constructor("tag:yaml.org,2002:int", _construct_int_1_2)

#: aliases may reuse a block, not multiply it: a file whose aliases expand past this many nodes
#: (a "billion laughs") is refused before anything walks it
MAX_EXPANDED_NODES = 200_000


def read_text(path: str | Path) -> str:
    """A file's text as UTF-8 (a byte-order mark allowed); missing, unreadable or binary files
    are a YAMLFileError."""
    p = Path(path)
    problem = input_problem(p)  # a folder, a FIFO (never opened), a symlink loop: said so
    if problem is not None:
        raise YAMLFileError(problem)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise YAMLFileError(f"{p}: cannot read it: {e.strerror}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise YAMLFileError(
            f"{p}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}): "
            "give a YAML file, saved as UTF-8"
        ) from None


def _compose_lines(
    node: yaml.Node,
    path: tuple,
    out: dict[tuple, int],
    source: str,
    open_nodes: set[int] | None = None,
) -> None:
    """Record the line of every key by its path; refuse a key given twice in one mapping
    (PyYAML would silently keep the last one), an alias inside itself (a cycle) and aliases
    that expand past ``MAX_EXPANDED_NODES``."""
    open_nodes = set() if open_nodes is None else open_nodes
    if id(node) in open_nodes:
        raise YAMLFileError(
            f"{source}:{node.start_mark.line + 1}: an alias refers to a block that contains "
            "it (a cycle): write the value out instead"
        )
    if len(out) > MAX_EXPANDED_NODES:
        raise YAMLFileError(
            f"{source}: its aliases expand to more than {MAX_EXPANDED_NODES:,} values: "
            "write the values out, or reuse a block fewer times"
        )
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        open_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key_node.tag != "tag:yaml.org,2002:merge" and isinstance(key, str):
                if key in seen:
                    dotted = ".".join(str(x) for x in (*path, key))
                    raise YAMLFileError(
                        f"{source}:{line}: {dotted}: duplicate key '{key}' (first given at line "
                        f"{seen[key]}): keep one of them"
                    )
                seen[key] = line
            out[(*path, key)] = line
            _compose_lines(value_node, (*path, key), out, source, open_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = item.start_mark.line + 1
            _compose_lines(item, (*path, i), out, source, open_nodes)
    open_nodes.discard(id(node))


def load_yaml_mapping(path: str | Path) -> tuple[dict[str, Any], dict[tuple, int]]:
    """The file's mapping and the line of every key path."""
    p = Path(path)
    text = read_text(p)
    lines: dict[tuple, int] = {}
    try:
        node = yaml.compose(text, Loader=YAMLLoader)
        if node is not None:
            _compose_lines(node, (), lines, str(p))
        data = yaml.load(text, Loader=YAMLLoader)
    except RecursionError:
        raise YAMLFileError(
            f"{p}: nested too deeply to read (more levels than Python's recursion limit): "
            "a scenario needs a few levels; flatten the file"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or e
        raise YAMLFileError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise YAMLFileError(
            f"{p}: expected a mapping of keys at the top, got {type(data).__name__}"
        )
    return data, lines
