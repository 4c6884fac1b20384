"""Load and validate a workspace: BUILD.yaml, deps/*.yaml, toolchains/*.yaml.

The result is a tree of frozen dataclasses; nothing downstream sees YAML. Every
error names file:line and the field, and suggests the closest valid name.

BUILD.yaml:
    workspace: NAME
    variants: {AXIS: [VALUE, ...], ...}     # the variant matrix, in order
    toolchain: NAME                         # default toolchain for targets
    host_tools: [default, nasm, ...]        # host programs actions may run ("default": the usual set)
    source_date_epoch: INT
    host_key: [kernel, cpus]                # host properties in every key (default both; [] shares across hosts)
    targets: {NAME: TARGET, ...}
deps/NAME.yaml: one TARGET (its name is the file's stem unless `name:` says).
toolchains/NAME.yaml: one TOOLCHAIN.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from buildgraph import signatures
from buildgraph.errors import ConfigError, did_you_mean
from buildgraph.signatures import BUILD_FILE
from buildgraph.sources import Source
from buildgraph.yamlsource import LocatedDict, load_yaml

KINDS = ("script", "cmake", "make", "autotools", "artifact")
JOBSERVER_FORMS = ("pipe", "fifo")

# Programs an action may find on PATH unless the workspace says otherwise.
DEFAULT_HOST_TOOLS = (
    "sh", "bash", "cat", "cp", "mv", "rm", "mkdir", "rmdir", "ln", "ls", "sed", "grep",
    "egrep", "awk", "tr", "sort", "uniq", "head", "tail", "touch", "chmod", "install",
    "find", "xargs", "env", "date", "uname", "test", "[", "expr", "dirname", "basename",
    "cmake", "make", "ninja", "tar", "gzip", "wc", "cut", "printf", "echo", "true", "patchelf",
    "false", "sleep", "diff", "cmp", "readlink", "realpath", "tee", "pwd", "id", "od", "seq",
)
DEFAULT_SOURCE_DATE_EPOCH = 315532800  # 1980-01-01: zip and friends reject earlier
# Variables the sandbox sets itself; a target's env may not redefine them.
RESERVED_ENV = frozenset({"PATH", "HOME", "TMPDIR", "TZ", "LC_ALL", "SRC", "OUT", "WORK", "DEPS",
                          "DEPS_PREFIX_PATH", "SOURCE_DATE_EPOCH", "MAKEFLAGS"})
RESERVED_ENV_PREFIXES = ("DEP_", "BG_")

COMMON_FIELDS = ("kind", "name", "description", "srcs", "deps", "outs", "env", "toolchain",
                 "features", "weight", "estimate", "when", "jobserver", "source_dir", "source", "licenses", "version",
                 "post_install", "license", "reproducible", "reproducible_reason")
KIND_FIELDS = {
    "script": ("cmds",),
    "cmake": ("cmake_args", "generator", "build_targets"),
    "make": ("make_args", "make_targets", "install_targets"),
    "autotools": ("configure_args", "make_args", "make_targets", "install_targets"),
    "artifact": ("backend", "library", "policy", "wheel", "project"),
}
# Licences that forbid linking into a shipped binary statically (SPDX prefixes).
STATIC_DENY = ("GPL-", "AGPL-", "LGPL-")
SOURCE_KINDS = ("debian", "url", "pypi-sdist", "pypi-wheel", "git", "path")
SOURCE_FIELDS = SOURCE_KINDS + ("sha256", "commit", "version", "subdirectory", "strip_components", "file")
WHEN_FIELDS = ("if", "deps", "env", "cmds", "cmake_args", "make_args", "configure_args", "toolchain", "policy")
TOP_FIELDS = ("workspace", "variants", "toolchain", "host_tools", "source_date_epoch", "host_key", "targets")
HOST_PROPERTIES = ("kernel", "cpus")   # what an action can observe of the host that no sandbox pins
TOOLCHAIN_FIELDS = ("name", "version", "provider", "description", "tools", "expect_version",
                    "requirements", "packages", "url", "sha256", "strip_components", "wrappers",
                    "cmake_toolchain", "env", "writable", "host_compiler", "link_with", "cuda", "patches", "compiler",
                    "link_args", "shared_link_args", "libc_link_args", "drop_args", "short_so_names",
                    "runtime_licenses", "setup")
TOOLCHAIN_PROVIDERS = ("pypi", "apt", "host", "archive")
# What each provider needs besides name, version and tools.
PROVIDER_REQUIRES = {"pypi": ("requirements",), "apt": ("packages",), "host": (), "archive": ("url", "sha256")}


@dataclass(frozen=True)
class Location:
    file: str
    line: int


@dataclass(frozen=True)
class When:
    """Extra deps, env and arguments for the variants matching `condition`."""

    condition: tuple[tuple[str, tuple[str, ...]], ...]
    deps: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cmds: tuple[str, ...] = ()
    cmake_args: tuple[str, ...] = ()
    make_args: tuple[str, ...] = ()
    configure_args: tuple[str, ...] = ()
    toolchain: str | None = None
    policy: str | None = None                    # artifact: this variant's platform policy

    def matches(self, assignment: dict[str, str]) -> bool:
        return all(assignment.get(axis) in values for axis, values in self.condition)


@dataclass(frozen=True)
class Target:
    name: str
    kind: str
    loc: Location
    srcs: tuple[str, ...] = ()
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    toolchain: str | None = None
    features: tuple[str, ...] = ()
    weight: int = 1
    estimate: float | None = None                # seconds the action is expected to take (scheduling,
                                                 # until a real duration is recorded)
    when: tuple[When, ...] = ()
    jobserver: str = "pipe"
    source_dir: str = "."
    cmds: tuple[str, ...] = ()
    cmake_args: tuple[str, ...] = ()
    generator: str = "Unix Makefiles"
    build_targets: tuple[str, ...] = ()
    make_args: tuple[str, ...] = ()
    make_targets: tuple[str, ...] = ()
    install_targets: tuple[str, ...] = ("install",)
    configure_args: tuple[str, ...] = ()
    post_install: tuple[str, ...] = ()           # commands after a cmake/make/autotools install
    source: Source | None = None                 # the upstream tree, at $SOURCE
    licenses: tuple[str, ...] = ()               # licence files in the outputs (for artifacts)
    license: str = ""                            # SPDX identifier (the static-linking policy reads it)
    backend: str = ""                            # artifact: the target whose library it ships
    library: str = ""                            # artifact: the library's path in the backend's outputs
    policy: str = "manylinux_2_17"               # artifact: the platform policy it must meet
    wheel: str = ""                              # artifact: Python package name of an optional wheel
    project: str = ""                            # artifact: the wheel's project name on an index
                                                 # ({axis}: the variant's value; default: wheel)
    reproducible: bool = True                    # false: `verify` reports it apart, not as a failure
    reproducible_reason: str = ""
    version: str = ""                            # the upstream release, for metadata
    description: str = ""
    field_lines: tuple[tuple[str, int], ...] = ()

    def line_of(self, name: str) -> int:
        return dict(self.field_lines).get(name, self.loc.line)

    def all_deps(self) -> tuple[str, ...]:
        """Every dependency this target may have in some variant."""
        seen = dict.fromkeys(self.deps)
        for w in self.when:
            seen.update(dict.fromkeys(w.deps))
        return tuple(seen)

    def project_for(self, assignment: dict[str, str]) -> str:
        """The wheel's project (distribution) name for one variant: mxbackend-{device} -> mxbackend-cpu."""
        return re.sub(r"\{(\w+)\}", lambda m: assignment.get(m.group(1), m.group(0)), self.project or self.wheel)

    def matching(self, assignment: dict[str, str]) -> list:
        """The `when` entries one variant matches, in order."""
        return [w for w in self.when if w.matches(assignment)]

    def for_variant(self, name: str, assignment: dict[str, str]):
        """A single-valued field (toolchain, policy) as one variant sees it: set by the last
        matching `when` that sets it, else the target's own."""
        return next((getattr(w, name) for w in reversed(self.when)
                     if getattr(w, name) and w.matches(assignment)), getattr(self, name))


@dataclass(frozen=True)
class Toolchain:
    """A pinned toolchain as declared in toolchains/NAME.yaml (see toolstore.py for providers)."""

    name: str
    version: str
    provider: str                                # pypi | apt | host | archive
    loc: Location
    tools: tuple[tuple[str, str], ...] = ()      # role -> path (relative to the entry for pypi/archive)
    expect_version: str | None = None            # must appear in `<cc or nvcc> --version`
    description: str = ""
    requirements: tuple[str, ...] = ()           # pypi: pinned pip requirements
    packages: tuple[tuple[str, str], ...] = ()   # apt: package -> pinned version
    url: str | None = None                       # archive
    sha256: str | None = None                    # archive
    strip_components: int = 0                    # archive
    wrappers: tuple[tuple[str, str], ...] = ()   # role -> command template, e.g. "{zig} cc -target ..."
    cmake_toolchain: bool = False                # generate cmake/toolchain.cmake from cc/cxx/ar/ranlib
    env: tuple[tuple[str, str], ...] = ()        # extra variables; "{entry}" is the store entry
    writable: tuple[str, ...] = ()               # entry subdirectories actions may write (zig's cache)
    host_compiler: str | None = None             # CUDA: toolchain nvcc uses through -ccbin
    link_with: str | None = None                 # CUDA: toolchain whose cc/c++ do the final link
    cuda: str | None = None                      # CUDA: the nvcc version the compatibility rules use
    compiler: str | None = None                  # "clang 19.1.7": what a non-gcc cc is (compat rules)
    # What the cc/c++ wrappers add or remove, so every build system gets the same linking:
    link_args: tuple[str, ...] = ()              # added when a command links (e.g. a build-id)
    shared_link_args: tuple[str, ...] = ()       # added when it links a shared library (-z defs)
    libc_link_args: tuple[str, ...] = ()         # added when it links the C library dynamically
                                                 # (not -static, -nostdlib, -nodefaultlibs)
    drop_args: tuple[str, ...] = ()              # sh patterns of arguments the driver must not see
    short_so_names: bool = False                 # pass libx.so.1.2.3.4 as a link named *.so (zig)
    # runtime -> its licence file (relative to the installed files): what an artifact linking
    # this toolchain's runtimes (libc++, libunwind, cudart) ships beside them. Not part of the
    # entry's contents; the artifact's key holds it.
    runtime_licenses: tuple[tuple[str, str], ...] = ()
    # Patches applied to the installed files (patch -p1 in install/), as (path, sha256 of the
    # content); `patch_dir` is where the paths are relative to (the toolchain file's directory).
    patches: tuple[tuple[str, str], ...] = ()
    patch_dir: str = ""
    field_lines: tuple[tuple[str, int], ...] = ()   # field (tools.cc) -> its line, for errors
    # Commands run once at fetch, in the finished entry ({tool} and {entry} as in wrappers):
    # what the toolchain makes from its own files (zig: musl's libc link stub).
    setup: tuple[str, ...] = ()

    def line_of(self, field: str) -> int:
        """The line declaring `field` (e.g. tools.cc), else the toolchain's first line."""
        return dict(self.field_lines).get(field, self.loc.line)

    def spec(self) -> dict:
        """Everything that defines the store entry's contents (not where it was declared)."""
        return {"name": self.name, "version": self.version, "provider": self.provider,
                "tools": self.tools, "requirements": self.requirements, "packages": self.packages,
                "url": self.url, "sha256": self.sha256, "strip_components": self.strip_components,
                "wrappers": self.wrappers, "cmake_toolchain": self.cmake_toolchain, "env": self.env,
                "writable": self.writable, "link_args": self.link_args,
                "shared_link_args": self.shared_link_args, "drop_args": self.drop_args,
                "short_so_names": self.short_so_names,
                # fields added later: only when set, so the entries of toolchains without them keep their names
                **{k: v for k, v in (("patches", self.patches), ("libc_link_args", self.libc_link_args),
                                     ("setup", self.setup)) if v}}


@dataclass(frozen=True)
class Workspace:
    root: Path
    name: str
    axes: tuple[tuple[str, tuple[str, ...]], ...]
    targets: dict[str, Target]
    toolchains: dict[str, Toolchain]
    host_tools: tuple[str, ...] = DEFAULT_HOST_TOOLS
    source_date_epoch: int = DEFAULT_SOURCE_DATE_EPOCH
    default_toolchain: str | None = None
    files: tuple[str, ...] = field(default=())  # every file read, relative to root
    host_key: tuple[str, ...] = HOST_PROPERTIES


# ---------------------------------------------------------------- validation helpers

class _Fields:
    """Typed access to one YAML mapping, raising ConfigError with file:line:field."""

    def __init__(self, data: LocatedDict, prefix: str, allowed: tuple[str, ...]):
        self.data, self.prefix = data, prefix
        for key in data:
            if key not in allowed:
                raise ConfigError(f"unknown field '{key}'", file=data.file, line=data.line_of(key),
                                  field=self.path(key),
                                  hint=did_you_mean(key, allowed) or f"valid fields: {', '.join(allowed)}")

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, message: str, hint: str | None = None, line: int | None = None):
        return ConfigError(message, file=self.data.file, line=line or self.data.line_of(key),
                           field=self.path(key), hint=hint)

    def str(self, key: str, default=None, required: bool = False):
        if key not in self.data:
            if required:
                raise ConfigError(f"missing required field '{key}'", file=self.data.file,
                                  line=self.data.line, field=self.prefix or None)
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error(key, f"expected a string, got {_kind(value)}")
        return str(value)

    def int(self, key: str, default: int, minimum: int = 0) -> int:
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"expected an integer >= {minimum}, got {_kind(value)}")
        return value

    def str_list(self, key: str) -> tuple[str, ...]:
        if key not in self.data or self.data[key] is None:
            return ()
        value = self.data[key]
        if isinstance(value, str):
            raise self.error(key, "expected a list of strings, got a string",
                             hint=f"write it as a list: {key}: [{value}]")
        if not isinstance(value, list):
            raise self.error(key, f"expected a list of strings, got {_kind(value)}")
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise self.error(key, f"item {i + 1}: expected a string, got {_kind(item)}",
                                 line=value.line_of(i))
        return tuple(str(item) for item in value)

    def env(self, key: str) -> tuple[tuple[str, str], ...]:
        pairs = self.str_map(key)
        for name, _ in pairs:
            if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES) or not name.isidentifier():
                raise ConfigError(f"environment variable name {name!r} is reserved or invalid",
                                  file=self.data.file, line=self.data[key].line_of(name),
                                  field=f"{self.path(key)}.{name}",
                                  hint="the sandbox sets PATH, HOME, TMPDIR, TZ, LC_ALL, SRC, OUT, WORK, "
                                       "DEPS*, DEP_*, BG_* and SOURCE_DATE_EPOCH itself")
        return pairs

    def str_map(self, key: str) -> tuple[tuple[str, str], ...]:
        if key not in self.data or self.data[key] is None:
            return ()
        value = self.data[key]
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping of names to strings, got {_kind(value)}")
        out = []
        for name, item in value.items():
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise ConfigError(f"expected a string, got {_kind(item)}", file=value.file,
                                  line=value.line_of(name), field=f"{self.path(key)}.{name}")
            out.append((name, str(item)))
        return tuple(sorted(out))

    def mapping(self, key: str) -> LocatedDict | None:
        if key not in self.data or self.data[key] is None:
            return None
        value = self.data[key]
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {_kind(value)}")
        return value


def _kind(value) -> str:
    if value is None:
        return "nothing (null)"
    for cls, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"),
                      (str, "a string"), (list, "a list"), (dict, "a mapping")):
        if isinstance(value, cls):
            return name
    return type(value).__name__


def _check_name(name, file: str, line: int, field_path: str, what: str) -> str:
    if not isinstance(name, str) or not name or any(c in name for c in "@/ \t\n\\:*?") \
            or name.startswith("."):
        raise ConfigError(f"invalid {what} name {name!r}: use letters, digits, '-', '_' and '.'",
                          file=file, line=line, field=field_path)
    return name


def _check_relpath(path: str, fields: _Fields, key: str) -> None:
    if not path or path.startswith("/") or ".." in Path(path).parts:
        raise fields.error(key, f"path {path!r} must be relative and stay inside the workspace")


# ---------------------------------------------------------------- loaders

def _read(path: Path, root: Path):
    rel = os.path.relpath(path, root)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=rel) from None
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=rel) from None
    return load_yaml(text, rel), rel


def _parse_when(raw, fields: _Fields, axes: dict[str, tuple[str, ...]], target_features) -> tuple[When, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise fields.error("when", f"expected a list of {{if: ..., ...}} entries, got {_kind(raw)}")
    result = []
    for i, item in enumerate(raw):
        where = f"{fields.path('when')}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"expected a mapping, got {_kind(item)}", file=raw.file,
                              line=raw.line_of(i), field=where)
        wf = _Fields(item, where, WHEN_FIELDS)
        cond = wf.mapping("if")
        if not cond:
            raise ConfigError("missing required field 'if'", file=item.file, line=item.line, field=where)
        condition = []
        for axis, values in cond.items():
            line = cond.line_of(axis)
            if axis not in axes:
                raise ConfigError(f"unknown variant axis '{axis}'", file=item.file, line=line,
                                  field=f"{where}.if", hint=did_you_mean(axis, axes))
            if axis not in target_features:
                raise ConfigError(f"condition on axis '{axis}' that the target does not read",
                                  file=item.file, line=line, field=f"{where}.if",
                                  hint=f"add '{axis}' to the target's features")
            vals = tuple(str(v) for v in values) if isinstance(values, list) else (str(values),)
            for v in vals:
                if v not in axes[axis]:
                    raise ConfigError(f"unknown value '{v}' for axis '{axis}'", file=item.file,
                                      line=line, field=f"{where}.if",
                                      hint=did_you_mean(v, axes[axis]) or f"values: {', '.join(axes[axis])}")
            condition.append((axis, vals))
        result.append(When(condition=tuple(condition), deps=wf.str_list("deps"), env=wf.env("env"),
                           cmds=wf.str_list("cmds"), cmake_args=wf.str_list("cmake_args"),
                           make_args=wf.str_list("make_args"), configure_args=wf.str_list("configure_args"),
                           toolchain=wf.str("toolchain"), policy=_policy(wf, None)))
    return tuple(result)


def _estimate(f: "_Fields") -> float | None:
    """`estimate: 12m` (also 90s, 1h, 1h30m, or plain seconds) as seconds."""
    value = f.data.get("estimate")
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    m = re.fullmatch(r"\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*", str(value))
    if not m or not any(m.groups()):
        raise f.error("estimate", f"expected a duration such as 12m, 90s or 1h30m, got {value!r}")
    h, mins, secs = (int(g or 0) for g in m.groups())
    return float(h * 3600 + mins * 60 + secs)


def _policy(f: "_Fields", default: str | None) -> str | None:
    """An artifact's platform policy, checked against the policies the audit knows."""
    from buildgraph.audit import known_policy_names, policy_named
    name = f.str("policy", default)
    if name is not None and policy_named(name) is None:
        raise f.error("policy", f"unknown policy {name!r}",
                      hint=f"{known_policy_names()}, or an alias such as manylinux2014")
    return name


def _parse_target(name: str, data, file: str, line: int, prefix: str,
                  axes: dict[str, tuple[str, ...]], default_toolchain: str | None) -> Target:
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping describing the target, got {_kind(data)}",
                          file=file, line=line, field=prefix)
    kind = data.get("kind")
    if kind is None:
        raise ConfigError("missing required field 'kind'", file=file, line=data.line, field=prefix,
                          hint=f"one of: {', '.join(KINDS)}")
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}", file=file, line=data.line_of("kind"),
                          field=f"{prefix}.kind",
                          hint=did_you_mean(str(kind), KINDS) or f"one of: {', '.join(KINDS)}")
    f = _Fields(data, prefix, COMMON_FIELDS + KIND_FIELDS[kind])
    features = f.str_list("features")
    for i, axis in enumerate(features):
        if axis not in axes:
            raise f.error("features", f"unknown variant axis '{axis}'",
                          hint=did_you_mean(axis, axes) or
                          (f"declared axes: {', '.join(axes)}" if axes else "BUILD.yaml declares no variants"),
                          line=data["features"].line_of(i))
    srcs = f.str_list("srcs")
    for s in srcs:
        _check_relpath(s, f, "srcs")
    outs = f.str_list("outs")
    for o in outs:
        _check_relpath(o, f, "outs")
        normal = os.path.normpath(o) + ("/" if o.endswith("/") else "")
        if normal != o or o.startswith("./"):
            raise f.error("outs", f"output {o!r} is not a normal path", hint=f"write {normal!r}")
    jobserver = f.str("jobserver", "pipe")
    if jobserver not in JOBSERVER_FORMS:
        raise f.error("jobserver", f"unknown jobserver form {jobserver!r}",
                      hint=f"one of: {', '.join(JOBSERVER_FORMS)}")
    source_dir = f.str("source_dir", ".")
    if source_dir != ".":
        _check_relpath(source_dir, f, "source_dir")
    if kind == "artifact":
        for needed in ("backend", "library"):
            if needed not in data:
                raise ConfigError(f"an artifact needs '{needed}'", file=file, line=data.line, field=prefix or None)
        if f.str("backend") not in f.str_list("deps"):
            raise f.error("backend", "the backend must also be listed in 'deps'")
        _policy(f, "manylinux_2_17")
        _check_project(f, features)
        _check_wheel_version(f)
    when = _parse_when(data.get("when"), f, axes, features)
    if data.get("reproducible") is False and not data.get("reproducible_reason"):
        raise ConfigError("a target declared reproducible: false needs a reproducible_reason",
                          file=file, line=data.line_of("reproducible"), field=f.path("reproducible"))
    if kind == "script" and not f.str_list("cmds") and not any(w.cmds for w in when):
        raise ConfigError("a script target needs 'cmds'", file=file, line=data.line, field=prefix)
    field_lines = tuple(sorted((k, data.line_of(k)) for k in data))
    if kind == "artifact" and not outs:
        outs = ("dist/", "debug/", "wheel/") if f.str("wheel") else ("dist/", "debug/")
    source = _parse_source(f.mapping("source"), f) if "source" in data else None
    licenses = f.str_list("licenses")
    for lic in licenses:
        _check_relpath(lic, f, "licenses")
    return Target(
        name=name, kind=kind, loc=Location(file, data.line), srcs=srcs, deps=f.str_list("deps"),
        outs=outs, env=f.env("env"), toolchain=f.str("toolchain", default_toolchain),
        features=features, weight=f.int("weight", 1, minimum=1), estimate=_estimate(f),
        when=when, jobserver=jobserver,
        source_dir=source_dir, cmds=f.str_list("cmds"), cmake_args=f.str_list("cmake_args"),
        generator=f.str("generator", "Unix Makefiles"), build_targets=f.str_list("build_targets"),
        make_args=f.str_list("make_args"), make_targets=f.str_list("make_targets"),
        install_targets=f.str_list("install_targets") if "install_targets" in data else ("install",),
        configure_args=f.str_list("configure_args"), post_install=f.str_list("post_install"),
        source=source, licenses=licenses, license=f.str("license", ""),
        backend=f.str("backend", ""), library=f.str("library", ""),
        policy=f.str("policy", "manylinux_2_17"), wheel=f.str("wheel", ""), project=f.str("project", ""),
        reproducible=_bool(f, "reproducible", True), reproducible_reason=f.str("reproducible_reason", ""),
        version=f.str("version", ""), description=f.str("description", ""), field_lines=field_lines)


_PROJECT_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")   # PEP 508


def _check_project(f: _Fields, features: tuple[str, ...]) -> None:
    """`project` (or `wheel`) is a project name an index takes; its {axis} names read axes."""
    if "project" in f.data and not f.str("wheel"):
        raise f.error("project", "a project name is for the wheel: set 'wheel' too")
    name = f.str("project", "") or f.str("wheel", "")
    for axis in re.findall(r"\{(\w*)\}", name):
        if axis not in features:
            raise f.error("project", f"{{{axis}}} is not an axis this target reads",
                          hint=f"add '{axis}' to its features" if axis else "write {AXIS}, e.g. {device}")
    if name and not _PROJECT_NAME.match(re.sub(r"\{\w+\}", "x", name)):
        field = "project" if "project" in f.data else "wheel"
        raise f.error(field, f"{name!r} is not a project name an index takes (PEP 508: letters, digits, "
                             "and . _ - between them)")


def _check_wheel_version(f: _Fields) -> None:
    """An artifact's wheel is a package Python can import, and its version one pip reads the
    same way (PEP 440, written in its normal form: the wheel's file name carries it as is)."""
    package = f.str("wheel", "")
    if package and not (package.replace("-", "_").isidentifier() and package.isascii()):
        normal = re.sub(r"\W+", "_", package).strip("_").lower() or "package"
        raise f.error("wheel", f"{package!r} is not a Python package name (`import {package}` would fail)",
                      hint=f"write {normal!r}; 'project' names the distribution on an index")
    version = f.str("version", "")
    if not version:
        return
    from packaging.version import InvalidVersion, Version

    try:
        normal = str(Version(version))
    except InvalidVersion:
        raise f.error("version", f"{version!r} is not a version pip accepts (PEP 440)",
                      hint="e.g. 1.9.0, 1.9.0rc1, 1.9.0.post1, 1.9.0.dev3") from None
    if normal != version:
        raise f.error("version", f"{version!r} is not written as pip writes it (PEP 440): the wheel's "
                                 f"file name would not match its metadata", hint=f"write {normal!r}")


_SHARED_LIBRARY = re.compile(r"^[^/]+\.so(\.\d+)*$")


def _covered(path: str, outs: tuple[str, ...]) -> bool:
    """Whether `path` lies in the declared outputs (a file named, or under a directory/)."""
    return any(path == o or (o.endswith("/") and path.startswith(o)) for o in outs)


def _check_artifacts(ws: Workspace) -> None:
    """What an artifact ships is checked before anything builds: its library is a shared
    library the backend declares, and every dependency it ships or links declares licence files
    its outputs hold. Every offending dependency is named, each with its file:line."""
    for t in ws.targets.values():
        if t.kind != "artifact":
            continue
        backend = ws.targets[t.backend]
        where = dict(file=t.loc.file, line=t.line_of("library"), field=field_path(t, "library"))
        if not _SHARED_LIBRARY.match(os.path.basename(t.library)):
            raise ConfigError(f"{t.library!r} is not a shared library (NAME.so or NAME.so.N)", **where,
                              hint="an artifact ships the backend's shared library; link the static "
                                   "libraries into it (the static variant)")
        if backend.outs and not _covered(t.library, backend.outs):
            raise ConfigError(f"{t.library!r} is not among {t.backend}'s outputs ({', '.join(backend.outs)})",
                              **where, hint=f"{backend.loc.file}:{backend.line_of('outs')} declares them")
        problems = []
        for dep in t.all_deps():
            d = ws.targets[dep]
            if not d.licenses:
                if dep != t.backend:
                    problems.append(f"{d.loc.file}:{d.loc.line}: {dep} declares no licence files ('licenses:')")
                continue
            problems += [f"{d.loc.file}:{d.line_of('licenses')}: {dep}'s licence file {lic} is not among its "
                         f"outputs ({', '.join(d.outs)})" for lic in d.licenses if d.outs and not _covered(lic, d.outs)]
        if problems:
            raise ConfigError(f"artifact {t.name} ships or links dependencies whose licences it cannot ship:\n  "
                              + "\n  ".join(problems), file=t.loc.file, line=t.line_of("deps"),
                              field=field_path(t, "deps"),
                              hint="declare each one's licence files, as installed in its outputs, in 'licenses:'")


def _bool(f: _Fields, key: str, default: bool) -> bool:
    if key not in f.data:
        return default
    value = f.data[key]
    if not isinstance(value, bool):
        raise f.error(key, f"expected true or false, got {_kind(value)}")
    return value


def _parse_source(data, parent: _Fields) -> Source:
    if data is None:
        raise parent.error("source", "expected a mapping such as {url: ..., sha256: ...}")
    f = _Fields(data, parent.path("source"), SOURCE_FIELDS)
    kinds = [k for k in SOURCE_KINDS if k in data]
    if "debian" in kinds and "url" in kinds:   # the url serves the same bytes where apt is missing
        kinds.remove("url")
    if len(kinds) != 1:
        raise ConfigError(f"a source names exactly one of {', '.join(SOURCE_KINDS)}", file=data.file,
                          line=data.line, field=parent.path("source"))
    kind = kinds[0]
    where = f"{data.file}:{data.line}"
    location = f.str(kind, required=True)
    sha256 = f.str("sha256")
    commit = f.str("commit")

    def hexpin(value, key, length):
        if value is None or len(value) != length or any(c not in "0123456789abcdef" for c in value):
            raise f.error(key, f"expected {length} lowercase hex digits" if value else f"'{kind}' needs a pinned '{key}'",
                          line=data.line_of(key) if key in data else data.line)
        return value

    if kind in ("url", "debian", "pypi-sdist", "pypi-wheel"):
        hexpin(sha256, "sha256", 64)
    if kind == "git":
        hexpin(commit, "commit", 40)
    version = f.str("version")
    if kind in ("pypi-sdist", "pypi-wheel", "debian") and not version:
        raise f.error("version", f"a {kind} source needs 'version'", line=data.line)
    file = f.str("file", "")
    if kind == "debian" and (not file or "/" in file):
        raise f.error("file", "a debian source needs 'file': the upstream tarball's name in the source "
                      "package (e.g. openblas_0.3.21+ds.orig.tar.xz)", line=data.line_of("file"))
    if kind == "pypi-wheel" and file:
        _check_wheel_file(file, location, version, f, data)
    subdirectory = f.str("subdirectory", "")
    if subdirectory:
        _check_relpath(subdirectory, f, "subdirectory")
    if kind == "path":
        _check_relpath(location, f, "path")
    return Source(kind=kind, location=location, sha256=sha256, commit=commit, version=version,
                  subdirectory=subdirectory, strip_components=f.int("strip_components", 0), declared_in=where,
                  file=file, url=f.str("url", "") if kind == "debian" else "")


def _check_wheel_file(file: str, name: str, version: str, f: _Fields, data) -> None:
    """A pypi-wheel's `file` is that wheel's name (PEP 427), for that project and version."""
    from buildgraph.sources import WheelName, wheel_stem
    wheel = WheelName.parse(file)
    normal = wheel_stem(name)
    if wheel is None or wheel.project != normal or wheel.version != version:
        raise f.error("file", f"expected the wheel's file name, {normal}-{version}-PYTHON-ABI-PLATFORM.whl "
                      f"(e.g. {normal}-{version}-py3-none-manylinux2014_x86_64.whl), got {file!r}",
                      line=data.line_of("file"))


def _parse_toolchain(data, file: str, stem: str, directory: Path | None = None) -> Toolchain:
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping describing the toolchain, got {_kind(data)}", file=file, line=1)
    f = _Fields(data, "", TOOLCHAIN_FIELDS)
    name = _check_name(f.str("name", stem), file, data.line_of("name"), "name", "toolchain")
    provider = f.str("provider", required=True)
    if provider not in TOOLCHAIN_PROVIDERS:
        raise f.error("provider", f"unknown provider {provider!r}",
                      hint=did_you_mean(provider, TOOLCHAIN_PROVIDERS) or
                      f"one of: {', '.join(TOOLCHAIN_PROVIDERS)}")
    for needed in PROVIDER_REQUIRES[provider]:
        if needed not in data:
            raise ConfigError(f"a {provider} toolchain needs '{needed}'", file=file, line=data.line)
    tools, wrappers = f.str_map("tools"), f.str_map("wrappers")
    if not tools and not wrappers and not (data.get("host_compiler") or data.get("link_with")):
        raise ConfigError("a toolchain needs 'tools' (e.g. cc: gcc)", file=file, line=data.line)
    setup = f.str_list("setup")
    templates = [(f"wrappers.{role}", data["wrappers"].line_of(role), t) for role, t in wrappers]
    templates += [(f"setup[{i}]", data["setup"].line_of(i), t) for i, t in enumerate(setup)]
    for field_name, line, template in templates:
        for ref in _template_refs(template):
            if ref not in dict(tools) and ref not in ("entry", "prefix_maps"):
                raise ConfigError(f"{field_name} refers to unknown tool '{{{ref}}}'", file=file, line=line,
                                  field=field_name, hint=did_you_mean(ref, dict(tools))
                                  or "name one of 'tools', {entry} or {prefix_maps}")
    if provider in ("pypi", "archive"):
        for role, path in tools:
            if path.startswith("/") or ".." in Path(path).parts:
                raise ConfigError(f"tool path {path!r} must be relative to the unpacked toolchain",
                                  file=file, line=data["tools"].line_of(role), field=f"tools.{role}")
    sha256 = f.str("sha256")
    if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256)):
        raise f.error("sha256", "expected 64 lowercase hex digits")
    writable = f.str_list("writable")
    for w in writable:
        _check_relpath(w, f, "writable")
    patches = _toolchain_patches(f, data, directory)
    return Toolchain(name=name, version=f.str("version", required=True), provider=provider,
                     loc=Location(file, data.line), tools=tools, expect_version=f.str("expect_version"),
                     description=f.str("description", ""), requirements=f.str_list("requirements"),
                     packages=f.str_map("packages"), url=f.str("url"), sha256=sha256,
                     strip_components=f.int("strip_components", 0), wrappers=wrappers,
                     cmake_toolchain=bool(data.get("cmake_toolchain", False)), env=f.str_map("env"),
                     writable=writable, host_compiler=f.str("host_compiler"), link_with=f.str("link_with"),
                     cuda=f.str("cuda"), compiler=f.str("compiler"), link_args=f.str_list("link_args"),
                     shared_link_args=f.str_list("shared_link_args"), drop_args=f.str_list("drop_args"),
                     libc_link_args=f.str_list("libc_link_args"), setup=setup,
                     runtime_licenses=f.str_map("runtime_licenses"),
                     short_so_names=bool(data.get("short_so_names", False)), patches=patches,
                     patch_dir=str(directory) if patches else "",
                     field_lines=tuple((f"tools.{role}", data["tools"].line_of(role)) for role, _ in tools))


def _toolchain_patches(f: _Fields, data, directory: Path | None) -> tuple[tuple[str, str], ...]:
    """(path, sha256) of each patch file, relative to the toolchain file's directory."""
    import hashlib   # here: loading OpenSSL costs every build ~3 ms, and few toolchains have patches

    out = []
    for i, rel in enumerate(f.str_list("patches")):
        _check_relpath(rel, f, "patches")
        path = (directory or Path(".")) / rel
        if not path.is_file():
            raise f.error("patches", f"patch file {rel!r} does not exist (looked for {path.name} in "
                          f"{path.parent.name or '.'}/)", line=data["patches"].line_of(i))
        out.append((rel, hashlib.sha256(path.read_bytes()).hexdigest()))
    return tuple(out)


def _template_refs(template: str) -> list[str]:
    import re

    return re.findall(r"\{([A-Za-z0-9_+-]+)\}", template)


def find_root(start: Path) -> Path:
    """The nearest directory at or above `start` holding BUILD.yaml."""
    root = signatures.find_root(start)
    if root is None:
        raise ConfigError(f"no {BUILD_FILE} in {Path(start).resolve()} or any parent directory",
                          hint="run inside a workspace or pass -C DIR")
    return root


def load_workspace(root: Path) -> Workspace:
    """Parse and validate the workspace at `root`; ConfigError on any bad input."""
    root = root.resolve()
    data, build_rel = _read(root / BUILD_FILE, root)
    if data is None:
        data = LocatedDict()
        data.file, data.line, data.key_lines = build_rel, 1, {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {_kind(data)}", file=build_rel, line=1)
    top = _Fields(data, "", TOP_FIELDS)
    files = [build_rel]

    axes: dict[str, tuple[str, ...]] = {}
    variants = top.mapping("variants")
    for axis, values in (variants or {}).items():
        line = variants.line_of(axis)
        _check_name(axis, build_rel, line, f"variants.{axis}", "axis")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"expected a non-empty list of values, got {_kind(values)}",
                              file=build_rel, line=line, field=f"variants.{axis}")
        vals = []
        for i, v in enumerate(values):
            v = str(v) if isinstance(v, (str, int, float)) and not isinstance(v, bool) else None
            if v is None or not v or any(c in v for c in "@-/ "):
                raise ConfigError(f"invalid value {values[i]!r}: no '-', '@', '/' or spaces",
                                  file=build_rel, line=values.line_of(i), field=f"variants.{axis}")
            if v in vals:
                raise ConfigError(f"duplicate value '{v}'", file=build_rel, line=values.line_of(i),
                                  field=f"variants.{axis}")
            vals.append(v)
        axes[axis] = tuple(vals)

    toolchains: dict[str, Toolchain] = {}
    tc_dir = root / "toolchains"
    if tc_dir.is_dir():
        for path in sorted(tc_dir.glob("*.y*ml")):
            raw, rel = _read(path, root)
            files.append(rel)
            tc = _parse_toolchain(raw, rel, path.stem, path.parent)
            files.extend(os.path.relpath(Path(tc.patch_dir) / p, root) for p, _ in tc.patches)
            if tc.name in toolchains:
                raise ConfigError(f"toolchain '{tc.name}' is defined twice", file=rel, line=tc.loc.line,
                                  hint=f"also in {toolchains[tc.name].loc.file}")
            toolchains[tc.name] = tc

    default_toolchain = top.str("toolchain")
    targets: dict[str, Target] = {}
    raw_targets = top.mapping("targets") or {}
    for name, body in raw_targets.items():
        line = raw_targets.line_of(name)
        _check_name(name, build_rel, line, f"targets.{name}", "target")
        targets[name] = _parse_target(name, body, build_rel, line, f"targets.{name}", axes, default_toolchain)
    deps_dir = root / "deps"
    if deps_dir.is_dir():
        for path in sorted(deps_dir.glob("*.y*ml")):
            raw, rel = _read(path, root)
            files.append(rel)
            name = raw.get("name", path.stem) if isinstance(raw, dict) else path.stem
            line = raw.line_of("name") if isinstance(raw, dict) else 1
            _check_name(name, rel, line, "name", "target")
            if name in targets:
                raise ConfigError(f"target '{name}' is already defined in {targets[name].loc.file}",
                                  file=rel, line=line, field="name")
            targets[name] = _parse_target(name, raw, rel, 1, "", axes, default_toolchain)

    host_tools = top.str_list("host_tools") if "host_tools" in data else ("default",)
    # "default" in the list stands for the default set, so a workspace can add to it.
    host_tools = tuple(dict.fromkeys(t for name in host_tools
                                     for t in (DEFAULT_HOST_TOOLS if name == "default" else (name,))))
    host_key = top.str_list("host_key") if "host_key" in data else HOST_PROPERTIES
    for i, prop in enumerate(host_key):
        if prop not in HOST_PROPERTIES:
            raise top.error("host_key", f"unknown host property {prop!r}", line=data["host_key"].line_of(i),
                            hint=did_you_mean(prop, HOST_PROPERTIES) or f"one of: {', '.join(HOST_PROPERTIES)}")
    ws = Workspace(root=root, name=top.str("workspace", root.name), axes=tuple(axes.items()),
                   host_key=tuple(dict.fromkeys(host_key)),
                   targets=targets, toolchains=toolchains, host_tools=host_tools,
                   source_date_epoch=top.int("source_date_epoch", DEFAULT_SOURCE_DATE_EPOCH),
                   default_toolchain=default_toolchain, files=tuple(files))
    _check_references(ws, top)
    _check_artifacts(ws)
    return ws


def _check_toolchain_references(ws: Workspace) -> None:
    from buildgraph import compat

    for tc in ws.toolchains.values():
        for field_name in ("host_compiler", "link_with"):
            ref = getattr(tc, field_name)
            if ref is not None and ref not in ws.toolchains:
                raise ConfigError(f"unknown toolchain '{ref}'", file=tc.loc.file, line=tc.loc.line,
                                  field=field_name, hint=did_you_mean(ref, ws.toolchains) or _tc_hint(ws))
        if tc.cuda and tc.host_compiler:
            compat.check_cuda_host(tc, ws.toolchains[tc.host_compiler])


def _check_references(ws: Workspace, top: _Fields) -> None:
    _check_toolchain_references(ws)
    if ws.default_toolchain and ws.default_toolchain not in ws.toolchains:
        raise top.error("toolchain", f"unknown toolchain '{ws.default_toolchain}'",
                        hint=did_you_mean(ws.default_toolchain, ws.toolchains) or _tc_hint(ws))
    for t in ws.targets.values():
        for name, field_name in [(t.toolchain, "toolchain")] + [(w.toolchain, "when") for w in t.when]:
            if name and name not in ws.toolchains:
                raise ConfigError(f"unknown toolchain '{name}'", file=t.loc.file,
                                  line=t.line_of(field_name), field=field_path(t, field_name),
                                  hint=did_you_mean(name, ws.toolchains) or _tc_hint(ws))
        seen: dict[str, str] = {}
        for dep in t.all_deps():
            var = "DEP_" + "".join(c if c.isalnum() else "_" for c in dep).upper()
            if seen.setdefault(var, dep) != dep:
                raise ConfigError(f"dependencies '{seen[var]}' and '{dep}' would both be ${var}",
                                  file=t.loc.file, line=t.line_of("deps"), field=field_path(t, "deps"),
                                  hint="rename one of the targets")
            if dep == t.name:
                raise ConfigError(f"target '{t.name}' depends on itself", file=t.loc.file,
                                  line=t.line_of("deps"), field=field_path(t, "deps"))
            if dep not in ws.targets:
                raise ConfigError(f"unknown target '{dep}'", file=t.loc.file, line=t.line_of("deps"),
                                  field=field_path(t, "deps"), hint=did_you_mean(dep, ws.targets))


def field_path(t: Target, name: str) -> str:
    """How errors name a target's field: targets.NAME.FIELD in BUILD.yaml, FIELD in deps/*.yaml."""
    return f"targets.{t.name}.{name}" if t.loc.file.endswith(BUILD_FILE) else name


def _tc_hint(ws: Workspace) -> str:
    return f"toolchains declared: {', '.join(ws.toolchains)}" if ws.toolchains else \
        "declare it in toolchains/<name>.yaml"
