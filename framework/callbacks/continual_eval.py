"""After each experience, test every domain: the in-domain matrix, forward transfer against a
random-init reference, cross-domain sets and never-trained (cross-task) tasks.

The callback evaluates; :mod:`framework.callbacks.continual_result` turns its rows into the result
dict and :mod:`framework.callbacks.reports` writes every output (files, printed report, loggers)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from tqdm.auto import tqdm

from framework.callbacks.continual_result import build_result as _build_result
from framework.callbacks.reports import (
    CURVES_PNG, INITIAL_ROW, METRICS_CSV, METRICS_JSON, METRICS_PNG, LoggerReport, plot_matrix, print_report, row_label, write_result_files,
)
from framework.callbacks.reports.task_agnostic import task_agnostic_section
from framework.metrics.task_agnostic import evaluate_task_agnostic
from framework.metrics.evaluation import PROBE_DEFAULTS, can_route, evaluate_head, fresh_head, linear_probe, supports_zero_shot
from framework.precision import trainer_precision
from framework.strategies.base import ExperienceCallback

__all__ = ["ContinualEvaluation", "METRICS_JSON", "METRICS_CSV", "METRICS_PNG", "CURVES_PNG", "plot_matrix", "row_label"]

log = logging.getLogger(__name__)


class ContinualEvaluation(ExperienceCallback):
    """The continual-learning evaluation protocol, run at the end of each experience.

    * **In-domain**: the matrix ``R[i][j]`` (row = after experience ``i``, column = task ``j``),
      average accuracy over the tasks learned so far, forgetting, backward transfer (BWT) and
      forward transfer (FWT).  A task whose head predicts from class prompts (classification) is
      also scored *before* it is trained, zero-shot (shown in parentheses; never in the averages);
      FWT = mean over tasks ``j`` of ``R[learned_j - 1][j] - b_j``, where ``b_j`` is the score of a
      random-init reference model (the configured backbone before any training, with the same
      untrained head), evaluated once when training starts.  Heads that do not predict from
      prompts (segmentation, prognosis) have no before-training cells and no FWT.
    * **Cross-domain**: the stream's ``cross_domains`` (the same task from another source) are
      tested with the head of the task they are keyed by.
    * **Cross-task**: the stream's ``cross_tasks`` (classification tasks never trained) are scored
      zero-shot from their class prompts and by a linear probe on frozen image features
      (scikit-learn logistic regression on ``probe_samples_per_class`` seeded training images per
      class; the same images after every experience).
    * **Zero-shot retention**: the stream's ``known_tasks`` (the pretrained model's pretraining
      domains, never trained in the stream) are scored zero-shot from their class prompts before
      training and after every experience: ``zero_shot_retention`` holds each task's scores and
      ZSCL's "Transfer" (the mean over experiences), the start, the final value and the drop.
    * Secondary metrics (AUC and balanced accuracy for classification) come from each head's
      torchmetrics collection; the AUROC is the macro one-vs-rest average over the classes where it
      is defined, and undefined (``NaN``) on a test split holding a single class, never 0
      (:class:`~framework.metrics.auroc.DefinedAUROC`).  Undefined values are written as
      ``null`` in the JSON (listed by JSON pointer under ``undefined``), left empty in the CSV,
      printed as ``undefined`` and skipped by every average.

    Everything is written to ``<run dir>/continual_metrics.{json,csv}``, ``accuracy_matrix.png``
    (heat map) and ``task_curves.png`` after every experience, logged to every logger against a
    ``continual/experience`` axis (W&B also gets the tables and both images), and printed when
    ``fit`` ends.  The rows live in the checkpoint, so a resumed run keeps them.  Under DDP every
    rank evaluates its share of each test set and the metrics are synchronised (no sample twice).

    When the model was grown from a checkpoint (``init_from``), a first row ``-1`` ("start") holds
    every old task's score before any training.  Columns are the stream's evaluation-only domains,
    then its trained domains.

    Args:
        split: the split each task is evaluated on (``"test"`` or ``"val"``).
        output_dir: where files go; defaults to the trainer's log dir.
        forward_transfer: score untrained zero-shot tasks and the random-init reference (FWT).
        probe_samples_per_class: linear-probe training images per class (its fixed budget); 0 turns the probe off.
        seed: seed of the reference model, untrained heads and the probe's training images.
        log_images: also log, at each experience end, up to 8 test images of every evaluated task
            with their prediction and target to W&B (only with a ``WandbLogger``; see
            :mod:`framework.callbacks.sample_images`).  Off by default: test images are patient
            data, and by default W&B gets only the metric tables and the two metric images.
        metrics: registered continual metrics to report beside the built-in ones, after every
            experience (``learning_accuracy``, ``min_accuracy``, or a user's, see
            :func:`~framework.metrics.continual.register_metric`): in the JSON
            (``metrics_per_experience``), the CSV, the printed summary and the loggers (``continual/<name>``).

    Raises:
        ValueError: on an unknown split, a negative probe budget, a ``log_images`` that is not a bool, or an
            unknown metric name.
    """

    def __init__(
        self,
        split: str = "test",
        output_dir: Optional[str] = None,
        forward_transfer: bool = True,
        probe_samples_per_class: int = PROBE_DEFAULTS["samples_per_class"],
        seed: int = 0,
        log_images: bool = False,
        metrics: Optional[List[str]] = None,
    ) -> None:
        super().__init__()
        from framework.core.registry import METRICS

        #: registered continual metrics reported beside the built-in ones (names or class_paths)
        self.metric_names = list(metrics or [])
        for name in self.metric_names:
            METRICS.get(name, where="ContinualEvaluation: metrics")  # an unknown name is refused now, not after training
        if not isinstance(log_images, bool):
            raise ValueError(f"ContinualEvaluation: log_images expected true or false, found {log_images!r}")
        if split not in ("val", "test"):
            raise ValueError(f"ContinualEvaluation: split expected 'val' or 'test', found {split!r}")
        if isinstance(probe_samples_per_class, bool) or not isinstance(probe_samples_per_class, int) or probe_samples_per_class < 0:
            raise ValueError(f"ContinualEvaluation: probe_samples_per_class expected an integer >= 0, found {probe_samples_per_class!r}")
        self.split = split
        self.output_dir = output_dir
        self.forward_transfer = bool(forward_transfer)
        self.probe_samples_per_class = probe_samples_per_class
        self.seed = int(seed)
        self.log_images = log_images
        #: experience index -> task -> metric dict
        self.rows: Dict[int, Dict[str, Dict[str, float]]] = {}
        #: experience index -> {"cross_domain": {name: metrics}, "cross_task": {name: {"zero_shot": .., "linear_probe": ..}}}
        self.cross_rows: Dict[int, Dict[str, Dict[str, Any]]] = {}
        self.experience_tasks: Dict[int, List[str]] = {}
        #: experience index -> the task-agnostic row (a model with a task router; framework/metrics/task_agnostic.py)
        self.task_agnostic_rows: Dict[int, Dict[str, Any]] = {}
        self._router_kind: Optional[str] = None
        #: the random-init reference: {"tasks": {task: metrics}, "cross_domain": {...}, "cross_task": {...}}
        self.random_init: Optional[Dict[str, Dict[str, Any]]] = None
        self.result: Optional[Dict[str, Any]] = None
        #: task -> reference numbers from the data (e.g. a semi-synthetic task's oracle C-index)
        self.reference: Optional[Dict[str, Dict[str, float]]] = None
        self._current: Optional[Tuple[int, List[str]]] = None  # (experience, tasks) being trained
        self._logger_report = LoggerReport()  # W&B's experience axis is defined once per callback
        self._run_dir: Optional[Path] = None

    # ------------------------------------------------------------------ hooks
    # Evaluation must not change training: its DataLoaders draw their base seeds from the global
    # torch generator, so every evaluation runs on a forked generator (fork_rng).
    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        with torch.random.fork_rng(devices=[]), trainer_precision(trainer):
            if self.random_init is None:
                self.random_init = self.evaluate_random_init(trainer, pl_module)
            initial = list(getattr(pl_module, "initial_tasks", []))
            if initial and not self.rows and trainer.current_epoch == 0:
                self.evaluate_experience(trainer, pl_module, INITIAL_ROW, initial)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        # every epoch, not only at experience start, so a run resumed mid-experience knows it too
        experience = pl_module.experience_of_epoch(trainer.current_epoch)
        self._current = (experience, pl_module.experiences()[experience])

    def after_experience(self, trainer: pl.Trainer, pl_module, experience: int, tasks: List[str]) -> None:
        with torch.random.fork_rng(devices=[]):
            self.evaluate_experience(trainer, pl_module, experience, tasks)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        # Training stopped inside an experience (max_steps, early stopping): record it as it is.
        current = self._current
        if current is not None and current[0] not in self.rows:
            log.warning("training ended inside experience %d; evaluating the model as it is", current[0])
            with torch.random.fork_rng(devices=[]), trainer_precision(trainer):
                self.evaluate_experience(trainer, pl_module, *current)
        if self.result is not None:
            self._print(self.result)

    # ------------------------------------------------------------------ work
    def _datamodule(self, trainer: pl.Trainer):
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "eval_dataloader"):
            raise ValueError("ContinualEvaluation needs a datamodule with eval_dataloader(task, split) (a DomainStream)")
        return datamodule

    def _progress(self, trainer: pl.Trainer, items: List[Any], desc: str):
        show = trainer.progress_bar_callback is not None and trainer.is_global_zero
        return tqdm(items, desc=desc, disable=not show, leave=False)

    def _untrained(self, model, spec, pl_module, loader, key: str) -> Optional[Dict[str, float]]:
        """``spec``'s untrained (zero-shot) head on ``model``, or None where that means nothing."""
        if not (supports_zero_shot(spec) and can_route(model, spec)):
            return None
        head = fresh_head(model, spec, seed=self.seed)  # the model's own head_args
        return evaluate_head(model, head, loader, key, pl_module.device)

    def _cross_task(self, model, spec, pl_module, datamodule) -> Dict[str, Optional[Dict[str, float]]]:
        domain = datamodule.domain(spec.name)
        out: Dict[str, Optional[Dict[str, float]]] = {
            "zero_shot": self._untrained(model, spec, pl_module, datamodule.eval_dataloader(spec.name, self.split), spec.name)
        }
        out["linear_probe"] = None
        if self.probe_samples_per_class and can_route(model, spec):
            out["linear_probe"] = linear_probe(
                model, spec, domain.loader("train", keyed=False, shuffle=False), domain.loader(self.split, keyed=False),
                pl_module.device, samples_per_class=self.probe_samples_per_class, seed=self.seed,
            )
        return out

    @staticmethod
    def _shared_model(pl_module):
        models = pl_module.all_models() if hasattr(pl_module, "all_models") else []
        return models[0] if len(models) == 1 else None

    @torch.no_grad()
    def evaluate_random_init(self, trainer: pl.Trainer, pl_module) -> Dict[str, Dict[str, Any]]:
        """Score the random-init reference once: the configured model before any training (random
        weights, or the ``pretrained`` file if one is set) with untrained heads, on every zero-shot
        task, cross-domain set and cross task.  Built under a fixed seed; the hooks run it on a forked
        generator, so adding this callback does not change training."""
        out: Dict[str, Dict[str, Any]] = {"tasks": {}, "cross_domain": {}, "cross_task": {}, "known_task": {}}
        datamodule = self._datamodule(trainer)
        known = list(getattr(datamodule, "known_task_specs", []))
        cross_tasks = list(getattr(datamodule, "cross_task_specs", []))
        specs = [s for s in _evaluation_specs(datamodule) if supports_zero_shot(s)]
        cross_domains = [n for n, t in getattr(datamodule, "cross_domain_task", {}).items() if supports_zero_shot(datamodule.domain(t).task_spec)]
        if not self.forward_transfer:  # the known tasks' start scores are part of retention, not of FWT
            specs, cross_domains, cross_tasks = [], [], []
        if not (specs or cross_domains or cross_tasks or known):
            return out
        torch.manual_seed(self.seed)  # the caller forked the generator
        model = pl_module.new_model().to(pl_module.device).eval()
        for spec in known:
            out["known_task"][spec.name] = self._untrained(model, spec, pl_module, datamodule.eval_dataloader(spec.name, self.split), spec.name)
        for spec in self._progress(trainer, specs, "evaluating the random-init reference"):
            out["tasks"][spec.name] = self._untrained(model, spec, pl_module, datamodule.eval_dataloader(spec.name, self.split), spec.name)
        for name in cross_domains:
            spec = datamodule.domain(datamodule.cross_domain_task[name]).task_spec
            out["cross_domain"][name] = self._untrained(model, spec, pl_module, datamodule.eval_dataloader(name, self.split), name)
        for spec in cross_tasks:
            out["cross_task"][spec.name] = self._cross_task(model, spec, pl_module, datamodule)
        return out

    def evaluate_experience(self, trainer: pl.Trainer, pl_module, experience: int, tasks: List[str]) -> Dict[str, Any]:
        datamodule = self._datamodule(trainer)
        specs = _evaluation_specs(datamodule)
        shared = self._shared_model(pl_module)
        row: Dict[str, Dict[str, float]] = {}
        cross: Dict[str, Dict[str, Any]] = {"cross_domain": {}, "cross_task": {}, "known_task": {}}
        was_training = pl_module.training
        pl_module.eval()
        try:
            trained = set(getattr(pl_module, "initial_tasks", []))
            trained |= {t for tasks in pl_module.experiences()[: max(experience, -1) + 1] for t in tasks}
            for spec in self._progress(trainer, specs, f"evaluating {row_label(experience)}"):
                loader = datamodule.eval_dataloader(spec.name, self.split)
                if spec.name in pl_module.task_specs and (spec.name in trained or supports_zero_shot(spec)):
                    # a head not trained yet is scored only where that means zero-shot from class prompts
                    # (an untrained segmentation decoder or risk head would be a random number)
                    row[spec.name] = pl_module.evaluate(spec.name, loader)
                elif self.forward_transfer and shared is not None:
                    scores = self._untrained(shared, spec, pl_module, loader, spec.name)
                    if scores is not None:
                        row[spec.name] = scores
            for name, task in getattr(datamodule, "cross_domain_task", {}).items():
                loader = datamodule.eval_dataloader(name, self.split)
                if task in pl_module.task_specs:
                    cross["cross_domain"][name] = pl_module.evaluate(task, loader, key=name)
                elif self.forward_transfer and shared is not None:
                    cross["cross_domain"][name] = self._untrained(shared, datamodule.domain(task).task_spec, pl_module, loader, name)
            if shared is not None:
                for spec in getattr(datamodule, "cross_task_specs", []):
                    cross["cross_task"][spec.name] = self._cross_task(shared, spec, pl_module, datamodule)
                for spec in getattr(datamodule, "known_task_specs", []):
                    loader = datamodule.eval_dataloader(spec.name, self.split)
                    cross["known_task"][spec.name] = self._untrained(shared, spec, pl_module, loader, spec.name)
            router = getattr(shared, "router", None) if shared is not None else None
            if router is not None and router.sources:  # route, then predict (no task labels)
                self._router_kind = router.kind
                self.task_agnostic_rows[experience] = evaluate_task_agnostic(
                    shared, datamodule, [t for t in pl_module.task_specs if t in trained], self.split, pl_module.device,
                    getattr(datamodule, "unknown_domain_names", []),
                )
            if shared is None and (getattr(datamodule, "cross_task_specs", []) or getattr(datamodule, "known_task_specs", [])):
                log.warning(
                    "cross and known tasks need one shared model; %s has one model per task, so they are skipped", type(pl_module).__name__
                )
        finally:
            pl_module.train(was_training)
        self.rows[experience] = row
        self.cross_rows[experience] = cross
        self.experience_tasks[experience] = list(tasks)
        if self.reference is None:
            self.reference = reference_scores(datamodule, self.split)
        self.result = self.build_result([s.name for s in specs], pl_module, specs, datamodule)
        # trainer.log_dir broadcasts from rank 0 under DDP: every rank must ask, not only the writer
        self._run_dir = self.run_dir(trainer)
        self._write(self._run_dir, self.result)
        self._log_row(trainer, experience)
        return self.result

    def build_result(self, all_tasks: List[str], pl_module, specs, datamodule=None) -> Dict[str, Any]:
        """The result dict of the rows recorded so far (:func:`framework.callbacks.continual_result.build_result`),
        with the task-agnostic section of a model with a task router."""
        result = _build_result(
            all_tasks, pl_module, specs, datamodule, rows=self.rows, cross_rows=self.cross_rows, experience_tasks=self.experience_tasks,
            random_init_scores=self.random_init, reference=self.reference, split=self.split,
            probe_samples_per_class=self.probe_samples_per_class, metric_names=self.metric_names,
        )
        section = task_agnostic_section(self.task_agnostic_rows, result, self._router_kind or "")
        if section is not None:
            result["task_agnostic"] = section
        return result

    def run_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)

    # ------------------------------------------------------------------ output (framework.callbacks.reports)
    @rank_zero_only
    def _write(self, out: Path, result: Dict[str, Any]) -> None:
        write_result_files(out, result)

    def _log_row(self, trainer: pl.Trainer, experience: int) -> None:
        sample_images = None
        if self.log_images:  # opt-in: test images are patient data

            def sample_images() -> Dict[str, Any]:
                from framework.callbacks.sample_images import sample_images as draw

                tasks = list(self.rows.get(experience, {}))
                return draw(trainer, trainer.lightning_module, self._datamodule(trainer), tasks, self.split)

        self._logger_report.log(trainer, experience, self.rows[experience], self.result, self._run_dir, sample_images)

    @rank_zero_only
    def _print(self, result: Dict[str, Any]) -> None:
        print_report(result)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> Dict[str, Any]:
        return {
            "reference": self.reference,
            "rows": {str(e): row for e, row in self.rows.items()},
            "cross_rows": {str(e): row for e, row in self.cross_rows.items()},
            "experience_tasks": {str(e): t for e, t in self.experience_tasks.items()},
            "random_init": self.random_init,
            "task_agnostic_rows": {str(e): row for e, row in self.task_agnostic_rows.items()},
            "router_kind": self._router_kind,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.rows = {int(e): row for e, row in state_dict.get("rows", {}).items()}
        self.cross_rows = {int(e): row for e, row in state_dict.get("cross_rows", {}).items()}
        self.experience_tasks = {int(e): list(t) for e, t in state_dict.get("experience_tasks", {}).items()}
        self.reference = state_dict.get("reference")
        self.random_init = state_dict.get("random_init")
        self.task_agnostic_rows = {int(e): row for e, row in state_dict.get("task_agnostic_rows", {}).items()}
        self._router_kind = state_dict.get("router_kind")


def _evaluation_specs(datamodule) -> list:
    return list(getattr(datamodule, "evaluation_specs", datamodule.task_specs))


def reference_scores(datamodule, split: str) -> Dict[str, Dict[str, float]]:
    """Reference numbers the domains know about themselves (e.g. a semi-synthetic task's oracle
    C-index), from each domain's optional ``reference_scores(split)``."""
    out: Dict[str, Dict[str, float]] = {}
    for spec in _evaluation_specs(datamodule):
        domain = datamodule.domain(spec.name) if hasattr(datamodule, "domain") else datamodule
        values = domain.reference_scores(split) if hasattr(domain, "reference_scores") else {}
        if values:
            out[spec.name] = {k: float(v) for k, v in values.items()}
    return out
