"""The artifact node: turn a backend variant into something a user can download and load.

A built-in action (it runs in-process on the staged dependency outputs; its key is an
ordinary action key over the spec below and those outputs). Output layout:

  dist/lib/<library>            the backend library, stripped (so is every shipped ELF file)
  dist/lib/<name>-<h8>.so.N     each shared library it needs from our dependencies (dynamic
                                linking): copied, renamed with 8 hex digits of its SHA-256,
                                SONAME and the NEEDED entries that name it rewritten, RPATH
                                $ORIGIN everywhere — the auditwheel "repair" method (patchelf)
  dist/licenses/<dep>/<file>    the licence files of every dependency (shipped or linked
                                statically); a dependency that declares none is an error
  dist/licenses/<runtime>/<file>  the licences of the runtimes the toolchain links in
                                (libc++, libunwind, the CUDA runtime …: `runtime_licenses`)
  debug/.build-id/xx/<rest>.debug  the debug info stripped from each shipped file, named by
                                its GNU build-id (where gdb and debuginfod look);
                                debug/build-ids.txt lists them
  dist/<library>.meta           properties: variant, linking, commit, working tree (clean or
                                dirty), os, platform tag,
                                toolchain digests, dependency versions and output digests,
                                and the SHA-256 of every file (what `artifact pull` verifies)
  wheel/<name>-<v>-py3-none-<tag>.whl   optional: the library as a Python package

Every ELF file is audited (audit.py); an artifact whose tightest true tag is worse than
the declared policy fails, naming the file, the symbol and the versions; so does a
shipped file with an RPATH that is not relative to itself ($ORIGIN).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from buildgraph import audit, elf
from buildgraph.digest import sha256_file
from buildgraph.fsutil import write_zip
from buildgraph.sources import wheel_stem

ARTIFACT_VERSION = 5  # 5: one tag per C library the files meet


@dataclass(frozen=True)
class Toolbox:
    """Host paths of what the artifact's toolchain lends it (its identity is in the key)."""

    objcopy: str | None = None
    licenses: dict[str, str] = field(default_factory=dict)   # runtime -> licence file
    env: dict[str, str] = field(default_factory=dict)        # the action's (zig finds its cache)


class ArtifactError(Exception):
    """The artifact cannot be made as declared (the message says what and where)."""


def _patchelf(*args) -> None:
    exe = shutil.which("patchelf")
    if exe is None:
        raise ArtifactError("patchelf is needed to repair shared libraries (apt-get install patchelf)")
    _run({}, exe, *args)


def _hashed_name(name: str, digest: str) -> str:
    """libjpeg.so.62 -> libjpeg-1a2b3c4d.so.62 (unique per content, so two versions never clash)."""
    stem, sep, rest = name.partition(".so")
    return f"{stem}-{digest[:8]}{sep}{rest}"


def _providers(deps_root: Path, skip: str) -> dict[str, tuple[Path, str]]:
    """Shared library name -> (file, the dependency node whose outputs hold it), over every
    dependency's lib/ (symlinks resolved): the name the dynamic loader matches a NEEDED entry
    against is the SONAME, so each library is known by its SONAME first and by its file
    names after."""
    by_soname: dict[str, tuple[Path, str]] = {}
    by_file: dict[str, tuple[Path, str]] = {}
    for dep in sorted(deps_root.iterdir()):
        if dep.name == skip or not (dep / "lib").is_dir():
            continue
        for path in sorted((dep / "lib").rglob("*.so*")):
            real = path.resolve()
            if path.is_file() and audit.is_elf(str(real)):
                soname = elf.requirements(str(real), symbols=False).soname
                if soname:
                    by_soname.setdefault(soname, (real, dep.name))
                by_file.setdefault(path.name, (real, dep.name))
    return {**by_file, **by_soname}


def _strip(path: Path, debug_root: Path, objcopy: str | None, env: dict[str, str]) -> str | None:
    """Strip `path` in place, keeping its debug info as debug_root/.build-id/xx/rest.debug;
    the build-id, or None where there was nothing to keep."""
    if objcopy is None:
        raise ArtifactError("the artifact's toolchain has no objcopy to strip shipped files with")
    bid = elf.build_id(str(path))
    if elf.has_debug_info(str(path)):
        if bid is None:
            raise ArtifactError(f"{path.name} carries debug info but no GNU build-id, so its debug info "
                                "could not be found again: link it with -Wl,--build-id")
        debug = debug_root / ".build-id" / bid[:2] / f"{bid[2:]}.debug"
        debug.parent.mkdir(parents=True, exist_ok=True)
        _run(env, objcopy, "--only-keep-debug", path, debug)
    _run(env, objcopy, "--strip-all", path, f"{path}.stripped")
    os.replace(f"{path}.stripped", path)
    os.chmod(path, 0o755)
    return bid


def _run(env: dict[str, str], *cmd) -> None:
    """Run a tool; `env` is the action's (its PATH names the sandbox's tool dir, so the
    wrapper scripts get the system's instead), or {} for this process's own."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          env={**env, "PATH": "/usr/bin:/bin"} if env else None)
    if proc.returncode != 0:
        raise ArtifactError(f"{' '.join(map(str, cmd))}: {(proc.stderr or proc.stdout).strip()}")


def _bundle(lib: Path, lib_dir: Path, providers: dict[str, tuple[Path, str]], ship,
            system: frozenset[str]) -> dict[str, str]:
    """Copy in what `lib` needs from our dependencies and `system` (the policy's libraries)
    does not hold, transitively (`ship` copies and strips one file); returns old -> new names."""
    renamed: dict[str, str] = {}
    queue = [lib]
    while queue:
        current = queue.pop()
        for needed in elf.requirements(str(current), symbols=False).needed:
            if needed in system or (needed not in providers and needed not in renamed):
                continue
            if needed not in renamed:
                source = providers[needed][0]
                new = _hashed_name(needed, sha256_file(source))
                ship(source, lib_dir / new)
                _patchelf("--set-soname", new, lib_dir / new)
                renamed[needed] = new
                queue.append(lib_dir / new)
            _patchelf("--replace-needed", needed, renamed[needed], current)
    for path in (lib_dir / n for n in renamed.values()):
        _patchelf("--set-rpath", "$ORIGIN", path)
    return renamed


def _copy_licenses(spec: dict, deps_root: Path, dist: Path, toolbox: Toolbox) -> None:
    """dist/licenses/<dep or runtime>/: every dependency's declared licence files and the
    licences of the runtimes the artifact's toolchain links in. Checked before any work."""
    files: list[tuple[str, Path, str]] = []     # (owner, file, name under licenses/<owner>/)
    for dep, info in sorted(spec["dependencies"].items()):
        if not info["licenses"]:
            if dep == spec["backend"]:
                continue
            raise ArtifactError(f"dependency {dep} declares no licence files ('licenses:' in its recipe); "
                                f"it is {'shipped' if spec['linking'] == 'dynamic' else 'linked statically'}")
        for rel in info["licenses"]:
            path = deps_root / dep / rel
            if rel.endswith("/"):
                # A directory: the project installs its own and its bundled code's licences
                # there (OpenCV: zlib, flatbuffers … built into its libraries).
                found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
                if not found:
                    raise ArtifactError(f"dependency {dep} declares licence directory {rel}, but its "
                                        f"outputs have no files there")
                files.extend((dep, p, str(p.relative_to(path))) for p in found)
            elif path.is_file():
                files.append((dep, path, path.name))
            else:
                raise ArtifactError(f"dependency {dep} declares licence file {rel}, but its outputs lack it")
    for runtime, rel in sorted(spec.get("runtime_licenses", {}).items()):
        source = toolbox.licenses.get(runtime)
        if source is None or not os.path.isfile(source):
            raise ArtifactError(f"the licence of runtime {runtime} ({rel}) is not in its toolchain")
        files.append((runtime, Path(source), Path(source).name))
    for owner, source, name in files:
        target = dist / "licenses" / owner / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


@dataclass
class Assembly:
    """The shipped library and what it bundles, in one directory, audited together."""

    main_lib: Path                       # (a node's output directory, when --explain audits one)
    bundled: dict[str, str]              # NEEDED name -> the name it ships under
    origin: dict[str, str]               # shipped file name -> the dependency it came from
    audits: list[audit.FileAudit]
    wanted: audit.Policy                 # the declared policy
    tags: list[str] = field(init=False)  # one per C library the files all meet, tightest first
    tag: str = field(init=False)         # the tightest, or "linux"

    def __post_init__(self):
        self.tags = audit.true_tags(self.audits)
        self.tag = self.tags[0] if self.tags else "linux"

    def came_from(self, a: audit.FileAudit, problem: str) -> str:
        return f"{problem} (from {self.origin[os.path.basename(a.path)]})"

    def leaks(self) -> list[str]:
        return [self.came_from(a, audit.runtime_export_problem(a.path, a.runtime_leaks))
                for a in self.audits if a.runtime_leaks]

    def problems(self, policy: audit.Policy | None = None, symbols: int | None = 3) -> list[str]:
        """Why the files do not keep `policy` (the declared one by default), each naming the
        file, the symbols (up to `symbols` per version; None: all) or library, and the
        dependency it came from."""
        found = [self.came_from(a, v) for a in self.audits for v in a.violations(policy or self.wanted, symbols)]
        return found + [self.came_from(a, f"{os.path.basename(a.path)}: RPATH {r!r} is not relative to the "
                                          f"library ($ORIGIN)")
                        for a in self.audits for entry in a.req.rpaths for r in entry.split(":")
                        if r and not r.startswith("$ORIGIN")]

    def explanation(self, policy: audit.Policy | None = None) -> tuple[list[str], bool]:
        """Lines for `buildgraph audit --explain`, and whether the claim holds: the claim and what
        the files prove; each file's tags and origin; every problem with its symbol, file and
        dependency; and what sets the tightest true tag."""
        policy = policy or self.wanted
        lines = [f"claims {policy.name}; its files prove {', '.join(self.tags) or 'linux (no policy)'}"]
        lines += [f"  {os.path.basename(a.path)} (from {self.origin[os.path.basename(a.path)]}): "
                  f"{', '.join(a.tags) or 'linux'}" for a in self.audits]
        problems = self.problems(policy, symbols=None) + [f"C++ runtime: {p}" for p in self.leaks()]
        lines += [f"  not {policy.name}: {p}" for p in problems]
        if self.tags:
            set_by = [self.came_from(a, v) for a, v in audit.what_sets(self.audits, self.tag)]
            lines.append(f"  tightest true tag: {self.tag}" + (f", set by: {'; '.join(set_by)}" if set_by else
                                                                 " (the oldest policy)"))
        return lines, not problems


def assemble(spec: dict, deps_root: Path, lib_dir: Path, ship) -> Assembly:
    """Put the backend's library into `lib_dir` with every library it needs from our
    dependencies (`ship(source, target)` copies one), and audit them together."""
    backend = spec["backend"]
    library = deps_root / backend / spec["library"]
    if not library.is_file():
        backend_root = deps_root / backend
        present = sorted(str(p.relative_to(backend_root)) for p in backend_root.rglob("*") if p.is_file())
        raise ArtifactError(f"{backend} has no {spec['library']} (its outputs: {', '.join(present[:8])})")
    wanted = audit.policy_named(spec["policy"])
    if wanted is None:
        raise ArtifactError(f"unknown policy {spec['policy']!r}")
    lib_dir.mkdir(parents=True, exist_ok=True)
    main_lib = lib_dir / library.name
    ship(library.resolve(), main_lib)
    # Static variants link their dependencies in, so usually nothing is left to bundle; what a
    # dependency offers only as a shared library (a prebuilt libdnnl) is bundled in both.
    providers = _providers(deps_root, backend)
    bundled = _bundle(main_lib, lib_dir, providers, ship, wanted.whitelist)
    _patchelf("--set-rpath", "$ORIGIN", main_lib)
    # Which dependency node each shipped file came from: what a refusal names.
    origin = {main_lib.name: backend, **{new: providers[old][1] for old, new in bundled.items()}}
    audits = audit.audit_together([str(p) for p in sorted(lib_dir.iterdir()) if audit.is_elf(str(p))])
    return Assembly(main_lib, bundled, origin, audits, wanted)


def build(spec: dict, deps_root: Path, out_root: Path, toolbox: Toolbox = Toolbox()) -> None:
    """Make the artifact described by `spec` from staged dependency outputs into `out_root`."""
    dist = out_root / "dist"
    dist.mkdir(parents=True)
    (out_root / "debug").mkdir()
    _copy_licenses(spec, deps_root, dist, toolbox)
    debug_ids: dict[str, str] = {}

    def ship(source: Path, target: Path) -> None:
        shutil.copyfile(source, target)
        os.chmod(target, 0o755)
        bid = _strip(target, out_root / "debug", toolbox.objcopy, toolbox.env)
        if bid:
            debug_ids[target.name] = bid

    built = assemble(spec, deps_root, dist / "lib", ship)
    main_lib, bundled, audits, tags, tag = built.main_lib, built.bundled, built.audits, built.tags, built.tag
    leaks = built.leaks()
    if leaks:
        raise ArtifactError("refusing to ship a C++ runtime's symbols:\n  " + "\n  ".join(leaks))
    problems = built.problems()
    if problems:
        raise ArtifactError(f"refusing to label this artifact {built.wanted.name}: its true tag is {tag}:\n  "
                            + "\n  ".join(problems))

    meta = {"variant": spec["variant"], "linking": spec["linking"], "commit": spec["commit"],
            # "dirty": built from a tree that differs from the commit; not what the commit makes.
            "working_tree": spec.get("working_tree", "unknown"),
            "os": spec["os"], "platform_tag": platform_tags(tags),
            # the symbols that keep it from the next older policy, e.g. expf@GLIBC_2.27
            "platform_tag.set_by": "; ".join(v for _, v in audit.what_sets(audits, tag)) or "-",
            "library": main_lib.name,
            "artifact_format": str(ARTIFACT_VERSION)}
    for name, digest in sorted(spec["toolchains"].items()):
        meta[f"toolchain.{name}"] = digest
    for dep, info in sorted(spec["dependencies"].items()):
        meta[f"dependency.{dep}.version"] = info["version"] or "-"
        meta[f"dependency.{dep}.output"] = info["output"]
    for old, new in sorted(bundled.items()):
        meta[f"bundled.{old}"] = new
    for name, bid in sorted(debug_ids.items()):
        meta[f"debug.{name}.build_id"] = bid
    # The debug artifact's index (also what makes an artifact without debug info have one).
    (out_root / "debug" / "build-ids.txt").write_text("".join(f"{bid} {name}\n" for name, bid
                                                             in sorted(debug_ids.items())))
    for path in sorted(p for p in dist.rglob("*") if p.is_file()):
        meta[f"file.{path.relative_to(dist)}.sha256"] = sha256_file(path)
    (dist / f"{main_lib.name}.meta").write_text("".join(f"{k}={v}\n" for k, v in meta.items()))

    if spec.get("wheel"):
        make_wheel(dist, out_root / "wheel", spec["wheel"], spec["version"], tags, main_lib.name,
                   project=spec.get("project") or spec["wheel"])


def platform_tags(tags: list[str]) -> str:
    """The compressed tag set of the policies `tags` name, each alias first (e.g.
    manylinux2014_x86_64.manylinux_2_17_x86_64.musllinux_1_1_x86_64); linux_x86_64 for none."""
    policies = [audit.policy_named(tag) for tag in tags if tag != "linux"]
    return ".".join(f"{name}_x86_64" for p in policies for name in (*p.aliases, p.name)) or "linux_x86_64"


def make_wheel(dist: Path, out: Path, name: str, version: str, tags: list[str], library: str,
               project: str | None = None) -> Path:
    """A py3-none-<tag> wheel of project `project` (default `name`) holding the dist tree under
    package `name`, with a RECORD."""
    out.mkdir(parents=True)
    package = name.replace("-", "_")
    project = project or name
    stem = wheel_stem(project)
    info = f"{stem}-{version}.dist-info"
    wheel = out / f"{stem}-{version}-py3-none-{platform_tags(tags)}.whl"
    files: list[tuple[str, bytes]] = []
    files.append((f"{package}/__init__.py", (
        '"""The shipped library: `load()` opens it with ctypes; `library_path` locates it."""\n'
        "import ctypes\nimport os\n\n"
        f"library_path = os.path.join(os.path.dirname(__file__), 'lib', {library!r})\n\n\n"
        "def load():\n    return ctypes.CDLL(library_path)\n").encode()))
    for path in sorted(p for p in dist.rglob("*") if p.is_file()):
        files.append((f"{package}/{path.relative_to(dist)}", path.read_bytes()))
    files.append((f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode()))
    files.append((f"{info}/WHEEL", ("Wheel-Version: 1.0\nGenerator: buildgraph\nRoot-Is-Purelib: false\n"
                                    + "".join(f"Tag: py3-none-{t}\n" for t in platform_tags(tags).split(".")))
                  .encode()))
    write_wheel(wheel, [(a, d, 0o755 if a.endswith((".so", ".py")) or ".so." in a else 0o644) for a, d in files],
                info)
    return wheel


def write_wheel(path: Path, entries: list[tuple[str, bytes, int]], info: str) -> None:
    """A wheel of (name, bytes, mode) entries and the RECORD of them in `info` (its .dist-info)."""
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for name, data, _ in entries] + [f"{info}/RECORD,,"]
    write_zip(path, [*entries, (f"{info}/RECORD", ("\n".join(record) + "\n").encode(), 0o644)])


def spec_json(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))
