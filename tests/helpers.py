"""Shrink the real experiment configs for tests (1 epoch per experience, a few batches, CPU)."""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from config_files import load_config as _load_config  # noqa: E402

from framework.config_placeholders import fill_placeholders  # noqa: E402


def load_config(path: Path) -> Dict[str, Any]:
    """Read an experiment YAML with every file it names inlined (``data: ../streams/x.yaml``,
    ``callbacks: ../callbacks/continual.yaml``, ``- ../callbacks/evaluation.yaml``; see
    benchmarks/config_files.py), so that a copy written elsewhere runs the same experiment."""
    return _load_config(Path(path))


def _init_parameters(class_path: str) -> set:
    """Constructor argument names of a ``class_path`` (user data modules may not take every subset size)."""
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return set(inspect.signature(cls.__init__).parameters)


def shrink_config(
    path: Path,
    out_dir: Path,
    train_subset: int = 48,
    eval_subset: int = 40,
    batch_size: int = 16,
    train_batches: int = 2,
    keep_loggers: bool = False,
    extra_trainer: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a shrunk copy of a real config to ``out_dir/config.yaml`` and return its path.

    Everything that makes the experiment what it is (paradigm, domains, heads, callbacks) is
    kept; only sizes, epochs and output locations change.
    """
    config = copy.deepcopy(load_config(REPO / path))
    model = config["model"]["init_args"]
    trainer = config["trainer"]
    root = trainer.get("default_root_dir")
    n_domains = len(config["data"]["init_args"]["domains"])
    if "epochs_per_experience" in model:
        model["epochs_per_experience"] = 1
        trainer["max_epochs"] = n_domains
    else:
        trainer["max_epochs"] = 1
    data = config["data"]["init_args"]
    domains = data["domains"] + data.get("eval_domains", []) + data.get("cross_tasks", [])
    domains += [d for items in (data.get("cross_domains") or {}).values() for d in items]
    while domains:
        domain = domains.pop()
        sizes = dict(train_subset=train_subset, val_subset=eval_subset, test_subset=eval_subset, batch_size=batch_size, eval_batch_size=64)
        accepted = _init_parameters(domain["class_path"])
        domain["init_args"].update({k: v for k, v in sizes.items() if k in accepted})
        if isinstance(domain["init_args"].get("domain"), dict):  # a wrapper such as ShiftedCopyDataModule
            domains.append(domain["init_args"]["domain"])
    trainer.update(
        default_root_dir=str(out_dir),
        limit_train_batches=train_batches,
        limit_val_batches=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    if keep_loggers:  # the experiment's loggers, named as in its own run folder (runs/quickstart -> quickstart), under out_dir
        fill_placeholders(trainer.get("logger") or [], root, "trainer.logger")
        for logger in trainer.get("logger") or []:
            logger["init_args"]["save_dir"] = str(out_dir)
    else:
        trainer["logger"] = [{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(out_dir), "name": "run"}}]
    trainer.update(extra_trainer or {})
    out = Path(out_dir) / "config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def train_losses_per_epoch(run_dir: Path, tasks) -> Dict[int, set]:
    """{epoch: set of tasks with a logged training loss} from the CSV logger of a run."""
    import csv

    (metrics,) = list(Path(run_dir).rglob("metrics.csv"))
    seen: Dict[int, set] = {}
    with open(metrics) as fh:
        for row in csv.DictReader(fh):
            for task in tasks:
                if row.get(f"train/{task}/loss"):
                    seen.setdefault(int(row["epoch"]), set()).add(task)
    return seen


def shrink_stages(paths, out_dir: Path, **kwargs) -> list:
    """Shrink a chain of stage configs (``experiments/unicon``): each stage writes its checkpoint
    into ``out_dir/checkpoints`` and grows the previous stage's shrunk checkpoint."""
    out = []
    for path in paths:
        stage = Path(path).stem
        shrunk = shrink_config(path, Path(out_dir) / stage, **kwargs)
        config = yaml.safe_load(shrunk.read_text())
        model = config["model"]["init_args"]
        if model.get("init_from"):
            model["init_from"] = str(Path(out_dir) / "checkpoints" / Path(model["init_from"]).name)
        for callback in config["trainer"]["callbacks"]:
            if callback["class_path"].endswith("StageCheckpoint"):
                callback["init_args"]["path"] = str(Path(out_dir) / "checkpoints" / Path(callback["init_args"]["path"]).name)
        named = shrunk.with_name(f"{stage}.yaml")  # medcl-stages names a stage after its file
        named.write_text(yaml.safe_dump(config, sort_keys=False))
        shrunk.unlink()
        out.append(named)
    return out
