"""A node's build environment outside the sandbox: `buildgraph env NODE` and `buildgraph shell NODE`.

For working in a checkout the way `nix develop` or `spack build-env` work: the node's
dependencies are built (or restored) and materialized read-only under .buildgraph/out/,
its toolchain is on PATH with CC, CXX, AR, … and CMAKE_TOOLCHAIN_FILE pointing into the
toolchain store, CMAKE_PREFIX_PATH and DEP_<NAME> name the dependencies (LD_LIBRARY_PATH their
libraries, so what is built in the checkout runs there), and the compile
cache is on (the same ccache namespace the node's actions use; the checkout's paths are not
the sandbox's, so its entries are its own). For a CMake node, a configure preset
`buildgraph-<node>` (CMakeUserPresets.json, version 3) holds the same with
compile_commands.json on, so an IDE and clangd configure exactly what the shell does.

The variables are the action's own (engine.action_for) with the sandbox's paths replaced by
the host's; the sandbox-only ones (HOME, TMPDIR, SRC, OUT, WORK, the locale and time zone)
are left to the user's shell.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from buildgraph import recipes
from buildgraph.errors import UsageError

_SANDBOX_ONLY = {"HOME", "TMPDIR", "PATH", "SRC", "OUT", "WORK", "DEPS", "SOURCE", "LC_ALL", "TZ"}
# The recipe's configure command sets these itself; the preset sets them from the environment.
_RECIPE_CACHE_VARS = {"CMAKE_INSTALL_PREFIX", "CMAKE_PREFIX_PATH"}
PRESETS_FILE = "CMakeUserPresets.json"


@dataclass
class DevEnv:
    node: str
    kind: str
    env: dict[str, str]                     # what to set, PATH included (the user's after ours)
    tools_bin: str                          # the toolchain's names (and the compile cache's shims)
    source_dir: Path | None = None          # the node's project, when the workspace holds it
    presets: dict | None = None             # CMakeUserPresets content, for a CMake node
    deps: dict[str, str] = field(default_factory=dict)   # dependency target -> its outputs

    @property
    def preset_name(self) -> str:
        return "buildgraph-" + re.sub(r"[^A-Za-z0-9_.-]", "-", self.node)

    def sh(self) -> str:
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(self.env.items()))

    def json(self) -> str:
        return json.dumps({"node": self.node, "kind": self.kind, "env": self.env,
                           "source_dir": str(self.source_dir) if self.source_dir else None,
                           "deps": self.deps}, indent=2, sort_keys=True) + "\n"

    def write_presets(self) -> Path | None:
        """Merge this node's presets into the project's CMakeUserPresets.json (a file of the
        developer's own: other presets in it are kept); the path written, or None."""
        if self.presets is None or self.source_dir is None:
            return None
        path = self.source_dir / PRESETS_FILE
        data = {"version": self.presets["version"], "configurePresets": [], "buildPresets": []}
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except ValueError:
                raise UsageError(f"{path}: not JSON; move it away and run again") from None
        for section in ("configurePresets", "buildPresets"):
            kept = [p for p in data.get(section, []) if p.get("name") != self.preset_name]
            data[section] = kept + self.presets[section]
        data["version"] = max(int(data.get("version", 3)), self.presets["version"])
        tmp = path.with_name(f".{PRESETS_FILE}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
        return path


def prepare(session, pattern: str, reporter) -> DevEnv:
    """Build what node `pattern` needs and describe its environment (the compile cache on
    unless the session's options turn it off)."""
    from buildgraph import operations
    from buildgraph.sandbox import SANDBOX_ROOT, unmapped

    nodes = session.graph.resolve(pattern)
    if len(nodes) != 1:
        raise UsageError(f"{pattern!r} names {len(nodes)} nodes ({', '.join(nodes[:4])}{' …' if len(nodes) > 4 else ''}); "
                         "name one, e.g. target@variant")
    node = session.graph.nodes[nodes[0]]
    target = session.ws.targets[node.target]
    if target.kind == "artifact":
        raise UsageError(f"{node.name} is an artifact: it has no build environment")
    dep_nodes = [n for _, n in node.deps]
    if dep_nodes:
        summary = operations.build(session, dep_nodes, reporter)
        if not summary.ok:
            failed = [o.name for o in summary.outcomes if o.status.value == "failed"]
            raise UsageError(f"the dependencies of {node.name} did not build ({', '.join(failed) or 'interrupted'})")
    engine = session.engine
    action = engine.action_for(node, {n: engine.outputs[n] for n in dep_nodes})
    resolved = engine.resolver.resolve(node.toolchain) if node.toolchain else None
    mounts = resolved.mounts if resolved else ()
    deps = {t: str(engine.out_dir(n)) for t, n in node.deps}

    def host(value: str) -> str:
        value = unmapped(value, None, mounts)
        for t, path in deps.items():
            value = value.replace(f"{SANDBOX_ROOT}/deps/{t}", path)
        return value

    env = {k: host(v) for k, v in action.env if k not in _SANDBOX_ONLY}
    env["DEPS_PREFIX_PATH"] = ";".join(deps.values())
    env["CMAKE_PREFIX_PATH"] = ":".join(deps.values())
    # Programs built in the checkout run there (tests): the dependencies' libraries are found
    # without the install RPATH that only the installed files have.
    libs = [f"{d}/{sub}" for d in deps.values() for sub in ("lib", "lib64") if os.path.isdir(f"{d}/{sub}")]
    if libs:
        env["LD_LIBRARY_PATH"] = ":".join(libs + [p for p in [os.environ.get("LD_LIBRARY_PATH")] if p])
    from buildgraph import compile_cache as cc

    cached = resolved is not None and session.opts.compile_cache and cc.program_path() is not None
    tools_bin = _tools_dir(session.store.root, resolved, cached)
    if cached:
        cache = cc.CompileCache(str(session.store.root / "compile-cache"))
        env.update(cache.env(resolved.digest, cache.directory(resolved.digest), None, tools_bin))
    env["PATH"] = f"{tools_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    env["BUILDGRAPH_ENV"] = node.name
    source_dir = session.root / target.source_dir if target.source is None else None
    dev = DevEnv(node.name, target.kind, env, tools_bin, source_dir, deps=deps)
    if target.kind == "cmake":
        args = recipes.cmake_args(target, target.matching(dict(node.assignment)))
        dev.presets = _presets(dev, target, args, env, session.state_dir.dir / "dev")
    return dev


def _tools_dir(cache_root: Path, resolved, cached: bool) -> str:
    """CACHE_DIR/dev-env/<digest>/bin: the toolchain's names as links into the store (and with
    `cached` the compile cache's shims in place of the compilers). Written once, atomically,
    and shared."""
    from buildgraph.digest import value_digest
    from buildgraph.sandbox import fill_tools_dir, unmapped

    links = tuple((n, unmapped(t, None, resolved.mounts)) for n, t in resolved.links) if resolved else ()
    compilers = tuple((n, unmapped(p, None, resolved.mounts), ct) for n, p, ct in resolved.compilers) \
        if cached else ()
    path = cache_root / "dev-env" / value_digest([links, compilers])[:16]
    final = path / "bin"
    if not final.is_dir():
        tmp = path / f".bin.{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        fill_tools_dir(str(tmp), links, compilers, str(final))
        try:
            os.rename(tmp, final)
        except OSError:   # another process made it first: theirs is the same
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def _presets(dev: DevEnv, target, args: tuple[str, ...], env: dict[str, str], build_dir: Path) -> dict:
    """The CMake configure and build presets of a cmake node: the recipe's own -D arguments
    (recipes.cmake_args), expanded as its shell would, plus the exported compile commands."""
    def expand(word: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), word)

    cache = {"CMAKE_BUILD_TYPE": "Release", "CMAKE_EXPORT_COMPILE_COMMANDS": "ON",
             "CMAKE_PREFIX_PATH": env["DEPS_PREFIX_PATH"]}
    for word in args:
        if word.startswith("-D") and "=" in word:
            name, value = word[2:].split("=", 1)
            name = name.split(":", 1)[0]
            if name not in _RECIPE_CACHE_VARS:
                cache[name] = expand(value)
    preset = {"name": dev.preset_name, "displayName": f"buildgraph: {dev.node}",
              "description": "generated by buildgraph shell/env: the node's dependencies, toolchain and compile cache",
              # Under .buildgraph: hidden from every srcs glob, so building here never changes a key.
              "generator": target.generator, "binaryDir": str(build_dir / dev.preset_name),
              "cacheVariables": cache,
              "environment": {**{k: v for k, v in env.items() if k != "PATH"},
                              "PATH": f"{dev.tools_bin}:$penv{{PATH}}"}}
    if "CMAKE_TOOLCHAIN_FILE" in env:
        preset["toolchainFile"] = env["CMAKE_TOOLCHAIN_FILE"]
    return {"version": 3, "configurePresets": [preset],
            "buildPresets": [{"name": dev.preset_name, "configurePreset": dev.preset_name}]}
