"""MedCL against Avalanche, in one process, on identical data, model, epochs, batch size and buffer.

Four real domains, BloodMNIST -> OrganAMNIST -> PneumoniaMNIST -> RetinaMNIST, with the subsets of
experiments/streams/paradigm_study.yaml (read from that file: 1,000 seeded training images per
domain, test subsets 2,000 / 2,000 / full / full), built with ``data_modules.MedMNISTDataModule``
for both frameworks (the same uint8 tensors; the backbone divides by 255).  One model for both:
``framework.model.MedCLModel`` (``medcl-vit-tiny``, learned class embeddings, one head per
domain, the task chosen explicitly), seeded with 0.  Each strategy is trained twice:

* **MedCL** through its real path, ``framework.cli.run_cli(["fit", "--config", ...])`` with a
  config generated from experiments/strategies/<strategy>.yaml (model section and ReplayCallback
  options) adapted to the paradigm-study subsets;
* **Avalanche 0.6.0** with its ``Naive`` strategy (plus ``ReplayPlugin`` for replay) on a
  ``benchmark_from_datasets`` stream with task labels, the MedCL model wrapped in an
  ``avalanche.models.MultiTaskModule`` whose ``forward_single_task(x, t)`` calls
  ``model(x, task=<name of task t>)``.

After every experience one shared loop (``framework.metrics.evaluation.evaluate_head``, on the same
test tensors) scores every domain for both frameworks, so the two accuracy matrices are
comparable.  Average accuracy, forgetting and BWT are computed from each matrix with MedCL's
``framework.metrics.continual.summarize`` and with Avalanche's own metric classes
(``StreamForgetting``, ``StreamBWT``, ``Mean``) fed the same matrix.  Wall-clock time is split into
setup, training and the (shared, separately timed) evaluation, with CPU time and the median
training-step time beside it.  A check run (``--order-check``, on by default) trains Avalanche's
naive run once more with MedCL's batch order: it must reproduce MedCL's matrix and final weights.
Then every (framework, strategy) trains once more per ``--accuracy-seeds`` seed (default 1 and 2),
untimed, for the average accuracy over seeds: one seed's batch order moves it by several points.

Writes ``avalanche_compare.{json,md,png}`` to ``--results`` (default benchmarks/results).  Needs the
``bench`` extra (``pip install -e ".[bench]"``: avalanche-lib) for the Avalanche half; the MedCL half
runs without it (``--frameworks medcl``).

    cd benchmarks && ../.venv/bin/python avalanche_compare.py        # naive + reservoir replay, both frameworks, the check, seeds 1-2 for accuracy
    ../.venv/bin/python avalanche_compare.py --strategies naive --frameworks medcl
    ../.venv/bin/python avalanche_compare.py --no-order-check --avalanche-padding zeros    # Avalanche's default zero padding of narrower heads
    ../.venv/bin/python avalanche_compare.py --strategies replay_class_balanced   # Avalanche's ClassBalancedBuffer (see the caveats)
    ../.venv/bin/python avalanche_compare.py --train-subset 64 --test-subset 64 --epochs 1 --experiences 2 --repeats 1 --accuracy-seeds --results /tmp/x   # smoke run
    ../.venv/bin/python avalanche_compare.py --collect-only      # rewrite the .md and .png from the .json
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from statistics import median
from typing import Any, Dict, List, Optional, Sequence

import torch

from config_files import load_config
from runs import REPO, RESULTS, fmt

# Importing this module by name (the MedCL config names ``avalanche_compare.SharedEvaluation``)
# must give this very module, also when it runs as a script, so the callback sees this run's state.
sys.modules.setdefault("avalanche_compare", sys.modules[__name__])

import pytorch_lightning as pl

from framework.strategies import ExperienceCallback  # noqa: E402
import yaml  # noqa: E402

from data_modules import MedMNISTDataModule  # noqa: E402
from framework.metrics.continual import format_matrix, summarize  # noqa: E402
from framework.metrics.evaluation import evaluate_head  # noqa: E402
from framework.model import MedCLModel  # noqa: E402

NAME = "avalanche_compare"
STREAM = REPO / "experiments" / "streams" / "paradigm_study.yaml"
STRATEGY_CONFIGS = REPO / "experiments" / "strategies"
STRATEGIES = ["naive", "replay_reservoir", "replay_class_balanced"]
DEFAULT_STRATEGIES = ["naive", "replay_reservoir"]
FRAMEWORKS = ["medcl", "avalanche"]
#: value of the padded logits of a head with fewer classes than the widest head (Avalanche's
#: ``MultiHeadClassifier`` masks unused units with the same value)
MASK_VALUE = -1000.0
THREADS = 2

#: state of the runs in progress, read by :class:`SharedEvaluation` (same process)
_RUNS: Dict[str, "RunState"] = {}
#: final weights of the finished runs (first repeat), kept in memory to compare runs
_FINAL_WEIGHTS: Dict[str, Dict[str, torch.Tensor]] = {}


# ---------------------------------------------------------------------------------------- helpers
def tensor_fingerprint(tensors: Sequence[torch.Tensor]) -> str:
    """sha1 (16 hex digits) over the bytes of tensors."""
    h = hashlib.sha1()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha1 over a module's state dict (names, shapes, values)."""
    h = hashlib.sha1()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(tensor_fingerprint([value]).encode())
    return h.hexdigest()[:16]


def stacked(dataset) -> tuple:
    """``(images uint8 (N, C, H, W), targets (N,))`` of a MedMNIST dataset, item by item as its loaders serve them."""
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([it["image"] for it in items]), torch.stack([it["target"] for it in items])


def other_jobs() -> List[str]:
    """Command lines (with their CPU share) of the other Python processes on this machine, which may
    share the CPU; this process and the one that started it are left out."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,args"], capture_output=True, text=True, timeout=10).stdout
    except Exception:  # pragma: no cover - no ps
        return []
    skip = {os.getpid(), os.getppid()}
    jobs = []
    for line in out.splitlines()[1:]:
        pid, cpu, cmd = (line.split(None, 2) + ["", ""])[:3]
        if pid.isdigit() and int(pid) not in skip and os.path.basename(cmd.split(" ")[0]).startswith("python"):
            jobs.append(f"{cmd.strip()[:160]} ({cpu} % CPU)")
    return jobs


def load_average() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def versions() -> Dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "pytorch_lightning": pl.__version__}
    try:
        import avalanche

        out["avalanche"] = avalanche.__version__
    except ImportError:
        out["avalanche"] = None
    return out


# ---------------------------------------------------------------------------------------- data
def domain_args(args) -> List[Dict[str, Any]]:
    """``MedMNISTDataModule`` init_args of the stream's domains (paradigm_study.yaml), adapted.

    The file's val subsets are kept: one generator draws train, val and test subsets in that
    order, so they decide which test images the test subsets hold.
    """
    stream = yaml.safe_load(STREAM.read_text())
    domains = []
    for entry in stream["init_args"]["domains"][: args.experiences]:
        if entry["class_path"] != "data_modules.MedMNISTDataModule":
            raise ValueError(f"{STREAM}: expected MedMNISTDataModule domains, found {entry['class_path']}")
        init = dict(entry["init_args"])
        init["data_dir"] = str(Path(args.data_dir).resolve()) if args.data_dir else str((REPO / init["data_dir"]).resolve())
        if args.train_subset is not None:
            init["train_subset"] = args.train_subset
        if args.test_subset is not None:
            init["test_subset"] = args.test_subset
        init["batch_size"] = args.batch_size
        domains.append(init)
    return domains


def make_domains(init_args: List[Dict[str, Any]]) -> List[MedMNISTDataModule]:
    modules = [MedMNISTDataModule(**init) for init in init_args]
    for dm in modules:
        dm.setup("fit")
    return modules


def clip_test_subsets(init_args: List[Dict[str, Any]]) -> None:
    """A smoke ``--test-subset`` larger than a small test split uses the whole split."""
    import numpy as np

    for init in init_args:
        size = init.get("test_subset")
        if size is None:
            continue
        with np.load(Path(init["data_dir"]) / f"{init['flag']}.npz") as archive:
            n = len(archive["test_labels"])
        if size >= n:
            init["test_subset"] = None


# ---------------------------------------------------------------------------------------- evaluation
class RunState:
    """What one run records: its accuracy rows, timings and fingerprints."""

    def __init__(self, key: str, test_domains: List[MedMNISTDataModule]):
        self.key = key
        self.test_domains = test_domains
        self.rows: List[List[Optional[float]]] = []
        self.details: List[Dict[str, Dict[str, float]]] = []
        self.eval_s = 0.0
        self.eval_cpu_s = 0.0
        self.eval_per_experience: List[float] = []
        self.marks: Dict[str, float] = {}
        self.fingerprints: Dict[str, str] = {}
        self.fingerprints_final: Optional[str] = None
        #: seconds between the starts of consecutive training steps of one epoch (data loading,
        #: replay, forward, backward, optimizer and hooks; robust to a busy machine as a median)
        self.step_periods: List[float] = []
        self._last_step: Optional[float] = None

    def step_started(self, first_of_epoch: bool) -> None:
        now = time.perf_counter()
        if not first_of_epoch and self._last_step is not None:
            self.step_periods.append(now - self._last_step)
        self._last_step = now

    def evaluate(self, model: MedCLModel, device: torch.device) -> None:
        """The shared evaluation: every domain's test split through the head of its task (tasks
        without a head yet get ``None``); eval mode and a forked RNG, both restored."""
        start, cpu = time.perf_counter(), time.process_time()
        was_training = model.training
        model.eval()
        row, details = [], {}
        try:
            with torch.random.fork_rng(devices=[]):
                for dm in self.test_domains:
                    if dm.name not in model.heads:
                        row.append(None)
                        continue
                    values = evaluate_head(model, model.head(dm.name), dm.loader("test"), dm.name, device)
                    row.append(values["score"])
                    details[dm.name] = values
        finally:
            model.train(was_training)
        self.rows.append(row)
        self.details.append(details)
        took = time.perf_counter() - start
        self.eval_cpu_s += time.process_time() - cpu
        self.eval_s += took
        self.eval_per_experience.append(took)
        print(f"[{self.key}] after experience {len(self.rows) - 1}: " + ", ".join(
            f"{dm.name} {fmt(v)}" for dm, v in zip(self.test_domains, row)) + f"  (eval {took:.1f} s)", flush=True)


class SharedEvaluation(ExperienceCallback):
    """MedCL side of the shared evaluation: runs :meth:`RunState.evaluate` at every experience end
    (MedCL's ``after_experience`` hook) and records the moments training starts and ends and the
    initial weights (backbone at ``on_train_start``, each head at its experience start)."""

    def __init__(self, run: str) -> None:
        super().__init__()
        self.run = run

    @property
    def state(self) -> RunState:
        return _RUNS[self.run]

    def on_train_start(self, trainer, pl_module) -> None:
        self.state.fingerprints["backbone"] = module_fingerprint(pl_module.model.backbone)
        self.state.marks["train_start"] = time.perf_counter()
        self.state.marks["train_start_cpu"] = time.process_time()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.state.step_started(batch_idx == 0)

    def before_experience(self, trainer, pl_module, experience: int, tasks: List[str]) -> None:
        for task in tasks:
            self.state.fingerprints.setdefault(f"head:{task}", module_fingerprint(pl_module.model.head(task)))

    def after_experience(self, trainer, pl_module, experience: int, tasks: List[str]) -> None:
        self.state.evaluate(pl_module.model, pl_module.device)

    def on_train_end(self, trainer, pl_module) -> None:
        self.state.marks["train_end"] = time.perf_counter()
        self.state.marks["train_end_cpu"] = time.process_time()


# ---------------------------------------------------------------------------------------- MedCL
def strategy_config(strategy: str) -> Dict[str, Any]:
    """The shipped strategy config (model section, ReplayCallback options)."""
    return load_config(STRATEGY_CONFIGS / f"{strategy}.yaml")  # the callbacks it names by path, inlined


def replay_options(strategy: str) -> Optional[Dict[str, Any]]:
    for cb in strategy_config(strategy)["trainer"].get("callbacks", []):
        if cb["class_path"] == "framework.callbacks.ReplayCallback":
            return dict(cb["init_args"])
    return None


def model_options(strategy: str, args) -> Dict[str, Any]:
    init = dict(strategy_config(strategy)["model"]["init_args"])
    init["epochs_per_experience"] = args.epochs
    init.setdefault("weight_decay", 0.0)
    if args.medcl_task_loss_weighting != "equal":  # MedCL's default is left out of the config
        init["task_loss_weighting"] = args.medcl_task_loss_weighting
    return init


def medcl_config(strategy: str, args, domains: List[Dict[str, Any]], run_key: str, root: Path) -> Dict[str, Any]:
    """experiments/strategies/<strategy>.yaml adapted: the paradigm-study domains, ``--epochs``, no
    loggers, checkpoints, validation loop or progress bar (Avalanche runs none of them here), and the
    shared evaluation instead of ContinualEvaluation."""
    shipped = strategy_config(strategy)
    callbacks = [cb for cb in shipped["trainer"].get("callbacks", []) if cb["class_path"] == "framework.callbacks.ReplayCallback"]
    callbacks.append({"class_path": "avalanche_compare.SharedEvaluation", "init_args": {"run": run_key}})
    return {
        "seed_everything": args.seed,
        "model": {"class_path": shipped["model"]["class_path"], "init_args": model_options(strategy, args)},
        "data": {
            "class_path": "data_modules.DomainStream",
            "init_args": {"domains": [{"class_path": "data_modules.MedMNISTDataModule", "init_args": d} for d in domains]},
        },
        "trainer": {
            "max_epochs": len(domains) * args.epochs,
            "reload_dataloaders_every_n_epochs": 1,
            "accelerator": "cpu",
            "devices": 1,
            "default_root_dir": str(root),
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "callbacks": callbacks,
        },
    }


def run_medcl(strategy: str, args, domains, test_domains, runs_dir: Path) -> Dict[str, Any]:
    from framework.cli import run_cli

    key = f"medcl/{strategy}"
    root = runs_dir / f"medcl_{strategy}"
    root.mkdir(parents=True, exist_ok=True)
    config = medcl_config(strategy, args, domains, key, root)
    path = root / "config.input.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    state = _RUNS[key] = RunState(key, test_domains)
    print(f"\n=== {key}: framework.cli.run_cli(['fit', '--config', '{path}'])", flush=True)
    start, start_cpu = time.perf_counter(), time.process_time()
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it also sees this script's options
    try:
        cli = run_cli(["fit", "--config", str(path)])
    finally:
        sys.argv = argv
    end, end_cpu = time.perf_counter(), time.process_time()
    marks = state.marks
    times = {
        "setup_s": marks["train_start"] - start,
        "train_s": marks["train_end"] - marks["train_start"] - state.eval_s,
        "eval_s": state.eval_s,
        "teardown_s": end - marks["train_end"],
        "total_s": end - start,
        "setup_cpu_s": marks["train_start_cpu"] - start_cpu,
        "train_cpu_s": marks["train_end_cpu"] - marks["train_start_cpu"] - state.eval_cpu_s,
        "eval_cpu_s": state.eval_cpu_s,
        "total_cpu_s": end_cpu - start_cpu,
        "train_steps": int(cli.trainer.global_step),
    }
    train_data = {dm.name: tensor_fingerprint(stacked(dm.dataset("train"))) for dm in cli.datamodule.domains}
    replay = next((cb for cb in cli.trainer.callbacks if type(cb).__name__ in ("Replay", "ReplayCallback")), None)
    settings = {
        "path": "framework.cli.run_cli(['fit', '--config', ...]) (LightningCLI, ContinualModule + DomainStream)",
        "config": str(path),
        "model": config["model"]["init_args"],
        "optimizer": f"AdamW(lr={cli.model.hparams.lr}, weight_decay={cli.model.hparams.weight_decay}), one param group per head, extended (Adam state kept) when a head is added",
        "batch_size": args.batch_size,
        "replay": None if replay is None else {
            "callback": "framework.callbacks.ReplayCallback", **replay_options(strategy),
            "final_buffer": {k: int(v) for k, v in replay.buffer.counts().items()},
        },
    }
    state.fingerprints_final = module_fingerprint(cli.model.model)
    _FINAL_WEIGHTS.setdefault(key, {k: v.detach().clone() for k, v in cli.model.model.state_dict().items()})
    del _RUNS[key]
    return finish(key, "medcl", strategy, state, times, settings, train_data)


# ---------------------------------------------------------------------------------------- Avalanche
def avalanche_wrapper_class():
    """``MultiTaskModule`` around a MedCL model (defined lazily: Avalanche is optional)."""
    from avalanche.models import MultiTaskModule

    class AvalancheMedCL(MultiTaskModule):
        """Avalanche's view of a :class:`MedCLModel`: task label ``t`` is the ``t``-th domain.

        ``adaptation`` (called by the strategy before each training experience) adds the heads of
        the experience's tasks the way MedCL grows them (the first at construction, right after the
        backbone, as ``ContinualModule.setup`` does; later ones under the torch seed MedCL's
        ``seed_epoch`` sets at that experience's first epoch, in a forked RNG so Avalanche's own
        random state is untouched).  ``forward_single_task`` calls ``model(x, task=name)``.

        With ``pad="mask"`` a batch of one task takes Avalanche's single-task path (the head's own
        logits, as ``MultiTaskModule.forward`` returns them for an ``int`` task label) and a mixed
        replay batch gets every head's logits padded to the widest head with ``MASK_VALUE``, so each
        sample's cross-entropy is the one under its own head alone.  (Padding even a one-task batch
        would give the same loss, but the wider log-softmax runs other vectorised code and moves
        gradients by an ulp for some widths.)  ``pad="zeros"`` is Avalanche's unchanged
        ``MultiTaskModule.forward``: every batch padded with zeros to the widest head.
        """

        def __init__(self, model: MedCLModel, specs, epochs_per_experience: int, seed: int, pad: str = "mask"):
            super().__init__()
            self.medcl = model
            self.specs = list(specs)
            self.epochs_per_experience = epochs_per_experience
            self.seed = seed
            self.pad = pad
            self.head_fingerprints: Dict[str, str] = {}
            self._add_head(0)

        def _add_head(self, label: int) -> None:
            from framework.core.seeding import derived_seed

            spec = self.specs[label]
            if spec.name in self.medcl.heads:
                return
            if label == 0:
                self.medcl.add_task(spec)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(derived_seed(self.seed, "epoch", label * self.epochs_per_experience))
                    self.medcl.add_task(spec)
            self.head_fingerprints[f"head:{spec.name}"] = module_fingerprint(self.medcl.head(spec.name))

        def adaptation(self, experience) -> None:
            super().adaptation(experience)
            for label in experience.task_labels:
                self._add_head(int(label))
                self.max_class_label = max(self.max_class_label, self.specs[int(label)].num_classes)

        def forward(self, x: torch.Tensor, task_labels) -> torch.Tensor:
            if self.pad == "mask" and isinstance(task_labels, torch.Tensor) and task_labels.numel() and bool((task_labels == task_labels[0]).all()):
                return self.forward_single_task(x, int(task_labels[0]), pad=False)
            return super().forward(x, task_labels)

        def forward_single_task(self, x: torch.Tensor, task_label: int, pad: bool = True) -> torch.Tensor:
            spec = self.specs[int(task_label)]
            if spec.in_channels == 1 and x.shape[1] == 3:  # a grayscale image widened for collation (see run_avalanche)
                x = x[:, :1]
            out = self.medcl(x, task=spec.name)
            if pad and self.pad == "mask" and out.shape[1] < self.max_class_label:
                out = torch.nn.functional.pad(out, (0, self.max_class_label - out.shape[1]), value=MASK_VALUE)
            return out

    return AvalancheMedCL


def avalanche_dataset(images: torch.Tensor, targets: torch.Tensor, task_label: int):
    """A task-labelled Avalanche classification dataset over the tensors (items ``(x, y, t)``)."""
    from avalanche.benchmarks.utils import ConstantSequence, DataAttribute, TaskAwareSupervisedClassificationDataset, TaskLabels
    from torch.utils.data import TensorDataset

    return TaskAwareSupervisedClassificationDataset(
        [TensorDataset(images, targets)],
        data_attributes=[DataAttribute(targets.tolist(), "targets"), TaskLabels(ConstantSequence(task_label, len(targets)))],
    )


def avalanche_storage(strategy: str, capacity: int):
    from avalanche.training.storage_policy import ClassBalancedBuffer, ReservoirSamplingBuffer

    if strategy == "replay_reservoir":
        return ReservoirSamplingBuffer(max_size=capacity)
    if strategy == "replay_class_balanced":
        return ClassBalancedBuffer(max_size=capacity, adaptive_size=True)
    raise ValueError(strategy)


def step_timer_plugin(state: RunState):
    """Records the start of every training iteration (Avalanche's ``before_training_iteration``)."""
    from avalanche.training.plugins import SupervisedPlugin

    class StepTimer(SupervisedPlugin):
        def before_training_epoch(self, strategy, **kwargs):
            self.first = True

        def before_training_iteration(self, strategy, **kwargs):
            state.step_started(self.first)
            self.first = False

    return StepTimer()


def medcl_order_plugin(specs, batch_size: int, seed: int):
    """A plugin giving Avalanche's training loop MedCL's batch order (diagnostic, naive only).

    Before every training epoch it re-seeds the global generators as MedCL's ``seed_epoch`` does and
    replaces the strategy's loader by one over the same Avalanche dataset whose sampler is the
    ``ReseededRandomSampler`` MedCL's loader of that task and (stream-wide) epoch uses.  With the same
    model, weights, data and order, naive fine-tuning should then give MedCL's matrix.
    """
    from avalanche.training.plugins import SupervisedPlugin
    from torch.utils.data import DataLoader

    from framework.core.seeding import ReseededRandomSampler, derived_seed, seed_epoch

    class MedCLOrder(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.epoch = 0

        def before_training_epoch(self, strategy, **kwargs):
            seed_epoch(self.epoch)
            data = strategy.adapted_dataset
            task = specs[strategy.experience.task_label].name
            sampler = ReseededRandomSampler(data, derived_seed(seed, "order", task, "train", self.epoch))
            strategy.dataloader = DataLoader(data, batch_size=batch_size, sampler=sampler, collate_fn=data.collate_fn)

        def after_training_epoch(self, strategy, **kwargs):
            self.epoch += 1

    return MedCLOrder()


def run_avalanche(strategy: str, args, domains, test_domains, order: str = "avalanche") -> Dict[str, Any]:
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin

    if order == "medcl" and strategy != "naive":
        raise ValueError("MedCL's batch order can only be given to Avalanche without replay (the ReplayPlugin builds its own loader)")
    key = f"avalanche/{strategy}" if order == "avalanche" else f"avalanche_medcl_order/{strategy}"
    state = _RUNS[key] = RunState(key, test_domains)
    print(f"\n=== {key}: avalanche.training.Naive" + (" + ReplayPlugin" if strategy != "naive" else "")
          + (" with MedCL's batch order (diagnostic)" if order == "medcl" else ""), flush=True)
    opts = model_options(strategy, args)
    device = torch.device("cpu")
    start, start_cpu = time.perf_counter(), time.process_time()
    pl.seed_everything(args.seed, verbose=False)  # what MedCLCLI does before it builds the model
    model = MedCLModel(
        backbone=dict(model_name=opts.get("backbone", "medcl-vit-tiny"), pretrained=opts.get("pretrained"), image_size=opts.get("image_size"),
                      freeze_image_tower=opts.get("freeze_image_tower", False), freeze_text_tower=opts.get("freeze_text_tower", True)),
        head_args=opts.get("head_args"),
        lora=opts.get("lora"),
    )
    state.fingerprints["backbone"] = module_fingerprint(model.backbone)
    modules = make_domains(domains)  # fresh modules: the same seeded subsets, loaded from the files again
    specs = [dm.task_spec for dm in modules]
    wrapper = avalanche_wrapper_class()(model, specs, args.epochs, args.seed, pad=args.avalanche_padding)
    # Avalanche collates a replay mini-batch (current + memory samples) into one tensor, so a stream
    # mixing grayscale and RGB domains serves grayscale images with the channel repeated 3 times;
    # forward_single_task hands the task its own channel back (the MedCL model then sees the very
    # same uint8 values as under MedCL, whose replay batches stay separate per task).
    widen = strategy != "naive" and len({spec.in_channels for spec in specs}) > 1
    train_sets, train_data = [], {}
    for label, dm in enumerate(modules):
        images, targets = stacked(dm.dataset("train"))
        train_data[dm.name] = tensor_fingerprint((images, targets))
        if widen and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1).contiguous()
        train_sets.append(avalanche_dataset(images, targets, label))
    benchmark = with_classes_timeline(with_task_labels(benchmark_from_datasets(train=train_sets)))
    optimizer = torch.optim.AdamW(wrapper.parameters(), lr=opts["lr"], weight_decay=opts["weight_decay"])
    plugins, replay = [], None
    if strategy != "naive":
        options = replay_options(strategy)
        replay = ReplayPlugin(
            mem_size=options["capacity"], batch_size=args.batch_size, batch_size_mem=options["replay_batch_size"],
            task_balanced_dataloader=False, storage_policy=avalanche_storage(strategy, options["capacity"]),
        )
        plugins.append(replay)
    if order == "medcl":
        plugins.append(medcl_order_plugin(specs, args.batch_size, args.seed))
    plugins.append(step_timer_plugin(state))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator = EvaluationPlugin()  # no metrics, no loggers: the shared loop evaluates
    cl = Naive(
        model=wrapper, optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(), train_mb_size=args.batch_size,
        train_epochs=args.epochs, eval_mb_size=test_domains[0].eval_batch_size, device=device, plugins=plugins,
        evaluator=evaluator, eval_every=-1,
    )
    train_start, train_start_cpu = time.perf_counter(), time.process_time()
    train_s = train_cpu_s = 0.0
    for experience in benchmark.train_stream:
        t, c = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            cl.train(experience, eval_streams=[])
        train_s += time.perf_counter() - t
        train_cpu_s += time.process_time() - c
        state.evaluate(model, device)
    end, end_cpu = time.perf_counter(), time.process_time()
    times = {
        "setup_s": train_start - start,
        "train_s": train_s,
        "eval_s": state.eval_s,
        "teardown_s": end - train_start - train_s - state.eval_s,
        "total_s": end - start,
        "setup_cpu_s": train_start_cpu - start_cpu,
        "train_cpu_s": train_cpu_s,
        "eval_cpu_s": state.eval_cpu_s,
        "total_cpu_s": end_cpu - start_cpu,
        "train_steps": int(cl.clock.train_iterations),
    }
    state.fingerprints.update(wrapper.head_fingerprints)
    state.fingerprints_final = module_fingerprint(model)
    _FINAL_WEIGHTS.setdefault(key, {k: v.detach().clone() for k, v in model.state_dict().items()})
    settings = {
        "path": "avalanche.training.Naive(model=MultiTaskModule wrapper, ...).train(experience) per experience",
        "benchmark": "with_classes_timeline(with_task_labels(benchmark_from_datasets(train=[TaskAwareSupervisedClassificationDataset(TensorDataset(uint8 images, targets), data_attributes=[DataAttribute(targets, 'targets'), TaskLabels(ConstantSequence(t, n))]) per domain])))",
        "task_labels": "task label t = index of the domain in the stream (0..3), carried by every sample (TaskLabels) and mapped to the task name in forward_single_task",
        "model": opts,
        "optimizer": f"AdamW(lr={opts['lr']}, weight_decay={opts['weight_decay']}), Avalanche's make_optimizer adds each new head's parameters (Adam state kept, reset_optimizer_state=False)",
        "criterion": "torch.nn.CrossEntropyLoss() on MultiTaskModule.forward outputs",
        "padding": args.avalanche_padding,
        "batch_order": "Avalanche's own (global torch generator)" if order == "avalanche" else "MedCL's (ReseededRandomSampler per task and epoch, seed_epoch before every epoch)",
        "grayscale_widened_to_3_channels": widen,
        "batch_size": args.batch_size,
        "replay": None if replay is None else {
            "plugin": f"ReplayPlugin(mem_size={replay.mem_size}, batch_size={replay.batch_size}, batch_size_mem={replay.batch_size_mem}, task_balanced_dataloader=False, storage_policy={type(replay.storage_policy).__name__}(max_size={replay.storage_policy.max_size}))",
            "final_buffer": _buffer_counts(replay, specs),
        },
    }
    del _RUNS[key]
    out = finish(key, "avalanche", strategy, state, times, settings, train_data)
    out["variant"] = None if order == "avalanche" else "MedCL's batch order"
    return out


def _buffer_counts(replay, specs) -> Dict[str, int]:
    buffer = replay.storage_policy.buffer
    labels = [int(t) for t in buffer.targets_task_labels]
    return {spec.name: labels.count(i) for i, spec in enumerate(specs) if labels.count(i)}


# ---------------------------------------------------------------------------------------- metrics
def avalanche_metrics(matrix: List[List[Optional[float]]], tasks: List[str], test_sizes: List[int]) -> Optional[Dict[str, Any]]:
    """Avalanche's definitions on a MedCL-style matrix: its ``StreamForgetting`` / ``StreamBWT``
    plugin metrics driven through their eval hooks (row ``i`` = the eval after training experience
    ``i``, cell ``j`` = eval experience ``j``; cells without a head are not evaluated), and the
    sample-weighted stream accuracy of the last row (``Mean`` weighted by test-set size, which is
    what ``StreamAccuracy`` computes by pooling every test sample of the stream)."""
    try:
        from avalanche.evaluation.metrics import Mean, StreamBWT, StreamForgetting
    except ImportError:
        return None

    def fed(cls):
        class Fed(cls):
            value = None

            def metric_result(self, strategy):
                return self.value

        return Fed()

    out: Dict[str, Any] = {}
    for name, metric in (("forgetting", fed(StreamForgetting)), ("bwt", fed(StreamBWT))):
        for i, row in enumerate(matrix):
            metric.train_exp_id = i  # before_training_exp: the experience just trained
            metric.before_eval(None)
            for j, value in enumerate(row):
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    continue
                metric.eval_exp_id, metric.value = j, value
                metric.after_eval_exp(None)
        out[name] = float(metric.result()) + 0.0 if len(matrix) > 1 else None
        per = metric.forgetting.result()  # initial - last per experience (BWT: negated below)
        out[f"{name}_per_task"] = {tasks[k]: (v if name == "forgetting" else -v) + 0.0 for k, v in sorted(per.items())}
    last = Mean()
    for value, n in zip(matrix[-1], test_sizes):
        if value is not None:
            last.update(value, weight=n)
    out["stream_accuracy_sample_weighted"] = float(last.result())
    return out


def finish(key, framework, strategy, state: RunState, times, settings, train_data) -> Dict[str, Any]:
    tasks = [dm.name for dm in state.test_domains]
    matrix = state.rows
    s = summarize(matrix, tasks)
    return {
        "framework": framework,
        "strategy": strategy,
        "tasks": tasks,
        "accuracy_matrix": matrix,
        "details": state.details,
        "medcl_metrics": {
            "average_accuracy": s["average_accuracy"],
            "average_accuracy_per_experience": s["average_accuracy_per_experience"],
            "forgetting": s["forgetting"],
            "forgetting_per_task": s["forgetting_per_task"],
            "bwt": s["backward_transfer"],
        },
        "avalanche_metrics": avalanche_metrics(matrix, tasks, [len(dm.dataset("test")) for dm in state.test_domains]),
        "times": {
            **times,
            "median_step_s": median(state.step_periods) if state.step_periods else None,
            "step_periods_measured": len(state.step_periods),
            "eval_per_experience_s": state.eval_per_experience,
        },
        "initial_weights": dict(state.fingerprints),
        "final_weights": state.fingerprints_final,
        "train_data": train_data,
        "settings": settings,
    }


def mean_times(per_repeat: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The mean over repeats of every timing (``eval_per_experience_s`` element-wise)."""
    out: Dict[str, Any] = {}
    for key, value in per_repeat[0].items():
        values = [t[key] for t in per_repeat]
        if isinstance(value, list):
            out[key] = [sum(v) / len(v) for v in zip(*values)]
        elif any(v is None for v in values):
            out[key] = None
        elif key in ("train_steps", "step_periods_measured"):
            out[key] = value
        else:
            out[key] = sum(values) / len(values)
    return out


def seed_summary(run: Dict[str, Any]) -> Dict[str, Any]:
    """What the accuracy-over-seeds table keeps of a run."""
    return {"average_accuracy": run["medcl_metrics"]["average_accuracy"], "forgetting": run["medcl_metrics"]["forgetting"],
            "final_row": run["accuracy_matrix"][-1], "train_s": run["times"]["train_s"]}


def seed_table(result: Dict[str, Any]) -> List[str]:
    """Markdown: average accuracy and forgetting per (framework, strategy), mean ± sample std over seeds."""
    from statistics import mean, stdev

    seeds = result.get("seed_runs") or {}
    if not seeds or max(len(v) for v in seeds.values()) < 2:
        return []
    pm = lambda xs: f"{mean(xs):.3f} ± {stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"  # noqa: E731
    lines = [
        "## Accuracy over seeds", "",
        f"Every (framework, strategy) trained once per seed ({', '.join(map(str, result['setup']['accuracy_seeds']))}: model initialisation, "
        "batch order and replay draws; the data subsets stay those of `subset_seed: 0`); mean ± sample std.", "",
        "| framework | strategy | seeds | avg acc per seed | avg acc | forgetting (MedCL def.) |", "|---|---|---|---|---|---|",
    ]
    for key, per in seeds.items():
        framework, strategy = key.split("/")
        accs = [v["average_accuracy"] for v in per.values()]
        forget = [v["forgetting"] for v in per.values() if v["forgetting"] is not None]
        lines.append(f"| {'MedCL' if framework == 'medcl' else 'Avalanche'} | {strategy} | {len(per)} | {' / '.join(f'{a:.3f}' for a in accs)} "
                     f"| **{pm(accs)}** | {pm(forget) if forget else 'n/a'} |")
    lines.append("")
    for strategy in sorted({k.split("/")[1] for k in seeds}):
        m, a = seeds.get(f"medcl/{strategy}"), seeds.get(f"avalanche/{strategy}")
        if m and a and len(m) > 1 and len(a) > 1:
            dm = mean(v["average_accuracy"] for v in m.values()) - mean(v["average_accuracy"] for v in a.values())
            spread = max(stdev([v["average_accuracy"] for v in m.values()]), stdev([v["average_accuracy"] for v in a.values()]))
            verdict = "equal or better" if dm >= 0 else ("lower, within one seed-to-seed std" if -dm <= spread else "lower, by more than one seed-to-seed std")
            lines.append(f"{strategy}: MedCL minus Avalanche, mean average accuracy {dm:+.3f} (largest std {spread:.3f}): **{verdict}**.")
    return lines + [""]


def checks_and_ratios(runs: Dict[str, Dict[str, Any]], strategies: List[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for strategy in strategies:
        m, a = runs.get(f"medcl/{strategy}"), runs.get(f"avalanche/{strategy}")
        if not (m and a):
            continue
        out[strategy] = {
            "initial_weights_identical": m["initial_weights"] == a["initial_weights"],
            "train_data_identical": m["train_data"] == a["train_data"],
            "train_ratio_medcl_over_avalanche": m["times"]["train_s"] / a["times"]["train_s"],
            "total_ratio_medcl_over_avalanche": m["times"]["total_s"] / a["times"]["total_s"],
            "train_cpu_ratio_medcl_over_avalanche": m["times"]["train_cpu_s"] / a["times"]["train_cpu_s"],
            "median_step_ratio_medcl_over_avalanche": (
                m["times"]["median_step_s"] / a["times"]["median_step_s"] if m["times"]["median_step_s"] and a["times"]["median_step_s"] else None
            ),
            "total_cpu_ratio_medcl_over_avalanche": m["times"]["total_cpu_s"] / a["times"]["total_cpu_s"],
        }
        aligned = runs.get(f"avalanche_medcl_order/{strategy}")
        if aligned:
            diffs = [abs(x - y) for rm, ra in zip(m["accuracy_matrix"], aligned["accuracy_matrix"]) for x, y in zip(rm, ra) if x is not None and y is not None]
            out[strategy]["max_abs_difference_medcl_vs_avalanche_with_medcl_order"] = max(diffs) if diffs else None
            out[strategy]["final_weights_identical_medcl_vs_avalanche_with_medcl_order"] = m["final_weights"] == aligned["final_weights"]
            a_w, m_w = _FINAL_WEIGHTS.get(f"avalanche_medcl_order/{strategy}"), _FINAL_WEIGHTS.get(f"medcl/{strategy}")
            if a_w and m_w and a_w.keys() == m_w.keys():
                out[strategy]["max_abs_weight_difference_medcl_vs_avalanche_with_medcl_order"] = max(
                    float((a_w[k].double() - m_w[k].double()).abs().max()) if a_w[k].numel() else 0.0 for k in a_w
                )
    return out


# ---------------------------------------------------------------------------------------- reports
def _label(run: Dict[str, Any]) -> str:
    if run["framework"] == "medcl":
        return "MedCL"
    return "Avalanche, MedCL's batch order (check)" if run.get("variant") else "Avalanche"


def markdown(result: Dict[str, Any]) -> str:
    runs, ratios, setup = result["runs"], result["comparison"], result["setup"]
    tasks = next(iter(runs.values()))["tasks"]
    short = {"bloodmnist": "Blood", "organamnist": "OrganA", "pneumoniamnist": "Pneumonia", "retinamnist": "Retina"}
    busy = bool(setup["other_jobs_at_start"] or setup.get("other_jobs_at_end"))
    ms = lambda v: "n/a" if v is None else f"{1000 * v:.0f}"  # noqa: E731
    lines = [
        "# MedCL vs Avalanche: same data, model, epochs, batch size and buffer", "",
        f"`{setup['command']}` (one Python process; {setup['torch_threads']} torch threads; torch {setup['versions']['torch']}, "
        f"Lightning {setup['versions']['pytorch_lightning']}, Avalanche {setup['versions']['avalanche']}).",
        "",
        f"Stream: {' -> '.join(short.get(t, t) for t in tasks)} with the subsets of `{setup['stream_file']}` "
        f"(train {', '.join(str(d['train_subset']) for d in setup['domains'])} images, test "
        f"{', '.join(str(n) for n in setup['test_sizes'])} images; `subset_seed: 0`), built with `MedMNISTDataModule` for both frameworks. "
        f"Model: `MedCLModel` `medcl-vit-tiny` from scratch, learned class embeddings, one head per domain, seed {setup['seed']}; "
        f"{setup['epochs']} epochs per experience, batch size {setup['batch_size']}, AdamW lr 1e-3, weight decay 0; replay: 500 exemplars, "
        "32 replayed per step. Accuracy on the test subsets after the last experience, computed for every run by the same loop "
        "(`framework.metrics.evaluation.evaluate_head`).",
        "",
        "| framework | strategy | " + " | ".join(short.get(t, t) for t in tasks)
        + " | avg acc (MedCL def.) | stream acc (Avalanche def.) | forgetting (MedCL def.) | forgetting (Avalanche def.) "
        "| BWT (MedCL def.) | BWT (Avalanche def.) | train (s) | eval (s) | total (s) | median step (ms) "
        "| MedCL / Avalanche: train | : total | : median step |",
        "|---|---|" + "---|" * (len(tasks) + 13),
    ]
    for key, r in runs.items():
        m, a, t = r["medcl_metrics"], r["avalanche_metrics"] or {}, r["times"]
        ratio = ratios.get(r["strategy"], {})
        tail = " | | | |"
        if r["framework"] == "medcl" and ratio:
            tail = (f" | {fmt(ratio.get('train_ratio_medcl_over_avalanche'), 2)} | {fmt(ratio.get('total_ratio_medcl_over_avalanche'), 2)}"
                    f" | {fmt(ratio.get('median_step_ratio_medcl_over_avalanche'), 2)} |")
        lines.append(
            f"| {_label(r)} | {r['strategy']} | " + " | ".join(fmt(v) for v in r["accuracy_matrix"][-1])
            + f" | {fmt(m['average_accuracy'])} | {fmt(a.get('stream_accuracy_sample_weighted'))} | {fmt(m['forgetting'])} | {fmt(a.get('forgetting'))}"
            + f" | {fmt(m['bwt'])} | {fmt(a.get('bwt'))} | {fmt(t['train_s'], 1)} | {fmt(t['eval_s'], 1)} | {fmt(t['total_s'], 1)} | {ms(t.get('median_step_s'))}"
            + tail
        )
    lines += [
        "",
        "*def.* = the definition of that framework, computed from the row's own accuracy matrix (see below). Ratios compare the "
        "MedCL row with the Avalanche row of the same strategy (own batch order).",
        "",
    ]
    checks = []
    for strategy, c in ratios.items():
        text = (f"{strategy}: initial weights (backbone and every head) identical: {c['initial_weights_identical']}; training "
                f"tensors identical: {c['train_data_identical']}")
        if "max_abs_difference_medcl_vs_avalanche_with_medcl_order" in c:
            text += (f"; Avalanche given MedCL's batch order: largest difference to MedCL's accuracy matrix "
                     f"{c['max_abs_difference_medcl_vs_avalanche_with_medcl_order']:.2g}, final weights bit for bit identical: "
                     f"{c['final_weights_identical_medcl_vs_avalanche_with_medcl_order']}")
            if c.get("max_abs_weight_difference_medcl_vs_avalanche_with_medcl_order") is not None:
                text += f" (largest weight difference {c['max_abs_weight_difference_medcl_vs_avalanche_with_medcl_order']:.2g})"
        checks.append(text)
    repeated = {k: r["repeats_identical"] for k, r in runs.items() if "repeats_identical" in r}
    if repeated:
        checks.append("runs trained more than once gave the same matrix and the same final weights every time: "
                      + ", ".join(f"`{k}` ({len(runs[k]['times_per_repeat'])}x) {v}" for k, v in repeated.items()))
    if checks:
        lines += ["**Checks.** " + ". ".join(checks) + ".", ""]
    planned = list(setup.get("order_of_runs") or [])
    done = sum(len(r.get("times_per_repeat") or [1]) for r in runs.values())
    if done < len(planned):
        lines += [
            f"**Incomplete:** {done} of the {len(planned)} planned runs finished (planned order: "
            f"{', '.join(f'`{k}`' for k in planned)}); the process was stopped during run {done + 1} (`{planned[done]}`), so the last "
            f"{len(planned) - done} planned run(s) are missing; each row holds the repeats listed in the time table.", "",
        ]
    if any(r.get("variant") for r in runs.values()):
        lines += [
            "**Reading the accuracies.** The two frameworks train the same model on the same data with the same optimizer; what "
            "differs in the naive rows is only the order of the training batches (each framework shuffles its own way). The "
            "check row is Avalanche's `Naive` with a plugin that hands it MedCL's batch order (`--order-check`): it ends with the "
            "same matrix and the same weights as MedCL, so the gap between the MedCL and Avalanche naive rows is the effect of "
            "the shuffle order of one seed, not of the frameworks. The replay rows differ in more than the order (see the "
            "caveats: how replay batches are formed and weighted, and when the buffer is filled).", "",
        ]
    lines += seed_table(result)
    lines += [
        "## Time", "",
        "*setup* is everything before the first training step (MedCL: CLI parsing, config, model, loading the `.npz` files, "
        "Lightning set-up; Avalanche: model, loading the same files, tensors to AvalancheDatasets, benchmark and strategy "
        "objects); *train* is the training loop without the shared evaluation (MedCL: `on_train_start` to `on_train_end` minus "
        "the evaluation; Avalanche: the `strategy.train(experience)` calls, replay-buffer updates included); *eval* is the "
        "shared evaluation after every experience (the same code for both); *total* = setup + train + eval (+ Lightning's "
        "teardown). *median step* is the median time between the starts of two consecutive training steps of an epoch (data "
        "loading, replay, forward, backward, optimizer step and every hook), less sensitive to a burst of load from another "
        "job than a sum. Imports (Avalanche takes several seconds) are outside every timer, and an untimed warm-up step runs first.",
        "",
        "| run | repeats | setup (s) | train (s) | eval (s) | total (s) | train CPU (s) | total CPU (s) | steps | median step (ms) | train per repeat (s) | median step per repeat (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in runs.items():
        t, per = r["times"], r.get("times_per_repeat") or [r["times"]]
        lines.append(
            f"| `{key}` | {len(per)} | {t['setup_s']:.1f} | {t['train_s']:.1f} | {t['eval_s']:.1f} | {t['total_s']:.1f} | {t['train_cpu_s']:.1f} "
            f"| {t['total_cpu_s']:.1f} | {t['train_steps']} | {ms(t.get('median_step_s'))} | {' / '.join(format(x['train_s'], '.1f') for x in per)} "
            f"| {' / '.join(ms(x.get('median_step_s')) for x in per)} |"
        )
    spreads = [(max(x["train_s"] for x in r["times_per_repeat"]) / min(x["train_s"] for x in r["times_per_repeat"]), k)
               for k, r in runs.items() if len(r.get("times_per_repeat") or []) > 1]
    if spreads:
        worst, which = max(spreads)
        lines += ["", f"**Noise.** The same run (identical numbers and weights) took up to {worst:.1f}x longer in one repeat than in "
                  f"the other (`{which}`): differences between the frameworks smaller than that spread are not resolved by this measurement."]
    lines += [
        "",
        f"Times are means over each run's repeats (planned: {setup.get('repeats', 1)} per run; order of the runs: "
        f"{', '.join(f'`{k}`' for k in setup.get('order_of_runs', []))}); CPU = this process's CPU time (all its threads).",
    ]
    if busy:
        lines += [
            "",
            f"**Measured with other jobs sharing the {setup['cpu_count']} CPU cores**: load average (1, 5, 15 min) "
            f"{setup.get('load_average_at_start')} at the start and {setup.get('load_average_at_end')} at the end; other Python processes "
            f"at the start: {'; '.join(f'`{j}`' for j in setup['other_jobs_at_start']) or 'none'}; at the end: "
            f"{'; '.join(f'`{j}`' for j in setup.get('other_jobs_at_end') or []) or 'none'}. With more runnable threads than cores, "
            "2-thread torch kernels lose time whenever one of their threads is descheduled, so wall and CPU times are slower and "
            "much noisier than on an idle machine (the naive Avalanche run and its check run do the same work). The runs were "
            "interleaved in ABBA order (MedCL, Avalanche, Avalanche, MedCL for each strategy) so both saw similar load, but the ratios carry that noise: "
            "compare the repeats, and repeat on an idle machine before reading a few tens of percent into them.",
        ]
    lines += ["", "## Accuracy matrices (row: after experience i; column: domain; `-`: no head yet)", ""]
    for key, r in runs.items():
        lines += [f"`{key}`", "", "```", format_matrix(r["accuracy_matrix"], r["tasks"]), "```", ""]
    lines += [
        "## Where the metric definitions differ", "",
        "* **Forgetting.** MedCL (`framework.metrics.continual.summarize`) follows Chaudhry et al. (2018): for each task learned "
        "before the last experience, the *best* score in any row from the one that learned it up to the one before the last, "
        "minus the final score, averaged. Avalanche's `StreamForgetting` (and the standalone `Forgetting`) takes the score "
        "*just after the task's own experience* (its `initial` value, recorded when the evaluated experience is the one just "
        "trained) minus the last score, averaged over the experiences that have both. Avalanche's forgetting is therefore "
        "exactly minus the BWT, and MedCL's is never smaller; they differ when a task's score rose after it was learned (e.g. "
        "replay kept training it) and fell later. Both leave the last task out.",
        "* **BWT.** The same in both: mean over the tasks learned before the last experience of the final score minus the score "
        "just after learning it (Lopez-Paz & Ranzato 2017; Avalanche's `StreamBWT` is minus its `StreamForgetting`).",
        "* **Average accuracy.** MedCL: the unweighted mean of the last row over the domains learned. Avalanche's "
        "`StreamAccuracy` pools every test sample of the stream, i.e. weights each domain by its test-set size "
        f"({', '.join(str(n) for n in setup['test_sizes'])} here), which favours the large Blood and OrganA test sets.",
        "* Avalanche's metrics were fed the same matrix: its `StreamForgetting` / `StreamBWT` plugin metrics driven through "
        "their `before_eval` / `after_eval_exp` hooks with the matrix cells as the values, and `Mean` weighted by test-set "
        "size for the stream accuracy; per-task values are in the JSON.",
        "",
        "## Avalanche API used (0.6.0)", "",
        "* Benchmark: one `TaskAwareSupervisedClassificationDataset` per domain over a `TensorDataset` of the uint8 images and "
        "targets, with `DataAttribute(targets, \"targets\")` and `TaskLabels(ConstantSequence(t, n))` (task label t = the "
        "domain's position in the stream, 0..3, carried by every sample); "
        "`with_classes_timeline(with_task_labels(benchmark_from_datasets(train=[...])))`.",
        "* Model: a `MultiTaskModule` subclass; `forward_single_task(x, t)` returns `medcl_model(x, task=names[t])`; its "
        "`adaptation` adds the task's MedCL head before the experience (Avalanche's `make_optimizer` then adds its parameters "
        "to the optimizer and keeps the Adam state of the others, as MedCL's `optimizer_on_new_task: extend`).",
        "* Strategy: `avalanche.training.Naive(model, AdamW(lr=1e-3, weight_decay=0), CrossEntropyLoss(), train_mb_size=64, "
        "train_epochs=3, eval_every=-1, evaluator=EvaluationPlugin())` (no metrics, no loggers: the shared loop evaluates), "
        "`train(experience, eval_streams=[])` per experience.",
        "* Replay: `ReplayPlugin(mem_size=500, batch_size=64, batch_size_mem=32, task_balanced_dataloader=False, "
        "storage_policy=ReservoirSamplingBuffer(500))` against MedCL's `ReplayCallback(capacity=500, policy=\"reservoir\", "
        "replay_batch_size=32)` from `experiments/strategies/replay_reservoir.yaml` (both: every training sample of the stream "
        "equally likely to be kept; 64 current + 32 replayed samples per step). `--strategies replay_class_balanced` pairs "
        "`ClassBalancedBuffer(500, adaptive_size=True)` with `policy=\"class_balanced\"`.",
        "",
        "## Caveats: what is not identical", "",
        "* **Replay loss weighting.** MedCL sums one mean loss per task present in the batch (the current task + each replayed "
        "task), so every old task weighs as much as the current one however few of the 32 exemplars it got; Avalanche "
        "concatenates the 64 current and 32 memory samples into one mini-batch and takes one mean cross-entropy, so the memory "
        "weighs 1/3 in all.",
        "* **When the buffer is filled.** MedCL offers every training batch to the buffer while it trains (reservoir over the "
        "offers of all 3 epochs, so an image can be stored twice; the current task is excluded from replay draws); Avalanche "
        "adds the experience's dataset once, after the experience (`after_training_exp`). Neither replays in the first experience.",
        "* **Replay draws.** MedCL draws 32 of the stored old-task exemplars per step, uniformly; Avalanche iterates the memory "
        "with its own shuffled loader of batch 32, cycling it.",
        "* **Mixed channels.** Avalanche collates current and memory samples into one tensor, so for replay the grayscale "
        "domains (OrganA, Pneumonia) are given to Avalanche with their channel repeated 3 times and `forward_single_task` hands "
        "the head its single channel back: the model sees the same values (MedCL keeps one batch per task).",
        "* **Data order.** Same data, different shuffles: MedCL seeds every loader from (seed, task, split, epoch); Avalanche "
        "shuffles with the global torch generator (seeded once with `seed_everything(0)`). See the check row.",
        "* **Padding of logits.** Avalanche's `MultiTaskModule.forward` (called with a tensor of task labels, as its strategies "
        "do) writes each task's logits into a zero tensor as wide as the widest head seen (11, OrganA's); those zeros would "
        "enter the softmax of a narrower head (e.g. Pneumonia's 2 classes) during training. The wrapper sends a batch of one "
        "task through Avalanche's single-task path (the head's own logits) and pads mixed replay batches with "
        f"{MASK_VALUE:g} (as Avalanche's `MultiHeadClassifier` masks unused units), so the loss is the plain per-head "
        f"cross-entropy MedCL uses (`--avalanche-padding {setup['avalanche_padding']}` here; `zeros` keeps Avalanche's "
        "`forward` unchanged).",
        "* **MedCL without its extras.** The generated MedCL configs drop what Avalanche does not do here: validation every "
        "epoch, `ContinualEvaluation` (zero-shot cells, random-init reference), checkpoints (`ExperienceCheckpoint`), CSV/W&B "
        "loggers and the progress bar. A shipped strategy config spends extra time on those.",
        "* Avalanche's `ClassBalancedBuffer` groups by class index only: with per-task labels 0..k-1, class 0 of Blood and "
        "class 0 of OrganA share a group, whereas MedCL balances per (task, class). Only relevant to `replay_class_balanced`.",
        "* One seed: the single-seed spread of these numbers is large (the strategy table in docs/strategies.md saw average accuracies move "
        "by up to 0.10 when only the batch order changed).",
    ]
    return "\n".join(lines) + "\n"


def plot(result: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = result["runs"]
    names = list(runs)
    labels = [n.replace("/", "\n") for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    tasks = runs[names[0]]["tasks"]
    x = np.arange(len(tasks))
    width = 0.8 / len(names)
    for k, n in enumerate(names):
        axes[0].bar(x + (k - (len(names) - 1) / 2) * width, [v or 0.0 for v in runs[n]["accuracy_matrix"][-1]], width, label=n)
    axes[0].set_xticks(x, tasks, fontsize=8)
    axes[0].set_ylabel("test accuracy after the last experience")
    axes[0].legend(fontsize=7)
    keys = [
        ("avg acc (MedCL)", lambda r: r["medcl_metrics"]["average_accuracy"]),
        ("stream acc (Avalanche)", lambda r: (r["avalanche_metrics"] or {}).get("stream_accuracy_sample_weighted")),
        ("forgetting (MedCL, max)", lambda r: r["medcl_metrics"]["forgetting"]),
        ("forgetting (Avalanche)", lambda r: (r["avalanche_metrics"] or {}).get("forgetting")),
        ("BWT", lambda r: r["medcl_metrics"]["bwt"]),
    ]
    x = np.arange(len(names))
    width = 0.8 / len(keys)
    for k, (label, get) in enumerate(keys):
        axes[1].bar(x + (k - (len(keys) - 1) / 2) * width, [get(runs[n]) or 0.0 for n in names], width, label=label)
    axes[1].axhline(0, color="k", lw=0.6)
    axes[1].set_xticks(x, labels, fontsize=8)
    axes[1].legend(fontsize=7, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    axes[1].set_title("summaries of the accuracy matrix")
    bottom = np.zeros(len(names))
    for part in ("setup_s", "train_s", "eval_s"):
        values = np.array([runs[n]["times"][part] for n in names])
        axes[2].bar(x, values, 0.6, bottom=bottom, label=part[:-2])
        bottom += values
    axes[2].set_xticks(x, labels, fontsize=8)
    axes[2].set_ylabel("wall-clock (s)")
    axes[2].legend(fontsize=7)
    busy = result["setup"]["other_jobs_at_start"] or result["setup"].get("other_jobs_at_end")
    axes[2].set_title("time" + (" (other jobs shared the CPU)" if busy else ""))
    fig.suptitle("MedCL vs Avalanche on " + " -> ".join(tasks), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- main
def warm_up(domains: List[MedMNISTDataModule]) -> None:
    """One untimed forward/backward so that lazily initialised kernels and caches do not land in the first timed run."""
    with torch.random.fork_rng(devices=[]):
        model = MedCLModel(backbone={"model_name": "medcl-vit-tiny"}, head_args={"classification": {"learn_class_embeddings": True}})
        dm = domains[0]
        model.add_task(dm.task_spec)
        batch = next(iter(dm.loader("train", keyed=False)))
        loss = model.head(dm.name).loss(model(batch["image"], task=dm.name), batch["target"])
        loss.backward()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", default=DEFAULT_STRATEGIES, choices=STRATEGIES)
    parser.add_argument("--frameworks", nargs="+", default=FRAMEWORKS, choices=FRAMEWORKS)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per experience")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--experiences", type=int, default=4, help="the first N domains of the stream")
    parser.add_argument("--train-subset", type=int, default=None, help="training images per domain (default: the stream file's, 1,000)")
    parser.add_argument("--test-subset", type=int, default=None, help="test images per domain (default: the stream file's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="folder of the MedMNIST .npz files (default: the stream file's, ../shared/data/medmnist)")
    parser.add_argument("--avalanche-padding", choices=["mask", "zeros"], default="mask",
                        help="logits of narrower heads padded with -1000 (mask) or Avalanche's default zeros")
    parser.add_argument("--repeats", type=int, default=2,
                        help="train every (framework, strategy) this many times, in ABBA order, and average the times (the numbers must repeat)")
    parser.add_argument("--accuracy-seeds", nargs="*", type=int, default=[1, 2],
                        help="after the timed runs, train every (framework, strategy) once more with each of these seeds, for the accuracy "
                             "over seeds (one seed's batch order moves the average accuracy by several points)")
    parser.add_argument("--medcl-task-loss-weighting", choices=["equal", "samples"], default="equal",
                        help="MedCL's model.task_loss_weighting: 'samples' weighs each task's loss by its share of the batch, "
                             "one mean over the 64 current + 32 replayed samples as Avalanche computes")
    parser.add_argument("--order-check", action=argparse.BooleanOptionalAction, default=True,
                        help="also train Avalanche's naive run with MedCL's batch order (a check that the two set-ups are the same)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"folder for {NAME}.{{json,md,png}}")
    parser.add_argument("--collect-only", action="store_true", help=f"do not train; rewrite {NAME}.md and .png from {NAME}.json")
    parser.add_argument("--runs", type=Path, default=None, help="folder for the generated MedCL configs (default runs/avalanche_compare, or <results>/runs)")
    args = parser.parse_args(argv)
    if args.collect_only:
        results = json.loads((args.results / f"{NAME}.json").read_text())
        (args.results / f"{NAME}.md").write_text(markdown(results))
        plot(results, args.results / f"{NAME}.png")
        print(markdown(results))
        return

    torch.set_num_threads(THREADS)
    print(f"torch threads: {torch.get_num_threads()} (interop {torch.get_num_interop_threads()})", flush=True)
    if "avalanche" in args.frameworks:
        start = time.perf_counter()
        import avalanche  # noqa: F401  (~10 s; outside every timer)
        import avalanche.training  # noqa: F401

        print(f"imported avalanche {avalanche.__version__} in {time.perf_counter() - start:.1f} s (not timed)", flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    runs_dir = args.runs or (REPO / "runs" / NAME if args.results.resolve() == RESULTS.resolve() else args.results / "runs")
    jobs_start = other_jobs()
    if jobs_start:
        print("note: other jobs share the CPU: " + "; ".join(jobs_start), flush=True)

    domains = domain_args(args)
    clip_test_subsets(domains)
    os.environ["PL_GLOBAL_SEED"] = str(args.seed)  # the shared loaders' generators (no shuffling at test time)
    test_domains = make_domains([dict(d, eval_batch_size=500) for d in domains])
    for d in domains:
        d["eval_batch_size"] = 500
    warm_up(test_domains)

    results: Dict[str, Any] = {
        "setup": {
            "command": " ".join(["cd benchmarks && ../.venv/bin/python avalanche_compare.py", *(argv if argv is not None else sys.argv[1:])]),
            "torch_threads": torch.get_num_threads(),
            "versions": versions(),
            "cpu_count": os.cpu_count(),
            "seed": args.seed,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "avalanche_padding": args.avalanche_padding,
            "stream_file": str(STREAM.relative_to(REPO)),
            "domains": domains,
            "test_sizes": [len(dm.dataset("test")) for dm in test_domains],
            "test_data": {dm.name: tensor_fingerprint(stacked(dm.dataset("test"))) for dm in test_domains},
            "other_jobs_at_start": jobs_start,
            "load_average_at_start": load_average(),
        },
        "runs": {},
    }
    out = args.results / f"{NAME}.json"
    # ABBA order over the repeats (MedCL, Avalanche, Avalanche, MedCL, ...) so a drifting load on
    # the machine weighs on both frameworks alike; the check run once, after the first Avalanche naive run
    plan = []
    for strategy in args.strategies:
        for r in range(args.repeats):
            plan += [(strategy, f) for f in (args.frameworks if r % 2 == 0 else args.frameworks[::-1])]
    if args.order_check and "naive" in args.strategies and "avalanche" in args.frameworks:
        plan.insert(plan.index(("naive", "avalanche")) + 1, ("naive", "avalanche_medcl_order"))
    results["setup"]["repeats"] = args.repeats
    results["setup"]["order_of_runs"] = [f"{f}/{s}" for s, f in plan]
    for strategy, framework in plan:
        if framework == "medcl":
            result = run_medcl(strategy, args, copy.deepcopy(domains), test_domains, runs_dir)
        else:
            order = "medcl" if framework == "avalanche_medcl_order" else "avalanche"
            result = run_avalanche(strategy, args, copy.deepcopy(domains), test_domains, order=order)
        key = f"{framework}/{strategy}"
        first = results["runs"].get(key)
        if first is None:
            result["times_per_repeat"] = [result["times"]]
            results["runs"][key] = result
        else:  # a repeat: same numbers expected (deterministic), its times are averaged in
            first["times_per_repeat"].append(result["times"])
            first["repeats_identical"] = bool(first.get("repeats_identical", True) and result["accuracy_matrix"] == first["accuracy_matrix"]
                                              and result["final_weights"] == first["final_weights"])
            first["times"] = mean_times(first["times_per_repeat"])
        results["comparison"] = checks_and_ratios(results["runs"], args.strategies)
        results["setup"]["other_jobs_at_end"] = other_jobs()
        results["setup"]["load_average_at_end"] = load_average()
        out.write_text(json.dumps(results, indent=2))  # after every run: an interrupted study keeps what finished
    results["setup"]["accuracy_seeds"] = [args.seed] + [s for s in args.accuracy_seeds if s != args.seed]
    seeds = results["seed_runs"] = {key: {str(args.seed): seed_summary(r)} for key, r in results["runs"].items() if not r.get("variant")}
    for seed in results["setup"]["accuracy_seeds"][1:]:
        seeded = argparse.Namespace(**{**vars(args), "seed": seed})
        for strategy in args.strategies:
            for framework in args.frameworks:
                if framework == "medcl":
                    result = run_medcl(strategy, seeded, copy.deepcopy(domains), test_domains, runs_dir)
                else:
                    result = run_avalanche(strategy, seeded, copy.deepcopy(domains), test_domains)
                seeds.setdefault(f"{framework}/{strategy}", {})[str(seed)] = seed_summary(result)
                out.write_text(json.dumps(results, indent=2))
    (args.results / f"{NAME}.md").write_text(markdown(results))
    plot(results, args.results / f"{NAME}.png")
    print(markdown(results))


if __name__ == "__main__":
    main()
