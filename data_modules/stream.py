"""A stream of domains: an ordered list of domain data modules behind one LightningDataModule."""
from __future__ import annotations

import functools
import logging
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader

from data_modules.base import DomainDataModule, keyed_collate, single_sample_last_batches, trainer_limited
from framework.core.data_protocol import domain_for
from framework.core.seeding import loader_generator
from framework.core.specs import TaskSpec

__all__ = ["DomainStream", "domain_for"]  # domain_for: defined in framework.core.data_protocol


log = logging.getLogger(__name__)


#: the keys of DomainStream's ``loader`` (DomainDataModule.configure_loader)
LOADER_FIELDS = {"num_workers", "pin_memory", "persistent_workers"}


class DomainStream(pl.LightningDataModule):
    """Ordered domains, served the way the paradigm asks for them.

    The LightningModule decides which tasks train at each epoch (``tasks_for_epoch``): the
    continual paradigm asks for one domain per experience, joint and specialised learning for all
    of them at once.  The stream builds a ``CombinedLoader`` (``max_size_cycle``) over the requested
    domains, so a training batch is ``{task: {"image", "target"}}`` for each requested task.
    Validation serves every task (the model skips those it has no head for yet, which keeps the
    number of validation loaders fixed), test every task the model has a head for.

    ``eval_domains`` are never trained: they re-test tasks a grown model already has (loaded with
    ``init_from``), so old and new tasks share one accuracy matrix.

    Two more kinds of evaluation-only data serve :class:`~framework.callbacks.ContinualEvaluation`
    (never trained, never in the Lightning val/test loops):

    * ``cross_domains``: the same task from another source, keyed by the task whose head tests it,
      e.g. ``{kvasir_seg: [<CVC-ClinicDB domain>]}``.  Each listed domain has its own name and must
      describe the same task (kind, classes, label names, dimensions) as the task it is keyed by.
    * ``cross_tasks``: classification tasks the model never trains, scored after every experience
      zero-shot from their class prompts and by a linear probe on frozen features.
    * ``known_tasks``: classification tasks the *pretrained* model already knew (its pretraining
      domains), never trained in the stream, scored zero-shot before training and after every
      experience: how much of the pretrained skill the stream keeps (ZSCL's "Transfer",
      ``zero_shot_retention`` in the results).  Their images were seen in pretraining, so they are
      reported apart from the unseen ``cross_tasks``.

    ``medcl predict`` predicts every task's test split, or, with ``predict_path``, the images of a
    folder or an ``.npz`` for one task (``predict_task``; optional when the stream has one task), or,
    without ``predict_task``, for whatever task each image belongs to: a model with a task router
    (``model.init_args.router``) routes every image and predicts every task of its source
    (:mod:`data_modules.routed_prediction`).

    Args:
        domains: the domains to train, in stream order; in YAML each is a ``class_path`` + ``init_args``.
        eval_domains: domains of old tasks, evaluated (val/test, experience-end matrix) but never trained.
        cross_domains: task name -> domains of the same task from other sources (evaluation only).
        cross_tasks: classification domains never trained (zero-shot and linear-probe evaluation only).
        known_tasks: classification domains of the pretrained model's pretraining data (zero-shot retention only).
        unknown_domains: domains the model never learns, of any kind (their labels are not read): a
            task router (``model.init_args.router``) should call their images "unknown"; the
            experience-end evaluation reports its out-of-distribution AUROC on them.
        predict_path: a folder of images or an ``.npz`` to predict on instead of the test splits.
        predict_task: the task whose head predicts ``predict_path``; leave it unset to let the
            model's task router choose per image.
        loader: DataLoader settings for every domain of the stream (training, evaluation and
            cross sets): ``num_workers``, ``pin_memory`` (page-locked batches for faster copies
            to a GPU), ``persistent_workers`` (workers kept between iterations of one loader; the
            stream's loaders are rebuilt when the trained domain changes).  Unset keys keep each
            domain's own values.  The trainer presets (``experiments/trainer/``) set them per machine.

    Raises:
        ValueError: if ``domains`` is empty, an item is not a :class:`DomainDataModule`, two domains
            share a task name, ``predict_task`` is missing or unknown while ``predict_path`` is set, a
            cross-domain set is keyed by an unknown task or describes another task, or a cross task
            or known task is not a classification task.
    """

    def __init__(
        self,
        domains: List[DomainDataModule],
        eval_domains: Optional[List[DomainDataModule]] = None,
        predict_path: Optional[str] = None,
        predict_task: Optional[str] = None,
        cross_domains: Optional[Dict[str, List[DomainDataModule]]] = None,
        cross_tasks: Optional[List[DomainDataModule]] = None,
        known_tasks: Optional[List[DomainDataModule]] = None,
        loader: Optional[Dict[str, Any]] = None,
        unknown_domains: Optional[List[DomainDataModule]] = None,
    ) -> None:
        super().__init__()
        if not domains:
            raise ValueError("DomainStream: field 'domains' expected at least one domain data module, found none")
        if cross_domains is not None and not isinstance(cross_domains, dict):
            raise ValueError(
                f"DomainStream: field 'cross_domains' expected a mapping task name -> list of domains, found {type(cross_domains).__name__}"
            )
        cross_domains = {task: list(items) for task, items in (cross_domains or {}).items()}
        seen: Dict[str, str] = {}
        fields = [(f"domains[{i}]", d) for i, d in enumerate(domains)] + [(f"eval_domains[{i}]", d) for i, d in enumerate(eval_domains or [])]
        fields += [(f"cross_domains.{t}[{i}]", d) for t, items in cross_domains.items() for i, d in enumerate(items)]
        fields += [(f"cross_tasks[{i}]", d) for i, d in enumerate(cross_tasks or [])]
        fields += [(f"known_tasks[{i}]", d) for i, d in enumerate(known_tasks or [])]
        fields += [(f"unknown_domains[{i}]", d) for i, d in enumerate(unknown_domains or [])]
        for field, domain in fields:
            if not isinstance(domain, DomainDataModule):
                raise ValueError(
                    f"DomainStream: field '{field}' expected a data_modules.DomainDataModule, found {type(domain).__name__}"
                )
            name = domain.task_spec.name
            if name in seen:
                raise ValueError(
                    f"DomainStream: task name {name!r} is used by field '{seen[name]}' and field '{field}'; "
                    f"give each domain a unique task_name"
                )
            seen[name] = field
        self.domains = list(domains)
        self.eval_domains = list(eval_domains or [])
        self._by_name = {d.task_spec.name: d for d in self.eval_domains + self.domains}
        #: cross-domain set name -> the task whose head tests it
        self.cross_domain_task: Dict[str, str] = {}
        for task, items in cross_domains.items():
            if task not in self._by_name:
                raise ValueError(
                    f"DomainStream: field 'cross_domains' is keyed by {task!r}, which is not a task of the stream "
                    f"({list(self._by_name)}); key each list by the task whose head tests it"
                )
            wanted = self._by_name[task].task_spec
            for i, domain in enumerate(items):
                _check_same_task(f"cross_domains.{task}[{i}]", domain.task_spec, wanted)
                self.cross_domain_task[domain.task_spec.name] = task
        self.cross_domains = [d for items in cross_domains.values() for d in items]
        self.cross_tasks = list(cross_tasks or [])
        self.known_tasks = list(known_tasks or [])
        for field, items in (("cross_tasks", self.cross_tasks), ("known_tasks", self.known_tasks)):
            for i, domain in enumerate(items):
                if domain.task_spec.kind != "classification":
                    raise ValueError(
                        f"DomainStream: field '{field}[{i}]' ({domain.task_spec.name}) expected a classification task "
                        f"(scored zero-shot from class prompts), found kind {domain.task_spec.kind!r}"
                    )
        self.unknown_domains = list(unknown_domains or [])
        self._evaluation_only = {d.task_spec.name: d for d in self.cross_domains + self.cross_tasks + self.known_tasks + self.unknown_domains}
        if predict_path is not None:
            if predict_task is None and len(self.domains) == 1:
                predict_task = self.task_names[0]
            if predict_task is not None and predict_task not in self._by_name:
                raise ValueError(
                    f"DomainStream: field 'predict_task' expected one of {self.task_names} (the task whose head predicts "
                    f"predict_path), found {predict_task!r}"
                )
        self.predict_path = predict_path
        self.predict_task = predict_task
        if loader is not None:
            if not isinstance(loader, dict) or set(loader) - LOADER_FIELDS:
                found = sorted(loader) if isinstance(loader, dict) else loader
                raise ValueError(f"DomainStream: field 'loader' expected a mapping with keys from {sorted(LOADER_FIELDS)}, found {found!r}")
            for domain in self._all_domains():
                domain.configure_loader(**loader)

    # ------------------------------------------------------------------ description
    @property
    def task_specs(self) -> List[TaskSpec]:
        """Specs of the domains to train."""
        return [d.task_spec for d in self.domains]

    @property
    def evaluation_specs(self) -> List[TaskSpec]:
        """Specs of every domain evaluated: evaluation-only ones first, then the trained ones."""
        return [d.task_spec for d in self.eval_domains + self.domains]

    @property
    def task_names(self) -> List[str]:
        return [d.task_spec.name for d in self.domains]

    @property
    def cross_task_specs(self) -> List[TaskSpec]:
        """Specs of the never-trained tasks scored zero-shot and by a linear probe."""
        return [d.task_spec for d in self.cross_tasks]

    @property
    def unknown_domain_names(self) -> List[str]:
        """Names of the never-learned domains whose images a task router should call unknown."""
        return [d.task_spec.name for d in self.unknown_domains]

    @property
    def known_task_specs(self) -> List[TaskSpec]:
        """Specs of the pretrained model's known tasks, scored zero-shot for retention."""
        return [d.task_spec for d in self.known_tasks]

    def domain(self, task: str) -> DomainDataModule:
        """The domain serving ``task`` (trained, evaluation-only, cross-domain or cross-task).

        Raises:
            KeyError: naming the task and the stream's tasks.
        """
        found = self._by_name.get(task) or self._evaluation_only.get(task)
        if found is None:
            raise KeyError(f"DomainStream has no task {task!r}; tasks: {list(self._by_name) + list(self._evaluation_only)}")
        return found

    def single_sample_last_batches(self) -> List[str]:
        """Training domains whose last training batch holds one sample (the framework's BatchNorm check reads this)."""
        return single_sample_last_batches(self)

    def __len__(self) -> int:
        return len(self.domains)

    # ------------------------------------------------------------------ Lightning hooks
    def _all_domains(self) -> List[DomainDataModule]:
        return self.eval_domains + self.domains + self.cross_domains + self.cross_tasks + self.known_tasks + self.unknown_domains

    def prepare_data(self) -> None:
        for domain in self._all_domains():
            domain.prepare_data()

    def setup(self, stage: Optional[str] = None) -> None:
        """Set up every domain, and refuse one without the samples its role needs: a trained domain
        needs train, val and test samples, an ``eval_domains`` one val and test, a cross-domain or
        cross-task set test samples only (a test-only set from another centre is fine).

        Raises:
            ValueError: naming the domain, its role and the empty split.
        """
        for domain in self._all_domains():
            domain.setup(stage)
        roles = [("domains", d, ("train", "val", "test")) for d in self.domains] + [("eval_domains", d, ("val", "test")) for d in self.eval_domains]
        roles += [("cross_domains/cross_tasks/known_tasks/unknown_domains", d, ("test",))
                  for d in self.cross_domains + self.cross_tasks + self.known_tasks + self.unknown_domains]
        for role, domain, splits in roles:
            if stage not in (None, "fit"):
                splits = tuple(s for s in splits if s == {"validate": "val"}.get(stage, stage))
            empty = [s for s in splits if len(domain.dataset(s)) == 0]
            if empty:
                raise ValueError(
                    f"DomainStream: {role} domain {domain.name!r} has no {'/'.join(empty)} samples; a domain listed under {role} "
                    f"needs {', '.join(splits)} samples (a test-only set belongs under cross_domains)"
                )

    def _module_tasks(self, method: str, *args) -> List[str]:
        module = self.trainer.lightning_module if self.trainer is not None else None
        fn = getattr(module, method, None)
        tasks = fn(*args) if callable(fn) else self.task_names
        unknown = [t for t in tasks if t not in self._by_name]
        if unknown:
            raise KeyError(f"DomainStream: the model asked for task(s) {unknown} that the stream does not have ({self.task_names})")
        return list(tasks)

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def train_dataloader(self) -> CombinedLoader:
        epoch = self._epoch()
        tasks = self._module_tasks("tasks_for_epoch", epoch)
        return CombinedLoader({t: self.domain(t).loader("train", keyed=False, epoch=epoch) for t in tasks}, mode="max_size_cycle")

    def val_dataloader(self) -> List[DataLoader]:
        return [domain.loader("val") for domain in self.eval_domains + self.domains]

    def _evaluated_tasks(self) -> List[str]:
        """Tasks the model has heads for and the stream has data for (a warning names the others)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        fn = getattr(module, "tasks_for_evaluation", None)
        model_tasks = fn() if callable(fn) else list(self._by_name)
        tasks = [t for t in model_tasks if t in self._by_name]
        no_head = [t for t in self._by_name if t not in model_tasks]
        no_data = [t for t in model_tasks if t not in self._by_name]
        if no_head:
            log.warning("DomainStream: the model has no head for %s yet; testing only %s", no_head, tasks)
        if no_data:
            log.warning("DomainStream: no data listed for the model's task(s) %s (add them under eval_domains to test them)", no_data)
        return tasks

    def test_dataloader(self) -> List[DataLoader]:
        tasks = self._evaluated_tasks()
        if not tasks:
            raise ValueError(
                f"DomainStream: nothing to test: the model has no head for any task of the stream ({list(self._by_name)}); "
                f"test a trained model: medcl test --config <config> --ckpt_path <checkpoint>"
            )
        return [self.domain(t).loader("test") for t in tasks]

    def predict_dataloader(self) -> List[DataLoader]:
        if self.predict_path is None:
            return [self.domain(t).loader("test") for t in self._evaluated_tasks()]
        from data_modules.prediction import PredictionSource

        module = self.trainer.lightning_module if self.trainer is not None else None
        if self.predict_task is None:
            return [self._routed_predict_loader(module)]
        domain = self.domain(self.predict_task)
        size = getattr(module.model_for(self.predict_task).backbone, "image_size", None) if hasattr(module, "model_for") else None
        source = PredictionSource(self.predict_path, domain.task_spec, input_size=size)  # warns once if it resizes
        batch_size = domain.eval_batch_size if source.same_size else 1
        return [
            DataLoader(
                source, batch_size=batch_size, shuffle=False, collate_fn=functools.partial(keyed_collate, task=self.predict_task),
                generator=loader_generator(self.predict_task, "predict"),
            )
        ]

    def _routed_predict_loader(self, module: Any) -> DataLoader:
        """Every image of ``predict_path``, routed by the model's task router (no ``predict_task``)."""
        from data_modules.routed_prediction import RoutedPredictionSource, routed_collate

        models = module.all_models() if hasattr(module, "all_models") else []
        if len(models) != 1 or getattr(models[0], "router", None) is None or not models[0].router.sources:
            raise ValueError(
                f"DomainStream: field 'predict_task' expected one of {self.task_names} (the task whose head predicts "
                f"predict_path), found None; without it, the model must route each image itself: train it with a task "
                f"router (model.init_args.router: {{kind: prototypes}}, docs/routing.md)"
            )
        source = RoutedPredictionSource(self.predict_path, module.task_specs)
        return DataLoader(source, batch_size=1, shuffle=False, collate_fn=routed_collate, generator=loader_generator("routed", "predict"))

    def eval_dataloader(self, task: str, split: str = "test") -> DataLoader:
        """Keyed loader of one task's ``split``, for evaluation outside the Lightning loops, cut to
        the trainer's ``limit_<split>_batches`` (so a debug preset limits the experience-end matrix too)."""
        return trainer_limited(self.trainer, self.domain(task).loader(split), split)

    def state_dict(self) -> Dict[str, List[str]]:
        return {"task_names": self.task_names}

    def load_state_dict(self, state_dict: Dict[str, List[str]]) -> None:
        saved = list(state_dict.get("task_names", []))
        if saved and saved != self.task_names:
            raise ValueError(
                f"DomainStream: the checkpoint was written for the stream {saved}, but this stream is {self.task_names}; "
                f"--ckpt_path resumes the same run, so use the same domains in the same order. To add domains to a trained "
                f"model, start a new run from it: --model.init_args.init_from <checkpoint>"
            )


def _check_same_task(field: str, found: TaskSpec, wanted: TaskSpec) -> None:
    """A cross-domain set must describe the task it is keyed by (only its name and source may differ)."""
    for attr in ("kind", "class_names", "label_names", "spatial_dims", "in_channels", "time_bins"):
        a, b = getattr(found, attr), getattr(wanted, attr)
        if a != b:
            raise ValueError(
                f"DomainStream: field '{field}' ({found.name}) has {attr}={a!r}, but the task {wanted.name!r} it is keyed by "
                f"has {attr}={b!r}; a cross-domain set must describe the same task"
            )
