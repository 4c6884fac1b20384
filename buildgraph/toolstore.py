"""The toolchain store: pinned toolchains fetched once, identified by the digest of their files.

Layout of the store directory (default <cache dir>/toolchains, or $BUILDGRAPH_TOOLCHAIN_DIR)
-------------------------------------------------------------------------------------------
  <name>-<d16>/             one entry per toolchain *definition*; d16 = digest of its spec,
                            so a new version or requirement is a new entry
      install/              what the provider installed (pypi: pip --target; archive: unpacked)
      bin/                  a script per `wrappers` role and a link per `tools` role
      cmake/toolchain.cmake when `cmake_toolchain` is set
      <writable>/           e.g. zig-cache: shared by all actions, mounted read-write
      manifest.json         every file's digest (entry-relative, or absolute for apt/host files)
      digest.json           written last: the entry's digest and the stat signatures of its
                            executables; its presence means the entry is complete
  <entry>.lock              flock held while fetching: two processes fetching at once do the
                            work once; the second waits and finds the entry complete
  .tmp-<entry>-<pid>/       an entry being built; renamed into place when complete

The digest covers the spec (so a version change alone changes it) and the content of
every file. It is computed once, at fetch. A build re-checks only the stat signatures of
the executables (tens of stats, not the 15,000 files of a zig install); a changed
executable is re-hashed and changes the digest, and so every dependent key.
`toolchain verify` re-hashes everything, names what changed, and records the digest
the files really have, so builds that follow get new keys too.

Providers: pypi (pinned requirements, pip --target), apt (a Debian package at a pinned
version; the digest covers `dpkg -L` of each package), host (an existing program checked
against an expected version; not hermetic), archive (url + sha256, looked up first in
the mirrors as sha256/<sha256>, like every source; see sources.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from buildgraph.digest import file_digest, stat_signature, value_digest
from buildgraph.errors import BuildgraphError, ConfigError
from buildgraph.fsutil import force_remove, write_atomic
from buildgraph.workspace import Toolchain

MANIFEST_VERSION = 1
STORE_LAYOUT = 3  # part of every entry name: a new layout never reuses old entries (3: driver args, install RPATH)
SANDBOX_TOOLCHAINS = "/toolchains"  # where entries appear inside the bwrap sandbox
# Role in toolchains/*.yaml -> name on the action's PATH.
ROLE_NAMES = {"cxx": "c++"}
# gcc runs these helpers: their contents are part of the compiler.
_GCC_HELPERS = {"cc": ("cc1", "collect2", "lto-wrapper"), "cxx": ("cc1plus",)}


class FetchError(BuildgraphError):
    """A toolchain could not be obtained; the message says what was tried and how to supply it."""


@dataclass(frozen=True)
class Entry:
    toolchain: Toolchain
    path: Path                          # host path of the entry
    name: str                           # its directory name (appears as /toolchains/<name>)
    digest: str
    watch: tuple[tuple[str, tuple], ...]  # (host path, stat signature) of executables
    tampered: tuple[str, ...] = ()


def entry_name(tc: Toolchain) -> str:
    return f"{tc.name}-{value_digest([STORE_LAYOUT, tc.spec()])[:16]}"


class ToolStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def entry_path(self, tc: Toolchain) -> Path:
        return self.root / entry_name(tc)

    # ------------------------------------------------------------ reading

    def entry(self, tc: Toolchain) -> Entry | None:
        """The complete entry for `tc`, or None if it has not been fetched."""
        path = self.entry_path(tc)
        try:
            info = json.loads((path / "digest.json").read_text())
        except (OSError, ValueError):
            return None
        watch = tuple((_host_path(path, p), tuple(sig)) for p, sig in info["watch"])
        return Entry(tc, path, path.name, info["digest"], watch, tuple(info.get("tampered", ())))

    def current_digest(self, entry: Entry, stat_cache) -> tuple[str, list[str]]:
        """The entry's digest now, and the executables that changed since it was fetched."""
        changed = []
        for path, sig in entry.watch:
            try:
                now = stat_signature(os.stat(path))
            except OSError:
                now = None
            if now != sig:
                changed.append(path)
        if not changed:
            return entry.digest, []
        extra = []
        for p in changed:
            try:
                extra.append([p, stat_cache.digest(p)])
            except OSError:
                extra.append([p, None])
        return value_digest([entry.digest, extra]), changed

    # ------------------------------------------------------------ fetching

    def fetch(self, tc: Toolchain, force: bool = False, log=None) -> Entry:
        """Make the entry for `tc` exist; idempotent and safe to run from two processes at once."""
        existing = self.entry(tc)
        if existing is not None and not force:
            return existing
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.entry_path(tc)
        with open(f"{final}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            existing = self.entry(tc)
            if existing is not None and not force:
                return existing   # another process fetched it while we waited
            tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
            force_remove(tmp)
            tmp.mkdir()
            try:
                if log:
                    log(f"fetching toolchain {tc.name} {tc.version} ({tc.provider})")
                host_files = PROVIDERS[tc.provider](tc, tmp)
                _apply_patches(tc, tmp)
                tools = _tool_paths(tc, tmp, host_files)
                _write_bin(tc, tmp, tools)
                if tc.cmake_toolchain:
                    _write_cmake_file(tmp)
                for w in tc.writable:
                    (tmp / w).mkdir(parents=True, exist_ok=True)
                _run_setup(tc, tmp, tools)
                self._record(tc, tmp, host_files)
                if final.exists():
                    force_remove(final)
                os.rename(tmp, final)
            except BaseException:
                force_remove(tmp)
                raise
        entry = self.entry(tc)
        assert entry is not None
        return entry

    def _record(self, tc: Toolchain, tmp: Path, host_files: list[str]) -> None:
        skip = {f"{w}/" for w in tc.writable}
        files, watch = {}, []
        for dirpath, dirnames, filenames in os.walk(tmp):
            rel_dir = os.path.relpath(dirpath, tmp)
            if rel_dir != "." and any(f"{rel_dir}/".startswith(s) for s in skip):
                dirnames[:] = []
                continue
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, tmp)
                files[rel], exe = _file_entry(path)
                if exe:
                    watch.append((rel, list(stat_signature(os.stat(path)))))
        for path in host_files:
            files[path], exe = _file_entry(path)
            if exe:
                watch.append((path, list(stat_signature(os.stat(path)))))
        digest = value_digest({"spec": tc.spec(), "files": sorted(files.items())})
        (tmp / "manifest.json").write_text(json.dumps({"v": MANIFEST_VERSION, "toolchain": tc.name,
                                                       "version": tc.version, "digest": digest,
                                                       "files": files}, sort_keys=True))
        write_atomic(tmp / "digest.json", json.dumps({"digest": digest, "watch": sorted(watch)}, sort_keys=True).encode())

    # ------------------------------------------------------------ verifying

    def verify(self, tc: Toolchain) -> list[str]:
        """Re-hash every file of the entry; returns what differs from the fetch (empty: intact).

        When something differs, the entry's recorded digest becomes the digest of the
        files as they are, so later builds key their actions on the real contents.
        """
        entry = self.entry(tc)
        if entry is None:
            raise FetchError(f"toolchain {tc.name} is not fetched; run `buildgraph toolchain fetch {tc.name}`")
        manifest = json.loads((entry.path / "manifest.json").read_text())
        recorded = manifest["files"]
        problems, actual = [], {}
        for rel, expected in sorted(recorded.items()):
            path = _host_path(entry.path, rel)
            try:
                actual[rel], _ = _file_entry(path)
            except OSError:
                problems.append(f"{path}: missing")
                continue
            if actual[rel] != expected:
                problems.append(f"{path}: content changed")
        skip = {"manifest.json", "digest.json"} | {f"{w}/" for w in tc.writable}
        for dirpath, dirnames, filenames in os.walk(entry.path):
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), entry.path)
                if rel not in recorded and rel not in skip and not any(rel.startswith(s) for s in skip):
                    problems.append(f"{os.path.join(dirpath, name)}: not part of the fetched toolchain")
                    actual[rel], _ = _file_entry(os.path.join(dirpath, name))
        info = json.loads((entry.path / "digest.json").read_text())
        if problems:
            info["digest"] = value_digest({"spec": tc.spec(), "files": sorted(actual.items())})
            info["tampered"] = problems
            info["watch"] = [[p, list(stat_signature(os.stat(_host_path(entry.path, p))))]
                             for p, _ in info["watch"] if os.path.exists(_host_path(entry.path, p))]
        else:
            info.pop("tampered", None)
            info["digest"] = manifest["digest"]
        write_atomic(entry.path / "digest.json", json.dumps(info, sort_keys=True).encode())
        return problems


# ---------------------------------------------------------------- helpers

def _host_path(entry: Path, rel: str) -> str:
    return rel if rel.startswith("/") else str(entry / rel)


def _file_entry(path: str) -> tuple[list, bool]:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return ["->", os.readlink(path)], False
    exe = bool(st.st_mode & 0o111)
    return [file_digest(path), exe], exe


def _which(command: str) -> str | None:
    if "/" in command:
        return command if os.access(command, os.X_OK) else None
    return shutil.which(command)


def _tool_paths(tc: Toolchain, tmp: Path, host_files: list[str]) -> dict[str, str]:
    """role -> how a wrapper refers to the tool: "$d/install/<rel>" or an absolute host path."""
    out = {}
    for role, path in tc.tools:
        if tc.provider in ("pypi", "archive"):
            if not (tmp / "install" / path).exists():
                raise FetchError(f"toolchain {tc.name}: tool {role}={path!r} is not in the installed "
                                 f"files (looked for install/{path})")
            out[role] = f'"$d/install/{path}"'
        else:
            out[role] = os.path.realpath(_which(path) or path)
    return out


def _apply_patches(tc: Toolchain, tmp: Path) -> None:
    """Apply `patches` to the installed files, in order; the spec holds each one's sha256,
    so the entry is named by what was applied (a changed patch is a new entry)."""
    import hashlib

    for rel, sha256 in tc.patches:
        path = Path(tc.patch_dir) / rel
        try:
            data = path.read_bytes()
        except OSError as e:
            raise FetchError(f"toolchain {tc.name}: cannot read patch {rel}: {e.strerror}") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise FetchError(f"toolchain {tc.name}: patch {rel} changed while the toolchain was being fetched")
        try:
            run = subprocess.run(["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch",
                                  "-d", str(tmp / "install")], input=data, capture_output=True)
        except FileNotFoundError:
            raise FetchError(f"toolchain {tc.name} has patches, and GNU patch is not installed "
                             "(apt-get install patch; .ci/setup does)") from None
        if run.returncode != 0:
            out = (run.stdout + run.stderr).decode(errors="replace").strip()
            raise FetchError(f"toolchain {tc.name}: patch {rel} does not apply to {tc.version}:\n{out}")


def _write_bin(tc: Toolchain, tmp: Path, tools: dict[str, str]) -> None:
    """bin/: a link per tool (relative for installed files) and a script per wrapper."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    wrapped = dict(tc.wrappers)
    for role, ref in tools.items():
        name = ROLE_NAMES.get(role, role)
        if name in wrapped or role in wrapped:
            continue
        target = os.path.join("..", "install", dict(tc.tools)[role]) if ref.startswith('"$d') else ref
        os.symlink(target, bin_dir / name)
    for role, template in tc.wrappers:
        command = _expand(template, tools, tmp)
        script = bin_dir / ROLE_NAMES.get(role, role)
        script.write_text("#!/bin/sh\n"
                          f"# generated by buildgraph from toolchain {tc.name} (wrappers.{role})\n"
                          'd=$(dirname "$(dirname "$(readlink -f "$0")")")\n'
                          + (_driver_args(tc) if role in ("cc", "cxx") else "") +
                          f'exec {command} "$@"\n')
        script.chmod(0o755)


def _expand(template: str, tools: dict[str, str], tmp: Path) -> str:
    """A wrapper's or setup command's sh: {tool} references, {entry} as "$d" (the entry,
    wherever it is), {prefix_maps} as the reproducibility flags."""
    for ref, value in tools.items():
        template = template.replace("{" + ref + "}", value)
    return template.replace("{entry}", '"$d"').replace(
        "{prefix_maps}", f'-ffile-prefix-map="${{BUILDGRAPH_SANDBOX:-/sandbox}}"=/sandbox '
                         f'-ffile-prefix-map="$d"={SANDBOX_TOOLCHAINS}/{_entry_dir_name(tmp)}')


def _run_setup(tc: Toolchain, tmp: Path, tools: dict[str, str]) -> None:
    """Run the toolchain's `setup` commands in the new entry, with its environment."""
    env = {**os.environ, **{k: v.replace("{entry}", str(tmp)) for k, v in tc.env}}
    for template in tc.setup:
        command = _expand(template, tools, tmp)
        proc = subprocess.run(["sh", "-c", f"d={shlex.quote(str(tmp))}\n{command}"], cwd=tmp, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise FetchError(f"toolchain {tc.name}: setup command failed: {template}\n{tail}")


def _sh_args(args) -> str:
    """Arguments for the wrapper's sh, each quoted; {entry} becomes the entry's directory."""
    return " ".join('"$d"'.join(shlex.quote(part) if part else "" for part in arg.split("{entry}"))
                    for arg in args)


def _driver_args(tc: Toolchain) -> str:
    """sh that rewrites a compiler driver's arguments: drops `drop_args` patterns, and when the
    command links (no -c/-S/-E) appends `link_args`, plus `shared_link_args` for -shared and
    `libc_link_args` unless it links without the C library or statically. In the wrapper, not
    in CMake's toolchain file, so make, autotools and CMake builds link alike."""
    if not (tc.link_args or tc.shared_link_args or tc.libc_link_args or tc.drop_args or tc.short_so_names):
        return ""
    lines = ["links=1 shared=" + (" libc=1" if tc.libc_link_args else ""), "for a do", "  shift", "  case $a in"]
    if tc.drop_args:
        lines.append(f"    {'|'.join(_sh_pattern(p) for p in tc.drop_args)}) continue ;;")
    lines += ["    -c|-S|-E|-M|-MM) links= ;;", "    -shared) shared=1 ;;"]
    if tc.libc_link_args:
        lines.append("    -static|-nostdlib|-nodefaultlibs|-nolibc) libc= ;;")
    if tc.short_so_names:
        # A library path with four version numbers (libprotobuf.so.3.21.12.0) goes through a
        # link named *.so; the output's NEEDED entry comes from the library's SONAME anyway.
        lines += ["    *.so.[0-9]*.[0-9]*.[0-9]*.[0-9]*)",
                  '      if [ -f "$a" ]; then',
                  '        l="${TMPDIR:-/tmp}/buildgraph-so-links"; mkdir -p "$l"',
                  """        n="$l/$(printf %s "$a" | tr './' '__').so"; ln -sf "$(readlink -f "$a")" "$n"; a=$n""",
                  "      fi ;;"]
    lines += ["  esac", '  set -- "$@" "$a"', "done"]
    if tc.link_args:
        lines.append(f'[ -n "$links" ] && set -- "$@" {_sh_args(tc.link_args)}')
    if tc.shared_link_args:
        lines.append(f'[ -n "$links" ] && [ -n "$shared" ] && set -- "$@" {_sh_args(tc.shared_link_args)}')
    if tc.libc_link_args:
        lines.append(f'[ -n "$links" ] && [ -n "$libc" ] && set -- "$@" {_sh_args(tc.libc_link_args)}')
    return "\n".join(lines) + "\n"


def _sh_pattern(pattern: str) -> str:
    """A case pattern: `*` stays a wildcard, every other character is literal."""
    return "*".join(shlex.quote(part) if part else "" for part in pattern.split("*"))


def _entry_dir_name(tmp: Path) -> str:
    """The final entry name of a temp dir named .tmp-<entry>-<pid>."""
    return tmp.name.removeprefix(".tmp-").rsplit("-", 1)[0]


def _write_cmake_file(tmp: Path) -> None:
    (tmp / "cmake").mkdir()
    lines = ["# generated by buildgraph: use this toolchain's wrappers; no build RPATH (reproducible)"]
    for var, name in (("CMAKE_C_COMPILER", "cc"), ("CMAKE_CXX_COMPILER", "c++")):
        if (tmp / "bin" / name).exists():
            lines.append(f'set({var} "${{CMAKE_CURRENT_LIST_DIR}}/../bin/{name}")')
    for var, name in (("CMAKE_AR", "ar"), ("CMAKE_RANLIB", "ranlib")):
        if (tmp / "bin" / name).exists():
            lines.append(f'set({var} "${{CMAKE_CURRENT_LIST_DIR}}/../bin/{name}" CACHE FILEPATH "")')
    lines.append("set(CMAKE_SKIP_BUILD_RPATH ON)")
    # Installed files find their libraries relative to themselves (a prefix moves: the
    # sandbox's out/ becomes deps/<name>/, then an artifact); never a link directory of
    # the sandbox that built them.
    lines.append('set(CMAKE_INSTALL_RPATH "\\$ORIGIN/../lib")')
    lines.append("set(CMAKE_INSTALL_RPATH_USE_LINK_PATH OFF)")
    (tmp / "cmake" / "toolchain.cmake").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- providers
# Each installs into tmp/install (if it installs anything) and returns the host files
# outside the entry that belong to the toolchain (apt and host providers).

def _fetch_pypi(tc: Toolchain, tmp: Path) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-compile", "--only-binary=:all:", "--target", str(tmp / "install"), *tc.requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise FetchError(f"toolchain {tc.name}: pip could not install {' '.join(tc.requirements)}:\n{tail}")
    _check_expected_version(tc, tmp)
    return []


def _fetch_apt(tc: Toolchain, tmp: Path) -> list[str]:
    wrong = []
    for package, version in tc.packages:
        installed = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", package],
                                   capture_output=True, text=True).stdout
        if not installed.startswith("install ok installed") or installed.split()[-1] != version:
            wrong.append((package, version, installed.split()[-1] if "installed" in installed else None))
    if wrong:
        specs = [f"{p}={v}" for p, v, _ in wrong]
        if os.geteuid() == 0 and shutil.which("apt-get"):
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            proc = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *specs],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env)
                proc = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *specs],
                                      capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise FetchError(f"toolchain {tc.name}: apt-get could not install {' '.join(specs)}: "
                                 f"{proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
        else:
            found = ", ".join(f"{p} {have or 'not installed'}" for p, _, have in wrong)
            raise FetchError(f"toolchain {tc.name} needs {' '.join(specs)} (found: {found}); "
                             f"install with: sudo apt-get install {' '.join(specs)}")
    files = []
    for package, _ in tc.packages:
        listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True).stdout.split("\n")
        files.extend(p for p in listing if p and os.path.isfile(p) and not os.path.islink(p)
                     and not p.startswith("/usr/share/doc/"))
    _check_expected_version(tc, tmp)
    return sorted(set(files))


def _fetch_host(tc: Toolchain, tmp: Path) -> list[str]:
    files = []
    missing = []
    for role, command in tc.tools:
        path = _which(command)
        if path is None:
            missing.append((role, command))
            continue
        path = os.path.realpath(path)
        files.append(path)
        for helper in _GCC_HELPERS.get(role, ()):
            out = subprocess.run([path, f"-print-prog-name={helper}"], capture_output=True, text=True)
            found = out.stdout.strip()
            if out.returncode == 0 and os.path.isabs(found) and os.path.exists(found):
                files.append(os.path.realpath(found))
    if missing:   # the workspace names a program this machine lacks: bad input, before anything runs
        where = "" if all("/" in c for _, c in missing) else " on PATH"
        raise ConfigError(f"toolchain {tc.name} {tc.version} (host) is not on this machine: looked for "
                          f"{', '.join(f'{r}={c}' for r, c in missing)}{where}",
                          file=tc.loc.file, line=tc.line_of(f"tools.{missing[0][0]}"),
                          field=f"tools.{missing[0][0]}",
                          hint="install it, or point 'tools' at an existing installation"
                               + (f" that reports version {tc.expect_version!r}" if tc.expect_version else ""))
    _check_expected_version(tc, tmp)
    return sorted(set(files))


def _fetch_archive(tc: Toolchain, tmp: Path) -> list[str]:
    """Through the source machinery: mirrors first (as sha256/<sha256>), then the URL;
    sha256 checked; unpacked without letting any member leave the directory."""
    from buildgraph.sources import SourceError, SourceStore, mirror_list

    src, store = _archive_source(tc), SourceStore(tmp, mirror_list())
    try:
        archive = store.obtain(src, tmp)
        store.unpack(src, archive, tmp / "install")
    except SourceError as exc:
        raise FetchError(str(exc)) from None
    archive.unlink()
    _check_expected_version(tc, tmp)
    return []


def _archive_source(tc: Toolchain):
    """An archive toolchain as the source machinery sees it."""
    from buildgraph.sources import Source

    return Source("url", tc.url, sha256=tc.sha256, strip_components=tc.strip_components,
                  declared_in=f"toolchain {tc.name}, {tc.loc.file}")


def _check_expected_version(tc: Toolchain, tmp: Path) -> None:
    """The compiler must report `expect_version` (host and apt toolchains pin by it)."""
    if not tc.expect_version:
        return
    role = next((r for r in ("cc", "cxx", "nvcc") if r in dict(tc.tools)), None)
    if role is None:
        return
    path = dict(tc.tools)[role]
    exe = str(tmp / "install" / path) if tc.provider in ("pypi", "archive") else _which(path)
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
        reported = out.stdout + out.stderr
    except (OSError, subprocess.SubprocessError) as exc:
        reported = str(exc)
    if tc.expect_version not in reported:
        first = (reported.strip().splitlines() or [""])[0]
        raise FetchError(f"toolchain {tc.name}: {path} reports {first!r}, expected it to contain "
                         f"{tc.expect_version!r} (declared in {tc.loc.file})")


def download_size(tc: Toolchain) -> int | None:
    """How many bytes fetching `tc` would download, asked without downloading it (for a dry
    run to say): pip's resolution of its requirements (`--dry-run --report`) and a HEAD of
    each file; apt's Size of each package not installed at its pin; a HEAD of an archive's
    URL (a mirror's copy first). None where it cannot be known here (offline, no sizes)."""
    import json

    from buildgraph.httpclient import HttpClient

    http = HttpClient(timeout=10, retries=0)

    def size_of(url: str) -> int:
        if url.startswith("file://"):
            return os.path.getsize(url[len("file://"):])
        return int(http.request("HEAD", url).headers["content-length"])
    try:
        if tc.provider == "pypi":
            proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                   "--only-binary=:all:", "--dry-run", "--ignore-installed", "--report", "-",
                                   *tc.requirements], capture_output=True, text=True, timeout=120)
            return sum(size_of(item["download_info"]["url"]) for item in json.loads(proc.stdout)["install"])
        if tc.provider == "apt":
            total = 0
            for package, version in tc.packages:
                installed = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", package],
                                           capture_output=True, text=True).stdout
                if installed == f"install ok installed {version}":
                    continue   # nothing to download
                shown = subprocess.run(["apt-cache", "show", "--no-all-versions", f"{package}={version}"],
                                       capture_output=True, text=True, timeout=60).stdout
                total += int(next(line.split()[1] for line in shown.splitlines() if line.startswith("Size:")))
            return total
        if tc.provider == "archive" and tc.url:   # where _fetch_archive looks: the mirrors, then the URL
            from buildgraph.sources import mirror_copies, mirror_list

            for place in mirror_copies(_archive_source(tc), mirror_list()) + [tc.url]:
                try:
                    return size_of(place if "://" in place else f"file://{os.path.abspath(place)}")
                except (OSError, ValueError, KeyError):
                    continue
    except (OSError, ValueError, KeyError, StopIteration, IndexError, subprocess.SubprocessError):
        return None
    return None


PROVIDERS = {"pypi": _fetch_pypi, "apt": _fetch_apt, "host": _fetch_host, "archive": _fetch_archive}


