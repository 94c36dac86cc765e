"""The MedCL checkpoint format: what a paradigm module writes beside Lightning's state, and how a
stored model is rebuilt (``--ckpt_path``, ``init_from``, ``load_from_checkpoint``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from pytorch_lightning.utilities import rank_zero_info

from framework.adapters import AdapterSpec
from framework.backbone.architecture import forget_checkpoint_architectures, register_checkpoint_architecture
from framework.backbone.custom import comparable_backbone
from framework.core.attachment import attached_trainer
from framework.core.checkpoints import load_checkpoint
from framework.core.divergence import check_module, check_state_dict
from framework.core.specs import TaskSpec

__all__ = ["CheckpointFormatMixin", "CHECKPOINT_KEY", "CHECKPOINT_FORMAT", "MODEL_DEFINING_HPARAMS", "SHARED_MODEL_PARADIGMS", "hparam_differences"]

log = logging.getLogger(__name__)

#: key under which task specs are stored in Lightning checkpoints
CHECKPOINT_KEY = "medcl"
CHECKPOINT_FORMAT = 1
#: hyper-parameters that decide the shape of the stored weights, with their defaults
MODEL_DEFINING_HPARAMS = {"backbone": "medcl-vit-tiny", "image_size": None, "head_args": None, "domain_batchnorm": False, "router": None}
#: paradigms that share one model (their checkpoints load into each other with init_from)
SHARED_MODEL_PARADIGMS = ("ContinualModule", "JointModule")


def hparam_differences(
    stored: Mapping[str, Any], wanted: Mapping[str, Any], stored_kinds: Optional[Iterable[str]] = None, native_size: Optional[Any] = None
) -> List[str]:
    """``"field: checkpoint X, config Y"`` for every model-defining hyper-parameter that differs.

    Args:
        stored: the checkpoint's hyper-parameters.
        wanted: this configuration's.
        stored_kinds: growing (``init_from``): the task kinds of the checkpoint's heads; ``head_args``
            then only has to agree for those kinds (a new kind's head options may be added).
        native_size: the architecture's own input size, named where ``image_size`` is ``None``.
    """
    out = []
    for key, default in MODEL_DEFINING_HPARAMS.items():
        a, b = stored.get(key, default), wanted.get(key, default)
        if key == "backbone":  # a custom tower's init_args: absent = empty
            a, b = comparable_backbone(a), comparable_backbone(b)
        if key == "head_args" and stored_kinds is not None:
            a, b = ({k: v for k, v in dict(x or {}).items() if k in set(stored_kinds)} for x in (a, b))
        if (a or None) != (b or None):
            if key == "image_size":
                shown = [repr(v) if v is not None or native_size is None else f"None (the architecture's {native_size} px)" for v in (a, b)]
                out.append(
                    f"image_size: checkpoint {shown[0]}, config {shown[1]} (the tower's native size; a task's own input size is its "
                    f"data module's image_size, which needs no change of the model)"
                )
                continue
            out.append(f"{key}: checkpoint {a!r}, config {b!r}")
    return out



class CheckpointFormatMixin:
    """Writing and reading the ``medcl`` checkpoint entry (a part of :class:`~framework.paradigms.base.MedCLModule`)."""

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's ``load_from_checkpoint``, building the backbone from the architecture the
        checkpoint stores (so neither the original model folder nor the pretrained file is needed)."""
        register_checkpoint_architecture(checkpoint_path)
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        finally:
            forget_checkpoint_architectures()  # a later fresh model of that name builds from its source again

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        check_module(self, "saving a checkpoint")  # a non-finite model never becomes last.ckpt
        adapters = {}
        for name in self.task_specs:
            adapter = self.model_for(name).adapter_of_task.get(name)
            if adapter is not None:
                adapters[name] = adapter.to_dict()
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "paradigm": type(self).__name__,
            "tasks": [spec.to_dict() for spec in self.task_specs.values()],
            "adapters": adapters,  # task -> the adapter it brought, rebuilt before strict loading
            "initial_tasks": list(self.initial_tasks),
            # the backbone's architecture and tokenizer files: the checkpoint rebuilds its model anywhere
            "architecture": self.architecture.to_record() if self.architecture is not None else None,
        }

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Rebuild the heads and adapters stored in the checkpoint before Lightning loads the weights (strictly)."""
        meta = checkpoint.get(CHECKPOINT_KEY)
        ckpt = getattr(attached_trainer(self), "ckpt_path", None)
        check_state_dict(checkpoint.get("state_dict", {}), f"--ckpt_path {ckpt}" if ckpt else "checkpoint")
        if meta is None:
            raise ValueError(
                f"checkpoint has no '{CHECKPOINT_KEY}' entry with task specs; it was not written by a MedCL module"
            )
        if meta.get("paradigm") != type(self).__name__:
            raise ValueError(
                f"checkpoint field '{CHECKPOINT_KEY}.paradigm' is {meta.get('paradigm')!r}, but it is being loaded into "
                f"{type(self).__name__}; load it with that class"
            )
        for i, spec, adapter in self.stored_tasks(meta, "checkpoint"):
            offered = self.stream_specs.get(spec.name)
            if offered is not None and not spec.same_task(offered):
                raise ValueError(
                    f"checkpoint field '{CHECKPOINT_KEY}.tasks[{i}]' ({spec.name!r}) differs from the data's task: "
                    f"{spec.to_dict()} vs {offered.to_dict()}"
                )
            if spec.name not in self.task_specs:  # heads already present were added from the data, checked above
                with self.rebuilding():
                    self.add_task(spec, adapter=adapter)
        stored = [t.get("name") for t in meta.get("tasks", [])]
        if list(self.task_specs) != stored:
            raise ValueError(
                f"{'--ckpt_path ' + str(ckpt) if ckpt else 'checkpoint'}: it was written for the tasks {stored}, but this config's "
                f"stream is {list(self.stream_specs) or list(self.task_specs)}; resume with the same domains in the same order, or grow the "
                f"trained model with new domains in a new run: --model.init_args.init_from <checkpoint>"
            )
        self.initial_tasks = list(meta.get("initial_tasks", self.initial_tasks))

    @staticmethod
    def stored_tasks(meta: Mapping[str, Any], where: str, key: str = CHECKPOINT_KEY) -> Iterable[Tuple[int, TaskSpec, Optional[AdapterSpec]]]:
        """``(index, spec, adapter it brought)`` for every task stored in a checkpoint entry with
        ``tasks`` and ``adapters`` (the ``medcl`` entry, or ``key``, e.g. LwF's teacher)."""
        adapters = meta.get("adapters", {})
        for i, data in enumerate(meta.get("tasks", [])):
            spec = TaskSpec.from_dict(data, source=f"{where} field '{key}.tasks[{i}]'")
            stored = adapters.get(spec.name)
            source = f"{where} field '{key}.adapters.{spec.name}'"
            yield i, spec, None if stored is None else AdapterSpec.from_dict(stored, source=source)

    # ------------------------------------------------------------------ growing a trained model
    def load_initial_model(self, path: Union[str, Path]) -> None:
        """Rebuild and strictly load a MedCL checkpoint's model (``init_from``); its tasks become old tasks.

        Raises:
            FileNotFoundError: if the file does not exist.
            ValueError: if it is not a MedCL checkpoint, was written by a paradigm with another model
                layout, or its backbone or heads differ from this configuration.
        """
        path = Path(path)
        where = f"init_from {str(path)!r}"
        checkpoint = load_checkpoint(path, "init_from")
        meta = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
        if not isinstance(meta, dict) or "state_dict" not in checkpoint:
            found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise ValueError(
                f"{where}: not a MedCL checkpoint: expected a Lightning checkpoint with 'state_dict' and a '{CHECKPOINT_KEY}' "
                f"entry (written by medcl fit), found {found}"
            )
        paradigm, mine = meta.get("paradigm"), type(self).__name__
        if paradigm != mine and not (paradigm in SHARED_MODEL_PARADIGMS and mine in SHARED_MODEL_PARADIGMS):
            raise ValueError(
                f"{where}: written by {paradigm}, whose model layout differs from {mine}'s; "
                f"grow it with {paradigm} (or any of {list(SHARED_MODEL_PARADIGMS)} for a shared-model checkpoint)"
            )
        kinds = {t.get("kind") for t in meta.get("tasks", []) if isinstance(t, Mapping)}
        native = (meta.get("architecture") or {}).get("model_cfg", {}).get("vision_cfg", {}).get("image_size")
        problems = hparam_differences(checkpoint.get("hyper_parameters", {}), self.hparams, stored_kinds=kinds, native_size=native)
        if problems:
            raise ValueError(f"{where}: the checkpoint's model differs from this configuration ({'; '.join(problems)}); set the config to the checkpoint's values")
        check_state_dict(checkpoint["state_dict"], where)
        with self.rebuilding():
            for _, spec, adapter in self.stored_tasks(meta, where):
                self.add_task(spec, adapter=adapter)
        try:
            self.load_state_dict(checkpoint["state_dict"], strict=True)
        except RuntimeError as err:
            raise ValueError(f"{where}: the weights do not fit the rebuilt model: {str(err).splitlines()[0]}") from None
        self.initial_tasks = list(self.task_specs)
        rank_zero_info(f"{where}: loaded tasks {self.initial_tasks} and adapters {[a.modality for m in self.all_models() for a in m.adapters.specs.values()]}")
