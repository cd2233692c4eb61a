"""The run folder (``save_dir``): which folders may become one, and one writer at a time.

A run folder holds one run: ``config.json`` and ``tokenizer.json`` (written together when a run starts),
``metrics.jsonl`` and ``checkpoints/`` (see :mod:`muomni.training.checkpoint`). muomni writes those names
and only those, so a folder may become a run folder when it holds none of them, or when they are a run's:
anything else of those names (a Hugging Face model's ``config.json``, the user's own config or log) would be
overwritten. A checkpoint folder, or a run's ``checkpoints`` folder, is refused too: training into one
replaced the checkpoint's own ``config.json``, and its checksum then failed.

Two runs writing one folder at once corrupt each other (one prunes the other's half-written checkpoint,
their config and log interleave), so a training run holds an exclusive lock on ``.lock`` in the folder
while it writes there (:class:`RunFolderLock`). The lock is the operating system's: it goes with the
process, so a killed run leaves none behind.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from muomni.errors import CheckpointError, ConfigError
from muomni.paths import nearest_existing
from muomni.training.checkpoint import (
    CONFIG_FILE,
    MANIFEST,
    MODEL_FILE,
    TOKENIZER_FILE,
    checkpoints_dir,
    latest_checkpoint,
    read_config,
)
from muomni.training.runlog import METRICS_FILE

try:  # POSIX; elsewhere runs are not locked (see RunFolderLock)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_FILE = ".lock"
RUN_FILES = (CONFIG_FILE, TOKENIZER_FILE, METRICS_FILE, checkpoints_dir("").name)


def check_run_folder(save_dir: str | Path) -> None:
    """Refuse a ``save_dir`` that cannot become a run folder, before any work that would then be lost.

    Raises:
        ConfigError: ``save_dir`` (or a folder on its path) is a file, the nearest existing folder on its
            path cannot be written, or ``save_dir`` holds files of a run folder's names that no run wrote
            (see the module docstring), is a checkpoint folder or a run's checkpoints folder, or another
            run trains there.
    """
    path = Path(save_dir)
    existing = nearest_existing(path)
    if not existing.is_dir():
        raise ConfigError(f"config key 'save_dir': {existing} is a file, not a folder; choose another save_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"config key 'save_dir': {existing} cannot be written here; choose another save_dir")
    if existing != path:
        return  # made when the run starts
    if (path / MANIFEST).exists() or (path / MODEL_FILE).exists():
        raise ConfigError(
            f"config key 'save_dir': {path} is a checkpoint or model folder, not a run folder; give its run "
            "folder, or a new folder"
        )
    if path.name == checkpoints_dir("").name and _holds_a_run(path.parent):
        raise ConfigError(
            f"config key 'save_dir': {path} is a run's checkpoints folder; give the run folder {path.parent}"
        )
    present = [name for name in RUN_FILES if (path / name).exists()]
    if present and not _holds_a_run(path):
        if (ckpt := latest_checkpoint(path)) is not None:  # a run's, whose own config.json was lost or damaged
            raise ConfigError(
                f"config key 'save_dir': {path} is a run folder whose {CONFIG_FILE} or {TOKENIZER_FILE} is missing "
                f"or unreadable; copy both back from its checkpoint {ckpt} to continue it, or give a new folder"
            )
        raise ConfigError(
            f"config key 'save_dir': {path} holds {', '.join(present)} that no muomni run wrote, and training "
            "would overwrite them; give a new or empty folder"
        )
    _refuse_a_locked_folder(path)


def _refuse_a_locked_folder(path: Path) -> None:
    """Refuse a folder another run trains in now, before this run's setup says anything about it (the
    checkpoints it would replace, a resumed schedule): the run takes the lock itself when it starts writing
    (:class:`RunFolderLock`), which still settles a race with a run started in between."""
    lock = path / LOCK_FILE
    if fcntl is None or not lock.is_file():
        return
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return  # RunFolderLock names what is wrong with it when the run starts writing
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the close below
    except BlockingIOError:
        raise _held_by_another(fd, path) from None
    except OSError:
        pass  # a file system without locks: RunFolderLock warns
    finally:
        os.close(fd)


def _held_by_another(fd: int, folder: Path) -> ConfigError:
    """The error for a run folder whose lock file ``fd`` another run holds (its process id written in it)."""
    holder = os.read(fd, 32).decode("ascii", "replace").strip()
    by = f" (process {holder})" if holder.isdigit() else ""
    return ConfigError(
        f"config key 'save_dir': another run is training in {folder}{by}; wait for it to end, or choose another "
        "save_dir"
    )


def _holds_a_run(path: Path) -> bool:
    """Whether ``path`` is a run folder: a muomni config in ``config.json`` with ``tokenizer.json`` beside it.

    A config alone is not enough: the config a user trains from may sit in the folder it names, and the run
    would replace it with the resolved one.
    """
    if not (path / TOKENIZER_FILE).is_file():
        return False
    try:
        read_config(path)
    except CheckpointError:
        return False
    return True


def make_run_folder(save_dir: str | Path) -> None:
    """Create the run folder; what :func:`check_run_folder` cannot foresee (a read-only file system) is the
    same one-line error."""
    try:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"config key 'save_dir': cannot create {save_dir} ({e.strerror}); choose another save_dir")


@contextlib.contextmanager
def writing_run_folder(save_dir: str | Path, is_main: bool) -> Iterator[None]:
    """Make the run folder and hold its lock while a run writes there (on the main process; the others
    write nothing)."""
    if not is_main:
        yield
        return
    made = not Path(save_dir).exists()
    make_run_folder(save_dir)
    with RunFolderLock(save_dir) as lock:
        try:
            yield
        finally:
            if made:
                lock.remove_if_alone()


class RunFolderLock:
    """An exclusive lock on a run folder, held while a run writes there (``with RunFolderLock(save_dir):``).

    ``flock`` locks conflict between open files, so a second run in the same process is refused too. Where
    ``fcntl`` is missing (Windows), or the file system refuses locks, nothing is locked (the latter warns).

    Raises:
        ConfigError: on entry, another run holds the folder.
    """

    def __init__(self, save_dir: str | Path) -> None:
        self.path = Path(save_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunFolderLock:
        if fcntl is None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a folder or an unwritable file named .lock
            raise ConfigError(
                f"config key 'save_dir': its lock file {self.path} cannot be opened ({e.strerror}); remove it"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _held_by_another(fd, self.path.parent)
            os.close(fd)
            raise error from None
        except OSError as e:  # a file system without locks (some network mounts): train, unlocked, and say so
            os.close(fd)
            why = f"{self.path.parent} cannot be locked ({e.strerror}): run one training there at a time"
            warnings.warn(why, stacklevel=2)
            return self
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for the message a second run gets
        self._fd = fd
        return self

    def remove_if_alone(self) -> None:
        """Remove the lock file and its folder if nothing else is there (a run that wrote nothing leaves no
        folder it made behind). The file goes while the lock is still held, so no other run holds it then."""
        folder = self.path.parent
        if any(entry.name != LOCK_FILE for entry in folder.iterdir()):
            return
        with contextlib.suppress(OSError):  # another run's files appeared meanwhile: they stay, with the folder
            self.path.unlink(missing_ok=True)
            folder.rmdir()

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor of the open file releases the lock
            self._fd = None


__all__ = [
    "LOCK_FILE",
    "RUN_FILES",
    "RunFolderLock",
    "check_run_folder",
    "make_run_folder",
    "writing_run_folder",
]
