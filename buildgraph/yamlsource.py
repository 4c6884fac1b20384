"""Load YAML keeping the line of every mapping key and sequence item.

Validation errors must name file:line, so the loader returns `LocatedDict` and
`LocatedList` (plain dict/list subclasses) that remember where each entry was.
Uses libyaml's composer when present: the workspace is parsed only when one of
its files changed (see configcache), but first builds of 10k nodes still parse.
"""

from __future__ import annotations

from buildgraph.errors import ConfigError

_MAX_DEPTH = 64
_MAX_NODES = 1_000_000   # entries a document may expand to, aliases counted as often as used


class LocatedDict(dict):
    file: str = ""
    line: int = 0
    key_lines: dict

    def line_of(self, key) -> int:
        return self.key_lines.get(key, self.line)


class LocatedList(list):
    file: str = ""
    line: int = 0
    item_lines: list

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


def _scalar(node, file: str, yaml, scalars):
    try:
        return scalars.construct_object(node)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, KeyError) as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise ConfigError(f"bad value {node.value!r}: {problem}", file=file, line=node.start_mark.line + 1,
                          hint=f"write it without the {tag} tag, or quote it") from None


def _convert(node, file: str, depth: int, yaml, scalars, memo: dict) -> tuple[object, int]:
    """(the Located value of `node`, how many entries it expands to). A node reached again
    through an alias is converted once and shared (memo: id -> both); its size still counts
    each time, so an alias bomb stops at _MAX_NODES instead of exhausting memory."""
    if id(node) in memo:
        return memo[id(node)]
    if depth > _MAX_DEPTH:
        raise ConfigError("nesting too deep (recursive alias?)", file=file,
                          line=node.start_mark.line + 1)
    size = 1
    if isinstance(node, yaml.MappingNode):
        out = LocatedDict()
        out.file, out.line, out.key_lines = file, node.start_mark.line + 1, {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError("mapping keys must be plain names", file=file, line=line)
            key = _scalar(key_node, file, yaml, scalars)
            if not isinstance(key, str):
                key = str(key)
            if key in out:
                raise ConfigError(f"duplicate key '{key}'", file=file, line=line,
                                  hint=f"first defined on line {out.key_lines[key]}")
            out[key], n = _convert(value_node, file, depth + 1, yaml, scalars, memo)
            out.key_lines[key] = line
            size += n
    elif isinstance(node, yaml.SequenceNode):
        out = LocatedList()
        out.file, out.line, out.item_lines = file, node.start_mark.line + 1, []
        for item in node.value:
            value, n = _convert(item, file, depth + 1, yaml, scalars, memo)
            out.append(value)
            out.item_lines.append(item.start_mark.line + 1)
            size += n
    else:
        return _scalar(node, file, yaml, scalars), 1
    if size > _MAX_NODES:
        raise ConfigError(f"this value expands to more than {_MAX_NODES:,} entries (YAML aliases?)",
                          file=file, line=node.start_mark.line + 1)
    memo[id(node)] = (out, size)
    return out, size


def load_yaml(text: str, file: str):
    """Parse one YAML document into Located containers; ConfigError on bad YAML."""
    import yaml  # not imported on a no-op build: the parsed workspace is cached

    try:
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(f"invalid YAML: {exc.problem or exc}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from None
    except (ValueError, UnicodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=file) from None
    if node is None:
        return None
    try:
        return _convert(node, file, 0, yaml, yaml.SafeLoader(""), {})[0]
    except RecursionError:
        raise ConfigError("nesting too deep", file=file) from None
