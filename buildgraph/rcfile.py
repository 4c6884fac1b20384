"""Options from rc files, as Bazel's .bazelrc: the workspace's .buildgraphrc, then the
user's ~/.buildgraphrc (or $BUILDGRAPH_RC), then the command line; a later value wins.

Each line is `COMMAND[:CONFIG] OPTIONS...` (shell quoting; `#` starts a comment):
    build --jobs 4 --keep-going
    common --cache-dir ../buildgraph-cache
    build:ci --remote-cache http://cache.internal:8080 --remote-read-only
`common` lines apply to every command that has the option; `COMMAND:CONFIG` lines only
with `--config=CONFIG` (repeatable), after the plain lines and before the command line's
own options, so what is typed always wins.
"""

from __future__ import annotations

import os
from pathlib import Path

from buildgraph.errors import ConfigError, UsageError

NAME = ".buildgraphrc"


def rc_files(workspace: Path | None) -> list[Path]:
    """The rc files that exist, in the order they apply."""
    user = os.environ.get("BUILDGRAPH_RC") or os.path.join(os.path.expanduser("~"), NAME)
    paths = ([workspace / NAME] if workspace is not None else []) + [Path(user)]
    seen, out = set(), []
    for p in paths:
        if p.is_file() and p.resolve() not in seen:
            seen.add(p.resolve())
            out.append(p)
    return out


def read(paths: list[Path]) -> list[tuple[str, str | None, list[str], str]]:
    """(command, config, options, "file:line") of every line."""
    import shlex   # only when there is an rc file: not on every start

    lines = []
    for path in paths:
        for n, text in enumerate(path.read_text().splitlines(), 1):
            try:
                words = shlex.split(text, comments=True)
            except ValueError as exc:
                raise ConfigError(str(exc), file=str(path), line=n) from None
            if not words:
                continue
            command, _, config = words[0].partition(":")
            if not command or (":" in words[0] and not config):
                raise ConfigError(f"{words[0]!r}: expected COMMAND or COMMAND:CONFIG", file=str(path), line=n)
            lines.append((command, config or None, words[1:], f"{path}:{n}"))
    return lines


def split_configs(argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv without --config flags, the configs named, in order)."""
    rest, configs, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest += argv[i:]
            break
        if a == "--config" and i + 1 < len(argv):
            configs.append(argv[i + 1])
            i += 2
            continue
        if a.startswith("--config="):
            configs.append(a.split("=", 1)[1])
        else:
            rest.append(a)
        i += 1
    return rest, configs


def expand(command: str, argv: list[str], lines, accepts) -> list[str]:
    """`argv` (the words after the command, its --config flags taken out) after the rc files'
    options: the plain lines', then each --config's in order. `accepts(option)`: the command's
    argparse action for it, or None (for `common` lines: an option the command does not have
    is left out)."""
    def applicable(config: str | None) -> list[str]:
        out = []
        for c, conf, words, _ in lines:
            if conf != config:
                continue
            if c == command:
                out += words
            elif c == "common":
                out += _accepted(words, accepts)
        return out
    rest, configs = split_configs(argv)
    expanded = applicable(None)
    for config in configs:
        if not any(conf == config for _, conf, _, _ in lines):
            known = sorted({conf for _, conf, _, _ in lines if conf})
            where = ", ".join(dict.fromkeys(w.rsplit(":", 1)[0] for *_, w in lines)) or "no rc file"
            raise UsageError(f"--config={config}: no such config in {where}"
                             + (f" (configs: {', '.join(known)})" if known else ""))
        expanded += applicable(config)
    return expanded + rest


def _accepted(words: list[str], accepts) -> list[str]:
    """The options in `words` the command has, each with its value."""
    out, i = [], 0
    while i < len(words):
        w = words[i]
        action = accepts(w.split("=", 1)[0]) if w.startswith("-") else None
        takes_value = "=" not in w and (action is None or action.nargs != 0) and i + 1 < len(words) \
            and not words[i + 1].startswith("-")
        group = words[i:i + 2] if takes_value else [w]
        if action is not None:
            out += group
        i += len(group)
    return out
