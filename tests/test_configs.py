"""The experiment files under experiments/ and the per-concern files they name.

* every experiment starts from the shared trainer settings (``config: ../trainer/continual.yaml``)
  and parses with the ``medcl`` parser (``--print_config``: nothing is built or run), alone and with
  the stacked presets (debug.yaml, trainer/*.yaml), as tests/helpers.py reads it;
* every file an experiment names (``data: ../streams/x.yaml``, ``callbacks: ../callbacks/continual.yaml``,
  ``- ../callbacks/evaluation.yaml``) exists, relative to the naming file, and tests/helpers.py inlines it;
* no trainer, logger or callbacks block is written out in two files: a shared one lives in
  experiments/callbacks/ (or streams/, trainer/, logger/) and is named by path;
* each experiment's own values agree: its loggers write into its run folder (``default_root_dir``).
"""
from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import yaml

from conftest import REPO
from helpers import load_config

from framework.config_placeholders import fill_placeholders

EXPERIMENTS = REPO / "experiments"
#: folders of files that experiments name or stack; every other YAML file under experiments/ is an experiment
CONCERNS = ("callbacks", "streams", "trainer", "logger")
#: stacked after an experiment (``--config experiment.yaml --config <preset>``), not run alone
PRESETS = ("debug.yaml",)


def _experiments() -> List[Path]:
    return sorted(
        p for p in EXPERIMENTS.rglob("*.yaml")
        if p.relative_to(EXPERIMENTS).parts[0] not in CONCERNS and p.name not in PRESETS
    )


def _printed(args: List[str], pretrain: bool = False) -> Dict[str, Any]:
    """The config ``medcl`` parses from ``args`` (``--print_config``: parsed and validated, nothing built)."""
    from framework.cli import run_cli
    from framework.pretraining.cli import run_pretrain

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        if pretrain:
            run_pretrain([*args, "--print_config"])
        else:
            run_cli(["fit", *args, "--print_config"])
    return yaml.safe_load(out.getvalue())


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path.relative_to(EXPERIMENTS))


# ---------------------------------------------------------------------------- parsing
def test_every_experiment_parses_with_the_cli_and_reads_as_tests_inline_it():
    experiments = _experiments()
    assert len(experiments) >= 30 and EXPERIMENTS / "quickstart.yaml" in experiments
    for path in experiments:
        parsed = _printed(["--config", _rel(path)], pretrain="pretrain" in path.parts)
        inlined = load_config(path)  # what shrink_config starts from: no file names left in it
        trainer = parsed["trainer"]
        assert trainer["default_root_dir"] == inlined["trainer"]["default_root_dir"], path
        got = [c["class_path"] for c in trainer["callbacks"] or []]
        assert got == [c["class_path"] for c in inlined["trainer"].get("callbacks") or []], path
        for callback, written in zip(trainer["callbacks"] or [], inlined["trainer"].get("callbacks") or []):
            for key, value in (written.get("init_args") or {}).items():
                assert callback["init_args"][key] == value, (path, callback["class_path"], key)
        assert parsed["data"]["class_path"] == inlined["data"]["class_path"], path
        # the shared settings the experiment starts from (`config: ../trainer/...`) and its dotted changes
        for key, value in inlined["trainer"].items():
            if key not in ("callbacks", "logger"):
                assert trainer[key] == value, (path, key)
        loggers = inlined["trainer"].get("logger") or []
        assert [c["class_path"] for c in trainer["logger"] or []] == [c["class_path"] for c in loggers], path
        for logger, written in zip(trainer["logger"] or [], loggers):
            assert {k: logger["init_args"][k] for k in written["init_args"]} == written["init_args"], path


def test_every_experiment_starts_from_the_shared_trainer_settings():
    for path in _experiments():
        text = yaml.safe_load(path.read_text())
        first = next(iter(text))
        assert first == "config" and text["config"].rsplit("/", 1)[-1] in ("default.yaml", "continual.yaml"), (path, first)
        assert (path.parent / text["config"]).resolve().parent == EXPERIMENTS / "trainer", path
        assert "trainer" not in text, f"{path}: write trainer.<name>: <value> (a trainer mapping would replace the shared settings)"


@pytest.mark.parametrize("preset", ["debug.yaml", "trainer/cpu.yaml", "trainer/cpu_bf16.yaml", "trainer/gpu.yaml", "trainer/ddp.yaml"])
def test_presets_stack_after_a_composed_experiment(preset):
    parsed = _printed(["--config", "experiments/quickstart.yaml", "--config", f"experiments/{preset}"])
    kinds = [c["class_path"].rsplit(".", 1)[-1] for c in parsed["trainer"]["callbacks"]]
    appended = ["AttentionKernel"] if preset == "trainer/cpu_bf16.yaml" else []
    assert kinds == ["ReplayCallback", "ContinualEvaluation", "ExperienceCheckpoint", *appended]
    assert parsed["trainer"]["callbacks"][0]["init_args"]["capacity"] == 300
    if preset == "debug.yaml":
        assert parsed["trainer"]["logger"] is False and parsed["trainer"]["default_root_dir"] == "runs/debug"


def test_a_named_file_that_is_missing_is_refused_naming_field_and_file(tmp_path):
    (tmp_path / "exp").mkdir()
    path = tmp_path / "exp" / "broken.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": ["../callbacks/evaluation.yaml", "../callbacks/no_such.yaml"]}}))
    (tmp_path / "callbacks").mkdir()
    (tmp_path / "callbacks" / "evaluation.yaml").write_text("class_path: framework.callbacks.ContinualEvaluation\n")
    with pytest.raises(FileNotFoundError, match=r"broken\.yaml: trainer\.callbacks\[1\]: expected a YAML file '\.\./callbacks/no_such\.yaml'"):
        load_config(path)
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": ["../callbacks/evaluation.yaml"]}}))
    assert load_config(path)["trainer"]["callbacks"] == [{"class_path": "framework.callbacks.ContinualEvaluation"}]


# ---------------------------------------------------------------------------- no copied blocks
def _blocks(path: Path) -> Iterator[Tuple[str, Any]]:
    """The trainer, logger and callbacks blocks a file writes out itself (a file name is a reference, not a block)."""
    config = yaml.safe_load(path.read_text()) or {}
    folder = path.relative_to(EXPERIMENTS).parts[0]
    if folder in ("callbacks", "logger"):  # a callback or logger, or a list of them
        items = config if isinstance(config, list) else [config]
        for item in items:
            if isinstance(item, dict):
                yield folder.rstrip("s"), item
        return
    trainer = dict(config["trainer"]) if isinstance(config.get("trainer"), dict) else {}
    trainer.update({key.split(".", 1)[1]: value for key, value in config.items() if str(key).startswith("trainer.")})
    if not trainer:
        return
    yield "trainer", trainer
    for key, kind in (("logger", "logger"), ("callbacks", "callback")):
        value = trainer.get(key)
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and any(isinstance(item, dict) for item in value):
            yield f"trainer.{key}", value
        for item in items:
            if isinstance(item, dict):
                yield kind, item


def copied_blocks(paths: List[Path]) -> List[str]:
    """``"<kind> in a.yaml, b.yaml: <block>"`` for each block written out, to the letter, in more than one file."""
    seen: Dict[Tuple[str, str], List[str]] = defaultdict(list)
    for path in paths:
        for kind, block in _blocks(path):
            key = (kind, json.dumps(block, sort_keys=True))
            if _rel(path) not in seen[key]:
                seen[key].append(_rel(path))
    return [f"{kind} in {', '.join(files)}: {block}" for (kind, block), files in seen.items() if len(files) > 1]


def test_no_block_is_copied_between_experiment_files():
    files = sorted(EXPERIMENTS.rglob("*.yaml"))
    assert copied_blocks(files) == [], "name the shared file (experiments/callbacks/...) instead of copying the block"


def test_the_copy_check_finds_a_copied_callback(tmp_path, monkeypatch):
    shipped = (EXPERIMENTS / "callbacks" / "evaluation.yaml").read_text()
    monkeypatch.setattr(f"{__name__}.EXPERIMENTS", tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "callbacks").mkdir()
    (tmp_path / "callbacks" / "evaluation.yaml").write_text(shipped)
    own = {"default_root_dir": "runs/a/x", "callbacks": ["../callbacks/evaluation.yaml"]}
    (tmp_path / "a" / "x.yaml").write_text(yaml.safe_dump({"trainer": own}))
    assert copied_blocks(sorted(tmp_path.rglob("*.yaml"))) == []
    copied = {"default_root_dir": "runs/a/y", "callbacks": [{"class_path": "framework.callbacks.ContinualEvaluation", "init_args": {"split": "test"}}]}
    (tmp_path / "a" / "y.yaml").write_text(yaml.safe_dump({"trainer": copied}))
    (found,) = copied_blocks(sorted(tmp_path.rglob("*.yaml")))
    assert found.startswith("callback in ") and "a/y.yaml" in found and "callbacks/evaluation.yaml" in found


# ---------------------------------------------------------------------------- per-experiment values
def test_each_experiment_logs_into_its_own_run_folder():
    roots: Dict[str, Path] = {}
    for path in _experiments():
        trainer = load_config(path)["trainer"]
        root = trainer["default_root_dir"]
        fill_placeholders(trainer, root)  # as medcl does before it builds the loggers
        assert root.startswith("runs/"), path
        assert root not in roots, f"{path} and {roots.get(root)} share the run folder {root}"
        roots[root] = path
        for logger in trainer.get("logger") or []:
            args, kind = logger["init_args"], logger["class_path"].rsplit(".", 1)[-1]
            if kind == "CSVLogger":  # <save_dir>/<name>/version_<N> is the run folder's root
                assert f"{args['save_dir']}/{args['name']}" == root, (path, args)
            elif kind == "WandbLogger":
                assert args["save_dir"] == root and args["name"] == Path(root).name and args["offline"] is True, (path, args)
                assert args["project"] == "medcl" and args["group"] == Path(root).parent.name, (path, args)
            else:
                pytest.fail(f"{path}: a logger of kind {kind}: say here where it writes")
