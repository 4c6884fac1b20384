"""Build kinds -> shell commands.

Commands refer to the sandbox only through variables ($SRC, $OUT, $WORK, $DEPS,
$DEP_<NAME>), so the same action key holds wherever the sandbox lives. They never
pass -j: parallelism comes from the jobserver in MAKEFLAGS, which a nested make
or cmake --build shares with every other running action.
"""

from __future__ import annotations

from buildgraph.workspace import Target, When


def shell_word(arg: str) -> str:
    """Quote `arg` for sh, keeping $VARIABLE expansion (so args can say $OUT)."""
    if arg and all(c.isalnum() or c in "-_=./:,+%@$" for c in arg):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")
    return f'"{escaped}"'


def _src_dir(target: Target) -> str:
    """Where the project to configure lives: the upstream tree ($SOURCE) or the workspace files ($SRC)."""
    base = "$SOURCE" if target.source is not None else "$SRC"
    return base if target.source_dir == "." else f"{base}/{target.source_dir}"


def commands(target: Target, matched: list[When]) -> tuple[str, ...]:
    """The commands an action runs for `target` in a variant whose `when` entries are `matched`."""
    return tuple(command for _, command in steps(target, matched))


def steps(target: Target, matched: list[When]) -> tuple[tuple[str, str], ...]:
    """(the field declaring it, command) of each command, in order: cmds[1],
    when[0].cmds[0], post_install[0]; a build kind's own steps are its `kind` (what a
    failure names, failures.py)."""
    if target.kind == "script":
        return tuple((f"cmds[{i}]", c) for i, c in enumerate(target.cmds)) + tuple(
            (f"when[{target.when.index(w)}].cmds[{i}]", c) for w in matched for i, c in enumerate(w.cmds))
    if target.kind == "artifact":
        return ()   # a built-in action: the engine writes its spec (artifact.py)
    return tuple(("kind", c) for c in _kind_commands(target, matched)) + tuple(
        (f"post_install[{i}]", c) for i, c in enumerate(target.post_install))


def cmake_args(target: Target, matched: list[When]) -> tuple[str, ...]:
    """A cmake target's own configure arguments in one variant (before the shell expands them)."""
    return target.cmake_args + tuple(a for w in matched for a in w.cmake_args)


def _kind_commands(target: Target, matched: list[When]) -> tuple[str, ...]:
    """The steps of a build kind (cmake, make, autotools), before its post_install."""
    if target.kind == "cmake":
        args = cmake_args(target, matched)
        # Configured from $OUT: CMake makes a relative PATH-typed cache value given on the command
        # line (-DCMAKE_INSTALL_LIBDIR=lib, -DCMAKE_INSTALL_DOCDIR=share/…) absolute against the
        # working directory when the project declares it (libjpeg-turbo 2.x does), so relative
        # install directories land under the prefix either way.
        configure = ["cd $OUT &&", "cmake", "-S", _src_dir(target), "-B", "$WORK/build",
                     "-G", shell_word(target.generator),
                     "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_INSTALL_PREFIX=$OUT",
                     "-DCMAKE_INSTALL_LIBDIR=lib", '-DCMAKE_PREFIX_PATH="$DEPS_PREFIX_PATH"',
                     *map(shell_word, args)]
        build = ["cmake", "--build", "$WORK/build"]
        for t in target.build_targets:
            build += ["--target", shell_word(t)]
        return (" ".join(configure), " ".join(build), "cmake --install $WORK/build")
    if target.kind == "make":
        args = " ".join(map(shell_word, target.make_args + tuple(a for w in matched for a in w.make_args)))
        tail = f" {args}" if args else ""
        steps = [f'cp -R {_src_dir(target)}/. $WORK/src', "chmod -R u+w $WORK/src"]
        steps.append(f"make -C $WORK/src{''.join(' ' + shell_word(t) for t in target.make_targets)}{tail}")
        if target.install_targets:
            installs = " ".join(map(shell_word, target.install_targets))
            steps.append(f"make -C $WORK/src {installs} PREFIX=$OUT{tail}")
        return tuple(steps)
    if target.kind == "autotools":
        # Out of tree ("VPATH") build: the sources stay read-only.
        conf = " ".join(map(shell_word, target.configure_args + tuple(a for w in matched for a in w.configure_args)))
        args = " ".join(map(shell_word, target.make_args + tuple(a for w in matched for a in w.make_args)))
        steps = ["mkdir -p $WORK/build",
                 f"cd $WORK/build && {_src_dir(target)}/configure --prefix=$OUT{' ' + conf if conf else ''}",
                 f"make -C $WORK/build{''.join(' ' + shell_word(t) for t in target.make_targets)}"
                 f"{' ' + args if args else ''}"]
        if target.install_targets:
            steps.append(f"make -C $WORK/build {' '.join(map(shell_word, target.install_targets))}"
                         f"{' ' + args if args else ''}")
        return tuple(steps)
    raise AssertionError(f"unknown kind {target.kind}")  # workspace.py validated it
