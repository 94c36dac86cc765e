"""EWC and LwF on ContinualModule: validation, penalties, distillation per head kind, a run with
replay, checkpoint round trip, and EWC's effect on the shared backbone."""
import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from conftest import DEMO_DIR
from data_modules import DomainStream, MedMNISTDataModule
from framework.callbacks import ReplayCallback
from framework.heads import build_head
from framework.paradigms import ContinualModule
from framework.strategies import EWC, LwF
from framework.strategies.lwf import distillable
from framework.strategies.regularizer import CHECKPOINT_KEY
from framework.core.specs import TaskSpec

# resumed trainers here do not checkpoint, which Lightning mentions
pytestmark = pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")

TASKS = ["bloodmnist", "organamnist"]  # RGB microscopy, then grayscale CT: LwF distils across them
REGS = {"ewc": {"weight": 10.0, "fisher_batches": 2}, "lwf": {"weight": 1.0, "temperature": 2.0}}


def make_stream(train_subset=32):
    return DomainStream([MedMNISTDataModule(flag, data_dir=str(DEMO_DIR), train_subset=train_subset, val_subset=16, test_subset=16,
                                            batch_size=16) for flag in TASKS])


def make_trainer(root, callbacks=(), epochs=2):
    """Two experiences of one epoch; replay (restored from the checkpoint on resume) as in the original run."""
    callbacks = [ReplayCallback(capacity=64, replay_batch_size=8), *callbacks]
    saving = any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks)
    return pl.Trainer(accelerator="cpu", max_epochs=epochs, reload_dataloaders_every_n_epochs=1, limit_val_batches=0,
                      num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root),
                      logger=pl.loggers.CSVLogger(str(root), name="run"), callbacks=callbacks, enable_checkpointing=saving,
                      deterministic=True)


def checkpointing(root):
    return pl.callbacks.ModelCheckpoint(dirpath=str(root / "ckpts"), filename="{epoch}", save_top_k=-1, save_last=True,
                                        save_on_train_epoch_end=True)


def logged_per_epoch(root):
    """{epoch: metric names with a value} from the CSV logger."""
    (metrics,) = list(Path(root).rglob("metrics.csv"))
    out = {}
    with open(metrics) as fh:
        for row in csv.DictReader(fh):
            if row.get("epoch"):
                out.setdefault(int(row["epoch"]), set()).update(k for k, v in row.items() if v)
    return out


# ---------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "regularizers, fragment",
    [
        ({"si": {}}, r"unknown regulariser 'si'; known: \['ewc', 'lwf'\]"),
        ({"ewc": {"weight": -1.0}}, r"regularizers\.ewc\.weight expected a finite number >= 0, found -1"),
        ({"ewc": {"weight": "big"}}, r"regularizers\.ewc\.weight expected"),
        ({"ewc": {"lambda": 3.0}}, r"regularizers\.ewc\.lambda: unknown option; ewc takes \['fisher_batches', 'weight'\]"),
        ({"ewc": {"fisher_batches": 0}}, r"regularizers\.ewc\.fisher_batches expected an integer >= 1"),
        ({"lwf": {"temperature": 0}}, r"regularizers\.lwf\.temperature expected a finite number > 0"),
        ({"lwf": 2.0}, r"regularizers\.lwf expected a mapping of options"),
        (["ewc"], r"regularizers expected a mapping of regulariser name -> options"),
    ],
)
def test_invalid_regularizers_are_refused_naming_the_field(regularizers, fragment):
    with pytest.raises(ValueError, match=fragment):
        ContinualModule(regularizers=regularizers)


# ---------------------------------------------------------------------------------- unit: EWC and LwF
@pytest.fixture(scope="module")
def stream():
    dm = make_stream()
    dm.setup("fit")
    return dm


@pytest.fixture
def trained_on_blood(stream):
    """A module with the BloodMNIST head and the regularisers' experience-0 state."""
    torch.manual_seed(0)
    module = ContinualModule(regularizers=REGS)
    module.add_task(stream.domain("bloodmnist").task_spec)
    module.eval()  # no dropout: teacher and student compute the same function
    trainer = SimpleNamespace(datamodule=stream)
    for regularizer in module.regularizers.values():
        regularizer.after_experience(trainer, module, 0, ["bloodmnist"])
    return module


def shared_parameter(module):
    return module.model.backbone.clip.visual.transformer.resblocks[0].mlp.c_fc.weight


def test_ewc_fisher_is_non_negative_and_covers_exactly_the_trained_parameters(trained_on_blood):
    module = trained_on_blood
    ewc = module.regularizers["ewc"]
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert set(ewc.fisher) == set(ewc.anchor) == trainable
    assert not any(n.startswith("backbone.clip.transformer.") for n in ewc.fisher)  # locked text tower: no entry
    assert all(bool((f >= 0).all()) for f in ewc.fisher.values())
    assert float(ewc.fisher["backbone.clip.visual.conv1.weight"].sum()) > 0
    assert float(ewc.fisher["heads.bloodmnist.logit_scale"].sum()) > 0  # the just-trained head is covered too
    assert ewc.experiences == [0]


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_with_distance_and_weight(trained_on_blood):
    module = trained_on_blood
    ewc = module.regularizers["ewc"]
    assert float(ewc.penalty(module, {}).detach()) == 0.0
    with torch.no_grad():
        shared_parameter(module).add_(0.05)
    penalty = ewc.penalty(module, {})
    penalty = penalty.detach() if penalty.requires_grad else pytest.fail("the EWC penalty must carry gradients")
    assert float(penalty) > 0
    name = "backbone.clip.visual.transformer.resblocks.0.mlp.c_fc.weight"
    expected = 10.0 / 2 * float((ewc.fisher[name] * 0.05**2).sum())
    assert float(penalty) == pytest.approx(expected, rel=1e-3)
    double = EWC(weight=20.0)
    double.load_state_dict(ewc.state_dict(), module)
    assert float(double.penalty(module, {}).detach()) == pytest.approx(2 * float(penalty), rel=1e-6)


def test_ewc_ignores_parameters_created_after_anchoring(trained_on_blood, stream):
    module = trained_on_blood
    module.add_task(stream.domain("organamnist").task_spec)
    with torch.no_grad():
        for p in module.model.heads["organamnist"].parameters():
            p.add_(1.0)
    assert float(module.regularizers["ewc"].penalty(module, {}).detach()) == 0.0


def test_lwf_penalty_is_zero_for_an_unchanged_model_and_positive_after_perturbation(trained_on_blood, stream, monkeypatch):
    module = trained_on_blood
    lwf = module.regularizers["lwf"]
    teacher = lwf.teacher
    assert teacher.tasks == ["bloodmnist"] and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in module.parameters()}  # a copy, not a view
    assert not any("teacher" in k for k in module.state_dict())  # not part of the module's weights

    module.add_task(stream.domain("organamnist").task_spec)
    monkeypatch.setattr(module, "tasks_for_epoch", lambda epoch: ["organamnist"])  # experience 1
    organ = next(iter(stream.domain("organamnist").loader("train", keyed=False)))
    blood = next(iter(stream.domain("bloodmnist").loader("train", keyed=False)))
    batch = {"organamnist": organ}
    unchanged = float(lwf.penalty(module, batch).detach())
    with torch.no_grad():
        torch.manual_seed(1)
        for p in module.model.backbone.clip.visual.parameters():
            p.add_(0.2 * torch.randn_like(p))
    penalty = lwf.penalty(module, batch)
    assert unchanged == pytest.approx(0.0, abs=1e-6)
    assert penalty.requires_grad and float(penalty.detach()) > 1e-4
    # replayed sub-batches of old tasks are not distilled: only the current task's images count
    assert float(lwf.penalty(module, {**batch, "bloodmnist": blood}).detach()) == pytest.approx(float(penalty.detach()), rel=1e-6)
    penalty.backward()
    assert shared_parameter(module).grad is not None and teacher.heads["bloodmnist"].logit_scale.grad is None


def test_lwf_teacher_is_rebuilt_from_its_state_and_loaded_strictly(trained_on_blood):
    module = trained_on_blood
    state = module.regularizers["lwf"].state_dict()
    restored = LwF(weight=0.5)
    restored.load_state_dict(state, module)
    assert restored.teacher.tasks == ["bloodmnist"] and restored.teacher is not module.regularizers["lwf"].teacher
    assert_same_tensors(restored.state_dict()["teacher"]["state_dict"], state["teacher"]["state_dict"])
    broken = {"teacher": {**state["teacher"], "state_dict": dict(list(state["teacher"]["state_dict"].items())[1:])}}
    with pytest.raises(ValueError, match=r"'callbacks\.LwF\.teacher\.state_dict': the weights do not fit"):
        LwF().load_state_dict(broken, module)  # a strategy in trainer.callbacks
    with pytest.raises(ValueError, match=r"'medcl_regularizers\.lwf\.teacher\.state_dict': the weights do not fit"):
        LwF(where="regularizers.lwf").load_state_dict(broken, module)  # built from the deprecated model option


def test_lwf_only_distils_heads_that_can_read_the_images():
    spec = lambda **kw: TaskSpec(name="t", kind="classification", class_names=("a", "b"), **kw)  # noqa: E731
    assert distillable(spec(in_channels=1), spec(in_channels=3))  # grayscale is expanded to RGB
    assert not distillable(spec(spatial_dims=3, in_channels=1), spec(in_channels=1))  # 2D images vs volumes
    assert not distillable(spec(in_channels=4, modality="mri"), spec(in_channels=3))  # own patch embedding
    assert distillable(spec(in_channels=4, modality="mri"), spec(in_channels=4, modality="pet"))


# ---------------------------------------------------------------------------------- distillation per head kind
HEADS = {
    "classification": (TaskSpec(name="c", kind="classification", class_names=("a", "b", "c")), {}, (4, 3)),
    "multilabel": (TaskSpec(name="m", kind="multilabel", class_names=("a", "b", "c")), {}, (4, 3)),
    "prognosis-cox": (TaskSpec(name="p", kind="prognosis"), {"loss": "cox"}, (4,)),
    "prognosis-mtlr": (TaskSpec(name="q", kind="prognosis", time_bins=(1.0, 2.0, 5.0)), {"loss": "mtlr"}, (4, 3)),
    "segmentation": (TaskSpec(name="s", kind="segmentation", label_names=("x", "y")), {}, (2, 3, 8, 8)),
    "segmentation-3d": (TaskSpec(name="v", kind="segmentation", label_names=("x",), in_channels=1, spatial_dims=3), {}, (2, 2, 3, 8, 8)),
}


@pytest.mark.parametrize("kind", list(HEADS))
def test_distillation_loss_per_head_kind(kind):
    spec, args, shape = HEADS[kind]
    head = build_head(spec, 16, args)
    torch.manual_seed(0)
    teacher = torch.randn(shape)
    assert float(head.distillation_loss(teacher.clone(), teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    student = (teacher + torch.randn(shape)).requires_grad_(True)
    loss = head.distillation_loss(student, teacher, 2.0)
    assert loss.ndim == 0 and float(loss.detach()) > 0
    loss.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="distillation expected student and teacher outputs of one shape"):
        head.distillation_loss(student[:1], teacher, 2.0)


def test_classification_distillation_is_hintons_kl():
    head = build_head(HEADS["classification"][0], 16)
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    t = 3.0
    expected = torch.nn.functional.kl_div(
        torch.log_softmax(student / t, 1), torch.softmax(teacher / t, 1), reduction="batchmean"
    ) * t * t
    assert float(head.distillation_loss(student, teacher, t)) == pytest.approx(float(expected), rel=1e-5)


# ---------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def regularized_run(tmp_path_factory):
    """Two experiences with EWC + LwF + replay, checkpointed after each."""
    root = tmp_path_factory.mktemp("regularized")
    pl.seed_everything(0)
    module = ContinualModule(epochs_per_experience=1, regularizers=REGS)
    trainer = make_trainer(root, [checkpointing(root)])
    trainer.fit(module, datamodule=make_stream())
    return {"root": root, "module": module, "ckpts": root / "ckpts"}


def test_run_with_ewc_lwf_and_replay_logs_penalties_in_the_second_experience(regularized_run):
    logged = logged_per_epoch(regularized_run["root"])
    assert not {"train/ewc", "train/lwf", "train/regularization"} & logged[0]  # nothing to protect yet
    assert {"train/ewc", "train/lwf", "train/regularization", "train/bloodmnist/loss", "train/organamnist/loss"} <= logged[1]
    module = regularized_run["module"]
    assert module.regularizers["ewc"].experiences == [0, 1]
    assert module.regularizers["lwf"].teacher.tasks == TASKS


class Probe(pl.Callback):
    """The regulariser state right after Lightning restored a checkpoint."""

    def on_train_start(self, trainer, pl_module):
        self.start_epoch = trainer.current_epoch
        self.state = {name: r.state_dict() for name, r in pl_module.regularizers.items()}
        teacher = pl_module.regularizers["lwf"].teacher
        self.teacher_tasks = teacher.tasks
        self.teacher_shares_weights = bool({id(p) for p in teacher.parameters()} & {id(p) for p in pl_module.parameters()})
        self.teacher_frozen = not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def assert_same_tensors(a, b):
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_checkpoint_round_trip_restores_fisher_anchor_and_teacher(regularized_run, tmp_path):
    path = regularized_run["ckpts"] / "epoch=0.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors, strings and numbers
    saved = ckpt[CHECKPOINT_KEY]
    assert saved["ewc"]["experiences"] == [0] and saved["ewc"]["fisher"]
    assert [t["name"] for t in saved["lwf"]["teacher"]["tasks"]] == ["bloodmnist"]
    # the teacher is the model at the end of experience 0
    model_weights = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    assert_same_tensors(saved["lwf"]["teacher"]["state_dict"], model_weights)

    pl.seed_everything(0)
    probe = Probe()
    module = ContinualModule(epochs_per_experience=1, regularizers=REGS)
    make_trainer(tmp_path, [probe]).fit(module, datamodule=make_stream(), ckpt_path=str(path))
    assert probe.start_epoch == 1
    assert_same_tensors(probe.state["ewc"]["fisher"], saved["ewc"]["fisher"])
    assert_same_tensors(probe.state["ewc"]["anchor"], saved["ewc"]["anchor"])
    assert probe.state["lwf"]["teacher"]["tasks"] == saved["lwf"]["teacher"]["tasks"]
    assert_same_tensors(probe.state["lwf"]["teacher"]["state_dict"], saved["lwf"]["teacher"]["state_dict"])
    assert probe.teacher_tasks == ["bloodmnist"] and probe.teacher_frozen and not probe.teacher_shares_weights
    assert module.regularizers["lwf"].teacher.tasks == TASKS  # the resumed run went on to experience 1

    # a reload of the final checkpoint rebuilds the final teacher the same way
    last = ContinualModule.load_from_checkpoint(regularized_run["ckpts"] / "last.ckpt", map_location="cpu")
    final = torch.load(regularized_run["ckpts"] / "last.ckpt", map_location="cpu", weights_only=True)[CHECKPOINT_KEY]
    assert_same_tensors(last.regularizers["lwf"].state_dict()["teacher"]["state_dict"], final["lwf"]["teacher"]["state_dict"])
    assert_same_tensors(last.regularizers["ewc"].state_dict()["fisher"], final["ewc"]["fisher"])


def test_a_large_ewc_weight_keeps_the_backbone_closer_to_experience_0(regularized_run, tmp_path):
    """Both runs resume from the same end-of-experience-0 checkpoint; only EWC differs."""
    path = regularized_run["ckpts"] / "epoch=0.ckpt"
    start = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    backbone = [k for k in start if k.startswith("model.backbone.clip.visual.") and start[k].is_floating_point()]

    def drift(regularizers, root):
        pl.seed_everything(0)
        module = ContinualModule(epochs_per_experience=1, regularizers=regularizers)
        make_trainer(root, []).fit(module, datamodule=make_stream(train_subset=64), ckpt_path=str(path))  # 4 steps
        end = module.state_dict()
        return math.sqrt(sum(float(((end[k] - start[k]) ** 2).sum()) for k in backbone))

    free = drift(None, tmp_path / "free")
    # the Fisher of a barely trained tiny model is small (~1e-8 per weight), hence the large weight
    anchored = drift({"ewc": {"weight": 1.0e8}}, tmp_path / "ewc")
    assert free > 0
    assert anchored < 0.7 * free, (anchored, free)
