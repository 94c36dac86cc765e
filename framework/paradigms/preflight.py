"""Setup: the data's tasks meet the model's, and everything that can be refused is refused before training."""
from __future__ import annotations

from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from framework.core.attachment import attached_trainer
from framework.core.data_protocol import single_sample_last_batches
from framework.precision import warn_on_slow_precision

__all__ = ["PreflightMixin"]


class PreflightMixin:
    """``setup`` and its checks (a part of :class:`~framework.paradigms.base.MedCLModule`)."""

    def setup(self, stage: str) -> None:
        # strategies' own parameters (prompts) and token hooks first: a checkpoint loaded below holds them
        self.strategy_runner.attach()
        trainer = attached_trainer(self)
        restoring = self.checkpoint_pending or (trainer is not None and trainer.ckpt_path is not None)
        if self.hparams.init_from is not None and not self.task_specs and not restoring:
            self.load_initial_model(self.hparams.init_from)
        elif not restoring:
            self.load_pretrained()
        if not restoring:  # a router reads the image tower as this run starts (a checkpoint holds its own copy)
            for model in self.all_models():
                if getattr(model, "router", None) is not None:
                    model.router.snapshot(model.backbone)
        datamodule = getattr(trainer, "datamodule", None)
        specs = getattr(datamodule, "task_specs", None)
        if specs is None:
            if stage == "fit":
                raise ValueError(
                    f"{type(self).__name__}: the datamodule must expose `task_specs` (use a data_modules.DomainStream "
                    f"or a data_modules.DomainDataModule); found {type(datamodule).__name__}"
                )
            return
        names = [s.name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"{type(datamodule).__name__}: task name(s) {dupes} used more than once")
        self.stream_specs = {s.name: s for s in specs}
        evaluation_only = [s for s in getattr(datamodule, "evaluation_specs", specs) if s.name not in self.stream_specs]
        for spec in evaluation_only:
            if spec.name not in self.task_specs:
                raise ValueError(
                    f"{type(datamodule).__name__}: evaluation-only domain {spec.name!r} is not a task of the model "
                    f"(tasks: {list(self.task_specs)}); eval_domains re-test tasks the model has (e.g. from init_from), "
                    f"list a new task under domains to train it"
                )
        for spec in list(self.stream_specs.values()) + evaluation_only:
            mine = self.task_specs.get(spec.name)
            if mine is not None and not mine.same_task(spec):
                raise ValueError(f"task {spec.name!r}: the model's spec {mine.to_dict()} differs from the data's {spec.to_dict()}")
        if stage == "fit":
            warn_on_slow_precision(self.trainer)
            self._refuse_single_sample_batches(datamodule)
            self.validate_schedule()
            self.ensure_tasks(self.experiences()[0])
            self._prepare_ddp()
            self._check_scheduler_growth()
            self.strategy_runner.check()  # every strategy can serve this module and its tasks

    def _prepare_ddp(self) -> None:
        """Under DDP, grow every stream task's head now and let DDP find unused parameters.

        DDP registers the parameters it synchronises once, when it wraps the module (after this
        hook), so a head grown later would train separately on each rank.  Heads of later
        experiences stay frozen until their experience (:meth:`future_tasks`).  A MedCL training
        step leaves parameters unused by design (heads of tasks not in the batch, adapters of other
        modalities), so DDP must look for them.
        """
        from pytorch_lightning.strategies import DDPStrategy

        strategy = self.trainer.strategy
        if not isinstance(strategy, DDPStrategy) or self.trainer.world_size < 2:
            return
        for tasks in self.experiences():
            self.ensure_tasks(tasks)
        if not strategy._ddp_kwargs.get("find_unused_parameters"):
            # Lightning exposes no public setter once the strategy exists; the kwargs are read when DDP wraps the module
            strategy._ddp_kwargs["find_unused_parameters"] = True
            rank_zero_info("DDP: find_unused_parameters=True (heads of tasks not in a batch get no gradient)")

    def _refuse_single_sample_batches(self, datamodule) -> None:
        """A trainable BatchNorm cannot normalise a training batch of one sample: say so before training
        (naming the domains) instead of failing at the end of the first epoch."""
        trainable_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in m.parameters()) for m in self.modules())
        lonely = single_sample_last_batches(datamodule) if trainable_bn and datamodule is not None else []
        if lonely:
            raise ValueError(
                f"{type(self).__name__}: the backbone {self.hparams.backbone!r} has BatchNorm layers, which cannot train on a batch of one "
                f"sample, but the last training batch of {', '.join(lonely)} holds one; set drop_last: true on that domain "
                f"(or another batch_size)"
            )

    def _check_scheduler_growth(self) -> None:
        """An lr scheduler set up for the first experience's parameter groups would never schedule the
        groups of heads added later (torch schedulers keep one base lr per group they were built with);
        rebuilding the optimizer on every new task (``optimizer_on_new_task: reset``) rebuilds the scheduler too."""
        if self.scheduler_factory is None or self.hparams.optimizer_on_new_task == "reset":
            return
        first = set(self.experiences()[0]) | set(self.task_specs)
        later = [t for tasks in self.experiences()[1:] for t in tasks if t not in first]
        if later:
            raise ValueError(
                f"{type(self).__name__}: lr_scheduler with optimizer_on_new_task='extend' would leave the heads of {later} "
                f"(added during the run) unscheduled; set model.init_args.optimizer_on_new_task: reset (optimizer and scheduler "
                f"restart with every new task), or train without lr_scheduler"
            )
