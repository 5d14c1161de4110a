"""Safe output paths for every CLI that writes: replace only what is ours, one writer at a time.

Every writing CLI (`data_prep.prepare`, `eval.evaluate`, `vpgc_jax.export_torch`,
`vpgc_jax.import_torch`, `vpgc_jax.reenact`, `vpgc_jax.train`) goes through `claim`:

* **Ours or empty.** An existing ``--out`` is replaced only when it is an empty directory or a
  directory this project wrote, recognised by its manifest (`KINDS`: a dataset's ``meta.json``, a
  report's ``metrics.json`` + ``report.md``, ...) and holding nothing but the files that kind
  writes. Anything else (a file, a foreign directory, one of ours with a user's file added) is
  refused with one line, whatever the flags. A path that holds, or is, one of the command's inputs
  is never replaced.
* **One writer.** An exclusive, non-blocking ``flock`` on ``PARENT/.NAME.lock`` is held while the
  command runs; a second writer to the same ``--out`` stops with one line. The lock dies with its
  process (also under SIGKILL), so a crash never leaves a stale lock.
* **Interrupted runs are cleaned up.** Holding the lock, the temporary siblings an interrupted run
  of the same ``--out`` left behind (``NAME.tmp-*``, ``NAME.old-*``) are removed.
* **Writable.** The parent directory is created and checked for write access before any work.

Nothing here imports JAX.
"""

import contextlib
import fcntl
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence

# kind -> (manifest files that must all be present, every entry such a directory may hold).
KINDS = {
    "dataset": (
        ("meta.json",),
        {"meta.json", "tfds", "landmarks.npz", "audio.npz", "contact_sheet.png"},
    ),
    "report": (
        ("metrics.json", "report.md"),
        {"metrics.json", "report.md", "examples.png", "convergence.png"},
    ),
    "export": (
        ("vpgc_jax.json",),
        {
            "vpgc_jax.json",
            "config.yaml",
            "stage1.ckpt",
            "stage1.vpgc.ckpt",
            "Enc.ckpt",
            "Imp.ckpt",
            "Enc.vpgc.ckpt",
            "Imp.vpgc.ckpt",
        },
    ),
}
# Files `python -m vpgc_jax.sweep` puts in a run directory before its trainer starts.
SWEEP_FILES = {"sweep.log", "sweep_run.json"}


class OutputError(ValueError):
    """An output path that cannot or must not be written; the message is one line.

    Attributes:
      path: the output path.
      reason: what is wrong and what to do.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def resolve(path: str | os.PathLike) -> str:
    """An absolute path with ``~`` expanded and trailing slashes removed (symlinks kept)."""
    text = os.path.expanduser(os.fspath(path))
    return os.path.abspath(text.rstrip("/") or "/")


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file: ``~``, relative parts and symlinks resolved (the
    files need not exist)."""
    return os.path.realpath(resolve(a)) == os.path.realpath(resolve(b))


def _inside(path: str, directory: str) -> bool:
    """Whether `path` is `directory` or lies under it (after resolving symlinks)."""
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def check_replaceable(out: str, kind: str, inputs: Sequence[str] = ()) -> bool:
    """Whether `out` exists; raises unless it is absent, empty, or ours and free of inputs.

    Args:
      out: the output path (absolute, see `resolve`).
      kind: a key of `KINDS`.
      inputs: paths the command reads (never replaced, nor a directory holding one).

    Returns:
      True when `out` exists (an empty directory or a replaceable one of ours), False if absent.

    Raises:
      OutputError: `out` is a file, a symlink, a foreign or modified directory, or holds an input.
    """
    for path in inputs:
        if path and os.path.lexists(out) and _inside(path, out):
            raise OutputError(out, f"holds the input {path}; it is never replaced: choose another")
    if not os.path.lexists(out):
        return False
    if os.path.islink(out) or not os.path.isdir(out):
        what = "a symlink" if os.path.islink(out) else "a file"
        raise OutputError(out, f"exists and is {what}, not a {kind} directory; choose another")
    entries = set(os.listdir(out))
    if not entries:
        return True
    manifest, allowed = KINDS[kind]
    if not all(os.path.isfile(os.path.join(out, m)) for m in manifest):
        raise OutputError(
            out,
            f"exists and is not a {kind} written by vpgc_jax (no {' + '.join(manifest)}); "
            "it is never replaced: choose another",
        )
    extra = sorted(entries - allowed)
    if extra:
        raise OutputError(
            out,
            f"a {kind} that also holds other files ({', '.join(extra[:3])}); "
            "it is never replaced: move them or choose another",
        )
    return True


def check_writable(out: str) -> None:
    """Creates the parent directory of `out` and checks it can be written.

    Raises:
      OutputError: the parent cannot be created or is not writable.
    """
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise OutputError(out, f"cannot create {parent} ({e.strerror or e})") from e
    if not os.path.isdir(parent):
        raise OutputError(out, f"{parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(out, f"directory {parent} is not writable")


def clean_stale(out: str) -> list[str]:
    """Removes the temporary siblings of `out` left by interrupted runs; call holding the lock.

    Returns:
      The paths removed.
    """
    parent, name = os.path.split(out)
    removed = []
    for pattern in (f"{glob.escape(name)}.tmp-*", f"{glob.escape(name)}.old-*"):
        for path in glob.glob(os.path.join(parent, pattern)):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(path)
            removed.append(path)
    return removed


@contextlib.contextmanager
def lock(out: str) -> Iterator[None]:
    """Holds an exclusive lock on writing `out` (``PARENT/.NAME.lock``); non-blocking.

    Raises:
      OutputError: another process holds it.
    """
    parent, name = os.path.split(out)
    path = os.path.join(parent, f".{name}.lock")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(out, f"cannot create the lock file {path} ({e.strerror or e})") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(
                out, f"another process (pid {holder}) is writing it; wait for it to finish"
            ) from e
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # Else its holder removed the file as we locked it: lock the new one.
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.remove(path)
    finally:
        os.close(fd)


@contextlib.contextmanager
def claim(out: str, kind: str | None = None, inputs: Sequence[str] = ()) -> Iterator[bool]:
    """`check_writable`, then `lock`, `clean_stale` and (with `kind`) `check_replaceable`.

    Args:
      out: the output path (absolute, see `resolve`).
      kind: a key of `KINDS` for a directory that may be replaced; None for outputs that are
        never replaced (a new path or one the caller checks itself).
      inputs: paths the command reads.

    Yields:
      Whether `out` exists (see `check_replaceable`; False without `kind`).

    Raises:
      OutputError: see the functions above.
    """
    check_writable(out)
    with lock(out):
        clean_stale(out)
        yield check_replaceable(out, kind, inputs) if kind else os.path.lexists(out)


def make_temp_dir(out: str) -> str:
    """A new temporary sibling ``NAME.tmp-XXXX`` of `out` with ordinary (umask) permissions."""
    parent, name = os.path.split(out)
    tmp = tempfile.mkdtemp(prefix=name + ".tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700
    return tmp


def move_into_place(tmp: str, out: str) -> None:
    """Renames the finished directory `tmp` to `out`, replacing what `claim` allowed there.

    The previous directory is moved aside first and deleted only once `tmp` is in place.
    """
    if os.path.lexists(out):
        parent, name = os.path.split(out)
        old = tempfile.mkdtemp(prefix=name + ".old-", dir=parent)
        os.rename(out, os.path.join(old, name))
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
