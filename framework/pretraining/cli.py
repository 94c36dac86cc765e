"""``medcl pretrain --config experiments/pretrain/<name>.yaml``: contrastive image–text pretraining.

The config is an ordinary ``medcl fit`` config whose ``model`` is
:class:`~framework.pretraining.ContrastivePretraining` and whose ``data`` serves image–caption pairs
(``data_modules.PromptPairsDataModule`` or ``data_modules.CsvPairsDataModule``).  At the end of the
run the weights file and model card are written to ``<run folder>/pretrained/``
(:class:`~framework.pretraining.export.ExportPretrainedWeights`); start a MedCL run from it with
``pretrained: <that file>``, or continue pretraining on new pairs with the same option here.
"""
from __future__ import annotations

from typing import List, Optional

from framework.cli import MedCLCLI, run_cli
from framework.pretraining.contrastive import ContrastivePretraining
from framework.pretraining.export import ExportPretrainedWeights

__all__ = ["PretrainCLI", "run_pretrain"]


class PretrainCLI(MedCLCLI):
    """:class:`MedCLCLI` for ``medcl pretrain``: the model is a :class:`ContrastivePretraining`, and the
    weights file is written at the end of ``fit``."""

    def before_fit(self) -> None:
        if not any(isinstance(c, ExportPretrainedWeights) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(ExportPretrainedWeights())


def run_pretrain(args: Optional[List[str]] = None, run: bool = True) -> PretrainCLI:
    """Run ``medcl pretrain`` in-process (``args`` as after ``medcl pretrain``); return the CLI.

    ``--ckpt_path`` resumes an interrupted pretraining run; to pretrain further on new pairs, start a
    new run with ``--model.init_args.pretrained <the weights file>``.
    """
    return run_cli(["fit", *(args or [])] if run else list(args or []), run=run, model_class=ContrastivePretraining, cli_class=PretrainCLI)
