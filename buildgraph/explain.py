"""Say why an action must run: compare its input digests with its last build's."""

from __future__ import annotations


def _short(digest) -> str:
    return str(digest)[:12] if digest else "none"


def changes(old: dict | None, new: dict) -> list[str]:
    """Human-readable differences between two `Action.inputs()` dicts, most specific first."""
    if old is None:
        return ["never built in this workspace"]
    out: list[str] = []
    o_src, n_src = old.get("srcs", {}), new.get("srcs", {})
    for path in sorted(set(o_src) | set(n_src)):
        if path not in o_src:
            out.append(f"source added: {path}")
        elif path not in n_src:
            out.append(f"source removed: {path}")
        elif o_src[path] != n_src[path]:
            out.append(f"source changed: {path}")
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
    return out
