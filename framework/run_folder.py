"""One run, one folder, one W&B run.

Lightning's ``CSVLogger``/``TensorBoardLogger`` pick ``version_<N+1>`` by listing the folder when
they first write, so two runs of one config started together both take ``version_0``: their
``metrics.csv`` interleave and one run's results and plots replace the other's.  A resumed run
(``--ckpt_path``) opens yet another version and a new W&B run whose ``_step`` restarts.  MedCL
settles the run folder before anything is instantiated (:meth:`RunFolders.prepare`):

* **a new run claims** ``<save_dir>/<name>/version_<N>`` with ``os.mkdir`` (atomic: exactly one
  process gets each number) and holds a lock file in it while it runs;
* **a checkpoint's run** (``fit --ckpt_path``, ``test``, ``validate``, ``predict``) writes into the
  folder the checkpoint came from (``<run>/checkpoints/x.ckpt``), and refuses while another process
  holds that folder's lock;
* **W&B**: a new run gets its W&B run id up front, recorded in ``<run>/medcl_run.json``; every later
  command on that run's checkpoints continues that W&B run (``id`` + ``resume="allow"``);
* **clean-up** (:meth:`RunFolders.remove_partial`): a run that fails removes only what it created
  itself (its version folder and its own W&B run folder), and never a folder that holds a checkpoint.

The settings are applied to a copy of the parsed configuration only while the classes are
instantiated (:meth:`RunFolders.applied`); the ``config.yaml`` saved in the run folder keeps what
the user wrote, so it can be run again.  Reading the parsed config and the run-folder layout
(checkpoint's run, newest ``last`` checkpoint, config file name, CSV history) is in
:mod:`framework.run_layout`; this module re-exports its public names.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import socket
import string
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from framework.run_layout import (
    LOCK_FILE, RUN_RECORD, VERSION_FOLDER, VERSIONED_LOGGERS, WANDB_LOGGERS, config_file_name, config_get, find_last_in_config,
    holds_checkpoint, keep_csv_history, logger_root, loggers_of, newer_checkpoints, run_folder_of_checkpoint,
)

__all__ = [
    "RunFolders", "RunFolderBusy", "RUN_RECORD", "LOCK_FILE", "run_folder_of_checkpoint", "find_last_in_config", "keep_csv_history",
    "config_file_name",
]


class RunFolderBusy(RuntimeError):
    """Another live process is writing the run folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process
        return True
    return True


def _is_child_rank() -> bool:
    """A process that a multi-process launcher started for a rank other than 0 (it must not claim
    a folder of its own: Lightning broadcasts rank 0's log folder)."""
    return any(os.environ.get(var, "0") not in ("", "0") for var in ("LOCAL_RANK", "NODE_RANK", "RANK"))


@dataclass
class RunFolders:
    """The run folder of one ``medcl`` command: claimed or reused, locked, recorded, cleaned up on failure."""

    subcommand: str
    #: the run folder (``None``: nothing to claim, e.g. a non-zero rank)
    path: Optional[Path] = None
    #: whether this process created ``path``
    created: bool = False
    #: whether this command continues an earlier run (a checkpoint's folder)
    continued: bool = False
    wandb_id: Optional[str] = None
    #: folders this process created above ``path`` (removed on failure if left empty)
    created_parents: List[Path] = field(default_factory=list)
    #: ``<save_dir>/wandb`` folders of the W&B loggers, and whether each existed before this run
    wandb_dirs: Dict[Path, bool] = field(default_factory=dict)
    #: the run folder of a checkpoint this ``fit`` branches from (not its newest: a new folder is claimed)
    branched_from: Optional[Path] = None
    _wandb_before: set = field(default_factory=set)
    _started: float = field(default_factory=time.time)
    _lock: Optional[Path] = None
    _overrides: List[Tuple[Any, str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------------ deciding
    def prepare(self, config: Any, ckpt_path: Optional[str]) -> None:
        """Choose (and for a new run, claim) the run folder for the parsed subcommand ``config``.

        Args:
            config: the subcommand's parsed namespace (``trainer``, ...), before instantiation.
            ckpt_path: the resolved ``--ckpt_path`` (``None`` for a new run).

        Raises:
            RunFolderBusy: if another live process holds the folder's lock.
            ValueError: if a new run names an explicit logger ``version`` whose folder already holds a run.
        """
        if _is_child_rank():
            return
        trainer = config_get(config, "trainer")
        versioned = loggers_of(trainer, VERSIONED_LOGGERS)
        continued = run_folder_of_checkpoint(ckpt_path)
        newer = newer_checkpoints(Path(ckpt_path)) if continued is not None and self.subcommand == "fit" else []
        if newer:  # a branch from an earlier point: continuing in place would overwrite the run's later checkpoints
            from pytorch_lightning.utilities import rank_zero_info

            rank_zero_info(
                f"medcl: --ckpt_path {ckpt_path} is not the newest checkpoint of its run ({newer[0].name} is newer): this run "
                f"starts a new run folder and leaves {continued} as it is"
            )
            self.branched_from = continued
            continued = None
        if continued is not None:
            self.path, self.continued = continued, True
            self._plan_existing(trainer, versioned, continued)
        elif versioned:
            self._claim(trainer, versioned)
        else:  # no versioned logger: one version folder under default_root_dir
            root = Path(config_get(trainer, "default_root_dir") or os.getcwd())
            self._claim_under(root)
            self._override(trainer, "default_root_dir", str(self.path))
        self._lock_folder()
        if self.continued:  # a write killed mid-way left temporaries (with replay exemplars): nobody else writes here now
            from framework.core.checkpoints import remove_orphan_temporaries

            remove_orphan_temporaries(self.path / "checkpoints")
        self._plan_wandb(trainer)
        self._write_record()

    def _plan_existing(self, trainer: Any, versioned: List[Any], run: Path) -> None:
        for logger in versioned:
            args = config_get(logger, "init_args")
            self._override(args, "save_dir", str(run.parent.parent))
            self._override(args, "name", run.parent.name)
            match = VERSION_FOLDER.match(run.name)
            self._override(args, "version", int(match.group(1)) if match else run.name)
        if not versioned:
            self._override(trainer, "default_root_dir", str(run))

    def _claim(self, trainer: Any, versioned: List[Any]) -> None:
        first = versioned[0]
        explicit = config_get(config_get(first, "init_args"), "version")
        root = logger_root(trainer, first)
        if explicit is not None:
            folder = root / (explicit if isinstance(explicit, str) else f"version_{explicit}")
            if self.subcommand == "fit" and folder.is_dir() and any(folder.iterdir()):
                raise ValueError(
                    f"trainer.logger version {explicit!r}: the run folder {folder} already holds a run; a new run would replace its "
                    f"metrics.csv (Lightning deletes it). Remove the version to get a new folder, or resume that run with --ckpt_path"
                )
            self._mkdirs(folder.parent)
            self.created = not folder.exists()
            folder.mkdir(exist_ok=True)
            self.path = folder
        else:
            self._claim_under(root)
        for logger in versioned:  # every versioned logger writing under the same root shares the version
            if logger_root(trainer, logger) == root:
                self._override(config_get(logger, "init_args"), "version", int(VERSION_FOLDER.match(self.path.name).group(1)) if explicit is None else explicit)

    def _mkdirs(self, folder: Path) -> None:
        missing = []
        for parent in [folder, *folder.parents]:
            if parent.exists():
                break
            missing.append(parent)
        folder.mkdir(parents=True, exist_ok=True)
        self.created_parents += missing

    def _claim_under(self, root: Path) -> None:
        """``root/version_<N>`` for the next free ``N``, created with ``os.mkdir`` (atomic across processes)."""
        self._mkdirs(root)
        numbers = [int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := VERSION_FOLDER.match(p.name))]
        n = max(numbers) + 1 if numbers else 0
        while True:
            try:
                os.mkdir(root / f"version_{n}")
            except FileExistsError:
                n += 1
                continue
            break
        self.path, self.created = root / f"version_{n}", True

    def _lock_folder(self) -> None:
        lock = self.path / LOCK_FILE
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": sys.argv}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    held = json.loads(lock.read_text())
                except (OSError, ValueError):
                    held = {}
                pid, host = held.get("pid"), held.get("host")
                alive = isinstance(pid, int) and pid != os.getpid() and (host != socket.gethostname() or _pid_alive(pid))
                if alive:
                    raise RunFolderBusy(
                        f"run folder {self.path} is in use by process {pid} on {host} (since {held.get('started')}): two commands writing "
                        f"one run folder would interleave their logs and replace each other's results; wait for it to end, or if that "
                        f"process is gone, delete {lock}"
                    ) from None
                lock.unlink(missing_ok=True)  # left by a process that died
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(mine, fh)
            self._lock = lock
            atexit.register(self.release)
            return

    def _plan_wandb(self, trainer: Any) -> None:
        loggers = loggers_of(trainer, WANDB_LOGGERS)
        if not loggers:
            return
        for logger in loggers:
            folder = Path(config_get(config_get(logger, "init_args"), "save_dir") or ".").absolute() / "wandb"
            self.wandb_dirs[folder] = folder.exists()
            self._wandb_before |= set(folder.iterdir()) if folder.is_dir() else set()
        stored = self.record().get("wandb_run_id")
        args = config_get(loggers[0], "init_args")
        given = config_get(args, "id") or config_get(args, "version")
        if stored and self.continued:
            self.wandb_id = stored
            self._override(args, "id", stored)
            self._override(args, "resume", "allow")
        else:  # W&B's own id format: 8 lowercase letters and digits
            self.wandb_id = given or "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
            self._override(args, "id", self.wandb_id)

    def _write_record(self) -> None:
        record = self.record()
        record.setdefault("created", time.strftime("%Y-%m-%d %H:%M:%S"))
        if self.wandb_id:
            record["wandb_run_id"] = self.wandb_id
        commands = record.setdefault("commands", [])
        commands.append({"subcommand": self.subcommand, "argv": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        tmp = self.path / f".{RUN_RECORD}.tmp"
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, self.path / RUN_RECORD)

    def end_record(self, status: str) -> None:
        """Note in ``medcl_run.json`` how this command ended (``"finished"`` or ``"failed"``)."""
        if self.path is None or not self.path.is_dir():
            return
        record = self.record()
        commands = record.get("commands") or []
        if commands:
            commands[-1].update(ended=time.strftime("%Y-%m-%d %H:%M:%S"), status=status)
            tmp = self.path / f".{RUN_RECORD}.tmp"
            tmp.write_text(json.dumps(record, indent=2))
            os.replace(tmp, self.path / RUN_RECORD)

    def record(self) -> Dict[str, Any]:
        """The run folder's ``medcl_run.json`` (``{}`` if none)."""
        path = self.path / RUN_RECORD if self.path is not None else None
        if path is None or not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except ValueError:
            return {}

    # ------------------------------------------------------------------ applying
    def _override(self, namespace: Any, key: str, value: Any) -> None:
        self._overrides.append((namespace, key, value))

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Set the planned values in the parsed config while the classes are instantiated, then
        restore what the user wrote (the saved ``config.yaml`` stays re-runnable)."""
        before = [(ns, key, config_get(ns, key)) for ns, key, _ in self._overrides]
        for namespace, key, value in self._overrides:
            namespace[key] = value
        try:
            yield
        finally:
            for namespace, key, value in reversed(before):
                namespace[key] = value

    # ------------------------------------------------------------------ ending
    def release(self) -> None:
        """Give the folder's lock back."""
        if self._lock is not None:
            self._lock.unlink(missing_ok=True)
            self._lock = None

    def remove_partial(self) -> List[Path]:
        """After a failure: remove what this process created and no checkpoint made worth keeping.

        A new run: its own version folder (if it holds no checkpoint), its own W&B run folder and
        the parent folders it created if they are left empty.  A continued run (a checkpoint's
        folder): only the W&B run folder this command added, and only if it wrote no checkpoint.
        Never another run's output.
        """
        self.release()
        removed: List[Path] = []
        if self.path is None:
            return removed
        if self.continued:  # an earlier command's run: keep it all, unless this command only added a W&B folder
            if not holds_checkpoint(self.path, since=self._started):
                removed += self._remove_new_wandb_runs()
            return removed
        if not self.created or holds_checkpoint(self.path):
            return removed
        removed += self._remove_new_wandb_runs()
        shutil.rmtree(self.path, ignore_errors=True)
        removed.append(self.path)
        for parent in sorted(self.created_parents, key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                parent.rmdir()  # only if empty: a concurrent run's output is never touched
                removed.append(parent)
        return removed

    def _remove_new_wandb_runs(self) -> List[Path]:
        """The W&B run folders of this command (``*-<run id>`` that were not there when it started)."""
        removed: List[Path] = []
        for folder, existed in self.wandb_dirs.items():
            for run in folder.glob(f"*-{self.wandb_id}") if self.wandb_id else []:
                if run not in self._wandb_before:
                    shutil.rmtree(run, ignore_errors=True)
                    removed.append(run)
            for link in folder.glob("*") if folder.is_dir() else []:
                if link.is_symlink() and not link.exists():  # latest-run, debug.log pointing into it
                    link.unlink()
            if not existed:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        return removed
