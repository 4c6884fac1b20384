"""Say why an action must run: compare its input digests with its last build's."""

from __future__ import annotations


def _short(digest) -> str:
    return str(digest)[:12] if digest else "none"


def changes(old: dict | None, new: dict) -> list[str]:
    """Human-readable differences between two `Action.inputs()` dicts, most specific first."""
    if old is None:
        return ["never built in this workspace"]
    out: list[str] = []
    out += _file_changes(old.get("srcs", {}), new.get("srcs", {}), "source")
    in_tree = _file_changes(old.get("source_files", {}), new.get("source_files", {}), "file in the source tree")
    out += in_tree
    if old.get("source") != new.get("source") and not in_tree:
        out.append(f"upstream source changed: {_describe(old.get('source'))} → {_describe(new.get('source'))}")
    o_deps, n_deps = old.get("deps", {}), new.get("deps", {})
    for dep in sorted(set(o_deps) | set(n_deps)):
        if o_deps.get(dep) != n_deps.get(dep):
            what = "added" if dep not in o_deps else "removed" if dep not in n_deps else "output changed"
            out.append(f"dependency {dep}: {what}")
    o_env, n_env = old.get("env", {}), new.get("env", {})
    for name in sorted(set(o_env) | set(n_env)):
        if o_env.get(name) != n_env.get(name):
            out.append(f"env {name}: {o_env.get(name)!r} → {n_env.get(name)!r}")
    if old.get("toolchain") != new.get("toolchain"):
        o_tc, n_tc = old.get("toolchain") or [None, None], new.get("toolchain") or [None, None]
        if o_tc[0] != n_tc[0]:
            out.append(f"toolchain: {o_tc[0]} → {n_tc[0]}")
        else:
            out.append(f"toolchain {n_tc[0]}: files changed ({_short(o_tc[1])} → {_short(n_tc[1])})")
    if old.get("tools") != new.get("tools"):
        out.append("host tools changed (a program on the action's PATH has new contents)")
    if old.get("commands") != new.get("commands"):
        out.append("commands changed")
    if old.get("features") != new.get("features"):
        out.append(f"features: {old.get('features')} → {new.get('features')}")
    if old.get("outs") != new.get("outs"):
        out.append("declared outputs changed")
    if old.get("sandbox") != new.get("sandbox"):
        out.append(f"sandbox: {old.get('sandbox')} → {new.get('sandbox')}")
    if old.get("host") != new.get("host"):
        out.append(f"host properties: {old.get('host')} → {new.get('host')}")
    return out


def _file_changes(old: dict, new: dict, what: str) -> list[str]:
    out = []
    for path in sorted(set(old) | set(new)):
        if path not in old:
            out.append(f"{what} added: {path}")
        elif path not in new:
            out.append(f"{what} removed: {path}")
        elif old[path] != new[path]:
            out.append(f"{what} changed: {path}")
    return out


def _describe(source) -> str:
    """A source identity, shortened: its kind and what pins it."""
    if not source:
        return "none"
    return " ".join(_short(x) if isinstance(x, str) and len(x) > 24 else str(x) for x in source[:4])
