"""What a failed action tells its user: where it was declared, and its log in the user's paths.

An editor jumps to `FILE:LINE:` at the start of a message, so a failure names the BUILD.yaml
(or deps/*.yaml) line of the command that failed or of the outputs it declared, and the
compiler messages in its log name workspace files, not the sandbox's copies of them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from buildgraph.sandbox import SANDBOX_ROOT
from buildgraph.workspace import BUILD_FILE, Target, field_path

_STEP = re.compile(r"buildgraph: command (\d+) of \d+ failed")


def failed_step(log: str, commands: tuple[str, ...]) -> int | None:
    """The index of the command the sandbox's exit trap reported as failing, if any."""
    found = _STEP.findall(log)
    if found and 0 < int(found[-1]) <= len(commands):
        return int(found[-1]) - 1
    return None


def declared_at(root: Path, target: Target, field: str) -> str:
    """`FILE:LINE: FIELD` for a field path of `target` such as cmds[2] or when[1].cmds[0]. The
    parsed workspace keeps only the lines of a target's own keys, so the file is read again
    (a failure is rare; keeping every list item's line would slow every start)."""
    top = re.match(r"\w+", field).group(0)
    line = target.line_of(top)
    try:
        from buildgraph.yamlsource import load_yaml

        node = load_yaml((root / target.loc.file).read_text(encoding="utf-8"), target.loc.file)
        if target.loc.file.endswith(BUILD_FILE):
            node = node["targets"][target.name]
        for key, index in re.findall(r"(\w+)|\[(\d+)\]", field):
            step = key if key else int(index)
            line = node.line_of(step)
            node = node[step]
    except Exception:   # the file changed since it was parsed: the key's own line will do
        pass
    return f"{target.loc.file}:{line}: {field_path(target, field)}"


def output_field(target: Target, missing: tuple[str, ...]) -> str:
    """Which field an output error is about: licence files alone missing is `licenses`, else `outs`."""
    return "licenses" if missing and set(missing) <= set(target.licenses) else "outs"


def readable_log(log: str, sandboxes: str, root: Path, deps: dict[str, Path]) -> str:
    """`log` with the sandbox's paths made the user's: its copy of the sources (/sandbox/src/,
    or CACHE/sandbox/<id>/src/ outside bwrap) is the workspace, relative to the current
    directory when it lies inside it; a dependency's outputs are where they are materialized
    (`deps`: name -> out dir, only those that exist)."""
    cwd = os.getcwd()
    inside = cwd == str(root) or cwd.startswith(f"{root}/")
    base = os.path.relpath(root, cwd) + "/" if inside else f"{root}/"
    sandbox = rf"(?:{re.escape(SANDBOX_ROOT)}|{re.escape(sandboxes)}/[^/\s]+)"
    log = re.sub(rf"{sandbox}/src/", "" if base == "./" else base.replace("\\", r"\\"), log)

    def dep(m: re.Match) -> str:
        out = deps.get(m.group(1))
        return f"{out}/" if out is not None else m.group(0)
    return re.sub(rf"{sandbox}/deps/([^/\s]+)/", dep, log)
