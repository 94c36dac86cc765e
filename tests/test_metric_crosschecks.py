"""MedCL's metrics against peer libraries (and independent definitions) on the same scores.

* ACC / AUC of a classification task (the head's torchmetrics collection, fed through
  ``head.metric_inputs`` as the paradigms do) against the official ``medmnist`` ``Evaluator``,
  reading the same official-format ``.npz`` file.
* The C-index (``framework.metrics.survival.ConcordanceIndex``) against ``lifelines``.
* BWT and forgetting (``framework.metrics.continual.summarize``) against straightforward
  re-implementations of Lopez-Paz & Ranzato (2017) and Chaudhry et al. (2018), and against
  Avalanche's metric classes where ``avalanche-lib`` is installed.

Every comparison is paired with a deliberately wrong input (permuted rows, swapped columns,
flipped sign) that must change the result, so no assertion can pass vacuously.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from conftest import DEMO_DIR, SHARED_MEDMNIST
from data_modules.medmnist import MedMNISTDataModule
from framework.heads.registry import build_head
from framework.metrics.continual import summarize
from framework.metrics.survival import ConcordanceIndex

medmnist_evaluator = pytest.importorskip("medmnist.evaluator")
lifelines_utils = pytest.importorskip("lifelines.utils")

TOL = 1e-6  # torchmetrics returns float32; medmnist/sklearn compute in float64

DATASETS = [
    pytest.param("bloodmnist", DEMO_DIR, id="bloodmnist-demo"),  # 8 classes, multi-class, 600 test images
    pytest.param("organamnist", DEMO_DIR, id="organamnist-demo"),  # 11 classes, grayscale
    pytest.param("pneumoniamnist", SHARED_MEDMNIST, id="pneumoniamnist"),  # binary-class in medmnist
    pytest.param("retinamnist", SHARED_MEDMNIST, id="retinamnist"),  # ordinal-regression in medmnist
]


# ------------------------------------------------------------------ helpers: classification
@functools.lru_cache(maxsize=None)
def _data_module(flag: str, root: Path) -> MedMNISTDataModule:
    dm = MedMNISTDataModule(flag, data_dir=str(root), train_subset=256)  # the test split stays whole
    dm.setup("fit")
    return dm


def _require(flag: str, root: Path) -> MedMNISTDataModule:
    if not (Path(root) / f"{flag}.npz").is_file():
        pytest.skip(f"{Path(root) / flag}.npz is absent (real MedMNIST files live in ../shared/data/medmnist)")
    return _data_module(flag, Path(root))


def _medcl_metrics(head, batches) -> dict:
    """MedCL's numbers, computed exactly as ``BaseParadigm`` does: ``make_metrics()`` updated per
    batch with ``head.metric_inputs(outputs, target)``, computed once."""
    metrics = head.make_metrics()
    for outputs, target in batches:
        metrics.update(**head.metric_inputs(outputs, target))
    return {k: float(v) for k, v in metrics.compute().items()}


def _batches(outputs: torch.Tensor, target: torch.Tensor, size: int = 128):
    return [(outputs[i : i + size], target[i : i + size]) for i in range(0, len(target), size)]


def _evaluate(flag: str, root: Path, scores: np.ndarray):
    """The official evaluator on the official file: ``Evaluator(flag, split, root=...)`` opens
    ``<root>/<flag>.npz`` (28 px: no size suffix) and ``evaluate`` returns ``Metrics(AUC, ACC)``."""
    return medmnist_evaluator.Evaluator(flag, "test", root=str(root)).evaluate(scores)


def _dirichlet_scores(labels: np.ndarray, num_classes: int, seed: int = 0) -> np.ndarray:
    """Random Dirichlet probabilities, informative about the label (alpha 3 on the true class,
    1 elsewhere) so a wrong pairing of scores and labels moves ACC and AUC far from their values."""
    rng = np.random.default_rng(seed)
    alpha = 1.0 + 2.0 * np.eye(num_classes)[labels]
    return np.stack([rng.dirichlet(a) for a in alpha])


class _CachedTower:
    """Stands in for the backbone while the head alone is trained: ``ClassificationHead.forward``
    with learned class embeddings reads only ``encode_image``, whose result is computed once."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        self.embeddings = embeddings

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.embeddings


@functools.lru_cache(maxsize=None)
def _model_outputs(flag: str, root: Path):
    """Logits of a tiny MedCL model on every test image of the file, in eval batches of 128.

    The model is ``MedCLModel`` with the ``medcl-vit-tiny`` CLIP tower and the task added from the
    data module's spec; 30 SGD steps fit the head's class embeddings (initialised from the prompts)
    on 256 training images embedded once by the frozen tower, so predictions are not one constant
    class.  The test outputs come from the real path, ``model(images, task)``.
    """
    from framework.model import MedCLModel

    dm = _data_module(flag, root)
    spec = dm.task_spec
    torch.manual_seed(0)
    model = MedCLModel(backbone={"model_name": "medcl-vit-tiny"}, head_args={"classification": {"learn_class_embeddings": True}})
    head = model.add_task(spec)
    model.eval()
    train = dm.dataset("train")
    images = torch.stack([train[i]["image"] for i in range(len(train))])
    with torch.no_grad():
        tower = _CachedTower(model.backbone.encode_image(images, normalize=True))
    optimizer = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)
    for _ in range(30):
        loss = head.loss(head(tower, images), train.targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = dm.dataset("test")
    outputs = []
    with torch.no_grad():
        for start in range(0, len(test), 128):
            batch = torch.stack([test[i]["image"] for i in range(start, min(start + 128, len(test)))])
            outputs.append(model(batch, spec.name))
    return head, torch.cat(outputs), test.targets


def _check_against_medmnist(flag, root, head, outputs, target, probabilities):
    """Assert MedCL == medmnist on ``probabilities`` (= what MedCL scores from ``outputs``), and that
    wrong scores (rows permuted / classes shifted) move both away from the right numbers."""
    labels = target.numpy()
    official = _evaluate(flag, root, probabilities)
    ours = _medcl_metrics(head, _batches(outputs, target))
    assert ours["acc"] == pytest.approx(official.ACC, abs=TOL)
    assert ours["auroc"] == pytest.approx(official.AUC, abs=TOL)
    assert ours["balanced_acc"] == pytest.approx(balanced_accuracy_score(labels, probabilities.argmax(1)), abs=TOL)

    # sensitivity: scores of other samples (rows permuted) lose the AUC, a class shift the ACC
    perm = np.random.default_rng(1).permutation(len(labels))
    shuffled = _medcl_metrics(head, _batches(outputs[torch.from_numpy(perm)], target))
    assert abs(shuffled["auroc"] - official.AUC) > 0.02
    assert shuffled["auroc"] == pytest.approx(_evaluate(flag, root, probabilities[perm]).AUC, abs=TOL)
    shifted = _medcl_metrics(head, _batches(outputs.roll(1, dims=1), target))
    assert abs(shifted["acc"] - official.ACC) > 0.02
    assert shifted["acc"] == pytest.approx(_evaluate(flag, root, np.roll(probabilities, 1, axis=1)).ACC, abs=TOL)
    return official


# ------------------------------------------------------------------ classification vs medmnist
@pytest.mark.parametrize("flag, root", DATASETS)
def test_acc_auc_match_medmnist_evaluator_on_random_dirichlet_scores(flag, root):
    """Same probability matrix (N x C, float64) to both: MedCL's ``acc`` (torchmetrics micro
    accuracy of the argmax) equals medmnist's ACC and its ``auroc`` (torchmetrics macro one-vs-rest
    AUROC) equals medmnist's AUC within 1e-6, for every task type medmnist knows here:

    * multi-class (Blood, OrganA): medmnist's ACC is the argmax accuracy, its AUC the mean over
      classes of ``roc_auc_score(y == c, score[:, c])``: the same definition.
    * binary-class (Pneumonia): medmnist scores column ``-1`` only (``score[:, 1] > 0.5`` for ACC,
      ``roc_auc_score(y, score[:, 1])`` for AUC).  MedCL's two-class macro AUROC averages the AUCs of
      both columns; for probabilities (rows summing to 1) column 0 ranks exactly like ``-column 1``,
      so both halves equal the same AUC, and the argmax equals ``p1 > 0.5`` (a row at exactly 0.5
      goes to class 0 in both).
    * ordinal-regression (Retina): medmnist scores it exactly like multi-class (argmax ACC,
      one-vs-rest macro AUC); the ordering of the grades is not used, so MedCL's plain
      classification metrics give the same numbers.
    """
    dm = _require(flag, root)
    head = build_head(dm.task_spec, embed_dim=8)
    target = dm.dataset("test").targets
    info_task = medmnist_evaluator.INFO[flag]["task"]
    evaluator = medmnist_evaluator.Evaluator(flag, "test", root=str(root))
    assert np.array_equal(evaluator.labels.reshape(-1), target.numpy())  # same file, same order
    p = _dirichlet_scores(target.numpy(), dm.task_spec.num_classes)
    # the head's outputs are logits: log-probabilities, whose softmax (what MedCL scores) is p
    official = _check_against_medmnist(flag, root, head, torch.from_numpy(np.log(p)), target, p)
    assert 0.3 < official.ACC < 0.95 and 0.6 < official.AUC < 0.99  # informative, not saturated

    y = target.numpy()
    if info_task == "binary-class":
        assert official.AUC == pytest.approx(roc_auc_score(y, p[:, 1]), abs=1e-12)  # the last column is the positive class
        assert official.ACC == pytest.approx(np.mean((p[:, 1] > 0.5) == y), abs=1e-12)
        swapped = _medcl_metrics(head, [(torch.from_numpy(np.log(p[:, ::-1].copy())), target)])
        assert swapped["auroc"] == pytest.approx(1.0 - official.AUC, abs=TOL)  # MedCL's class 1 is medmnist's positive
    elif info_task == "ordinal-regression":
        gauc, gacc = medmnist_evaluator.getAUC, medmnist_evaluator.getACC
        assert official.AUC == gauc(evaluator.labels, p, "multi-class")
        assert official.ACC == gacc(evaluator.labels, p, "multi-class")
    else:
        assert info_task == "multi-class"


@pytest.mark.parametrize("flag, root", DATASETS)
def test_acc_auc_match_medmnist_evaluator_on_tiny_model_outputs(flag, root):
    """Real images through a tiny MedCL model: MedCL's metrics receive the head's raw logits through
    ``metric_inputs`` (torchmetrics applies the softmax itself, see below), medmnist receives
    ``softmax(logits)``; both agree within 1e-6.  (Binary ACC: MedCL takes the argmax of the logits,
    medmnist ``softmax(logits)[:, 1] > 0.5``; they could only differ for a row whose float32 softmax
    rounds to exactly 0.5 with unequal logits.)"""
    _require(flag, root)
    head, logits, target = _model_outputs(flag, Path(root))
    assert logits.dtype == torch.float32 and logits.shape == (len(target), head.spec.num_classes)
    assert len(torch.unique(logits.argmax(1))) > 1  # not a constant prediction
    probabilities = logits.softmax(dim=1).double().numpy()
    _check_against_medmnist(flag, root, head, logits, target, probabilities)


# Found by this cross-check: ClassificationHead.metric_inputs used to pass raw logits, and torchmetrics
# softmaxes a batch only when some value lies outside [0, 1] (a batch of logits inside [0, 1] was ranked
# as probabilities: AUROC 0.875 instead of 0.9167 here).  The head now passes softmax probabilities.
def test_auroc_does_not_depend_on_a_softmax_invariant_shift_of_the_logits():
    from framework.core.specs import TaskSpec

    head = build_head(TaskSpec(name="t", kind="classification", class_names=["a", "b", "c"]), embed_dim=8)
    logits = torch.tensor([[0.9, 0.0, 0.8], [0.5, 0.1, 0.0], [0.2, 0.6, 0.0], [0.1, 0.0, 0.3], [0.0, 0.5, 0.9], [0.6, 0.3, 0.2]])
    target = torch.tensor([0, 0, 1, 2, 2, 1])
    p = logits.softmax(1).numpy()
    official = np.mean([roc_auc_score(target.numpy() == k, p[:, k]) for k in range(3)])  # 0.9167 (medmnist's AUC)
    assert _medcl_metrics(head, [(logits + 5.0, target)])["auroc"] == pytest.approx(official, abs=TOL)  # softmaxed: right
    assert _medcl_metrics(head, [(logits, target)])["auroc"] == pytest.approx(official, abs=TOL)  # was 0.875 with raw logits


# ------------------------------------------------------------------ C-index vs lifelines
def _medcl_c_index(risk: np.ndarray, time: np.ndarray, event: np.ndarray, chunks: int = 1) -> float:
    metric = ConcordanceIndex()
    target = torch.from_numpy(np.stack([time, event], axis=1).astype(np.float32))
    risk_t = torch.from_numpy(np.asarray(risk, dtype=np.float32))
    for index in np.array_split(np.arange(len(risk)), chunks):
        metric.update(risk_t[index], target[index])
    return float(metric.compute())


def _lifelines_c_index(risk, time, event) -> float:
    """lifelines expects *predicted times* (higher = later event); MedCL's risk is the opposite."""
    return lifelines_utils.concordance_index(time, -np.asarray(risk, dtype=np.float64), event)


def _survival_sample(n, seed, risk_decimals=None, time_decimals=None, censored=0.3, admin=None):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n).astype(np.float32)
    time = rng.exponential(scale=np.exp(-risk.astype(np.float64)))
    event = (rng.random(n) >= censored).astype(np.float64)
    if admin is not None:  # administrative censoring: many patients tied at the end of follow-up
        event[time >= admin] = 0.0
        time = np.minimum(time, admin)
    if risk_decimals is not None:
        risk = np.round(risk, risk_decimals).astype(np.float32)
    if time_decimals is not None:
        time = np.ceil(time * 10**time_decimals) / 10**time_decimals
    return risk, time.astype(np.float32).astype(np.float64), event


SURVIVAL_CASES = {
    "ties-in-risk": dict(risk_decimals=0),  # about 7 distinct risk values
    "ties-in-time": dict(time_decimals=0),  # integer times: events tied with events and with censorings
    "ties-in-both": dict(risk_decimals=1, time_decimals=1),
    "heavy-censoring": dict(censored=0.9),
    "heavy-censoring-with-ties": dict(censored=0.85, risk_decimals=1, time_decimals=0),
    "administrative-censoring": dict(admin=0.5),  # a block censored at exactly t = 0.5
}


@pytest.mark.parametrize("case", list(SURVIVAL_CASES))
def test_c_index_matches_lifelines_with_ties_and_censoring(case):
    """Harrell's C with lifelines' conventions, which torchsurv (behind MedCL) shares: a pair is
    comparable when the earlier time is an event; two events at the same time are not comparable,
    an event and a censoring at the same time are (the event counts as earlier); tied risks count
    1/2.  MedCL's risk is higher = earlier, so lifelines gets ``-risk``."""
    risk, time, event = _survival_sample(400, seed=len(case), **SURVIVAL_CASES[case])
    assert len(np.unique(risk)) < 400 or len(np.unique(time)) < 400 or event.mean() < 0.2
    expected = _lifelines_c_index(risk, time, event)
    assert _medcl_c_index(risk, time, event) == pytest.approx(expected, abs=1e-6)
    assert 0.6 < expected < 0.9
    # sign convention: lifelines' own reading of the risk (as if it were a time) is the complement,
    # also with ties (a tied pair is 1/2 either way), and is what MedCL gives for -risk
    flipped = lifelines_utils.concordance_index(time, risk, event)
    assert flipped == pytest.approx(1.0 - expected, abs=1e-9)
    assert _medcl_c_index(-risk, time, event) == pytest.approx(flipped, abs=1e-6)
    assert abs(_medcl_c_index(risk, time, event) - flipped) > 0.1


def test_c_index_sign_convention_by_hand():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.ones(4)
    earliest_highest = np.array([4.0, 3.0, 2.0, 1.0])  # MedCL: higher risk = earlier event
    assert _medcl_c_index(earliest_highest, time, event) == 1.0
    assert _lifelines_c_index(earliest_highest, time, event) == 1.0
    assert lifelines_utils.concordance_index(time, earliest_highest, event) == 0.0  # lifelines reads scores as times
    assert _medcl_c_index(-earliest_highest, time, event) == 0.0


def test_c_index_several_updates_equal_one_update_and_sample_order_does_not_matter():
    risk, time, event = _survival_sample(500, seed=7, risk_decimals=1, time_decimals=0, censored=0.8)
    whole = _medcl_c_index(risk, time, event, chunks=1)
    assert _medcl_c_index(risk, time, event, chunks=13) == whole  # 13 updates, concatenated states
    metric = ConcordanceIndex()  # uneven batches, one of a single sample, in another order
    order = np.random.default_rng(0).permutation(500)
    target = torch.from_numpy(np.stack([time, event], 1)[order].astype(np.float32))
    r = torch.from_numpy(risk[order])
    for lo, hi in [(0, 1), (1, 200), (200, 203), (203, 500)]:
        metric.update(r[lo:hi], target[lo:hi])
    assert float(metric.compute()) == pytest.approx(whole, abs=1e-9)
    assert whole == pytest.approx(_lifelines_c_index(risk, time, event), abs=1e-6)
    # a per-batch average (what a plain torchmetrics mean would do) is different
    per_batch = np.mean([_lifelines_c_index(risk[i], time[i], event[i]) for i in np.array_split(np.arange(500), 5)])
    assert abs(per_batch - whole) > 1e-4


def test_c_index_near_ties_are_ties_documented_difference():
    """Documented difference: torchsurv (hence MedCL) counts risks within ``tied_tol=1e-8`` of each
    other (compared after casting to float32) as tied; lifelines orders them.  Model outputs are
    float32, so only float64 inputs or float32 risks closer than 1e-8 are affected."""
    time = np.array([1.0, 2.0, 3.0])
    event = np.ones(3)
    risk = torch.tensor([1.0, 1.0 + 1e-9, 0.5], dtype=torch.float64)  # distinct in float64 only
    metric = ConcordanceIndex()
    metric.update(risk, torch.tensor(np.stack([time, event], 1)))
    assert float(metric.compute()) == pytest.approx(2.5 / 3)  # (1/2 + 1 + 1) / 3
    assert _lifelines_c_index(risk.numpy(), time, event) == pytest.approx(2.0 / 3)  # pair (0, 1) discordant
    assert _lifelines_c_index(risk.float().double().numpy(), time, event) == pytest.approx(2.5 / 3)  # float32 view: tie


# Found by this cross-check: with events but no comparable pair, torchsurv raised ("No comparable pairs,
# denominator is 0.") and one sample raised a TypeError; the C-index is undefined there, so MedCL returns NaN.
@pytest.mark.parametrize("time, event", [([1.0, 2.0], [0.0, 1.0]), ([3.0], [1.0])], ids=["event-after-censoring", "one-sample"])
def test_c_index_without_comparable_pairs_is_nan(time, event):
    with pytest.raises(ZeroDivisionError):  # lifelines refuses: "No admissable pairs in the dataset."
        _lifelines_c_index(np.zeros(len(time)), np.array(time), np.array(event))
    assert math.isnan(_medcl_c_index(np.linspace(0.3, 0.1, len(time)), np.array(time), np.array(event)))


# ------------------------------------------------------------------ BWT / forgetting
def _gem_bwt(R: np.ndarray) -> float:
    """Lopez-Paz & Ranzato (2017): BWT = 1/(T-1) sum_{j<T-1} R[T-1, j] - R[j, j]."""
    T = len(R)
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


def _chaudhry_forgetting(R: np.ndarray, from_learned: bool = True) -> float:
    """Chaudhry et al. (2018): F = 1/(T-1) sum_{j<T-1} max_{l<T-1} R[l, j] - R[T-1, j].

    ``from_learned=True`` takes the max over ``j <= l < T-1`` only (rows after task j was trained);
    ``False`` is the formula read literally (all earlier rows, incl. zero-shot cells before training)."""
    T = len(R)
    return float(np.mean([np.nanmax(R[(j if from_learned else 0) : T - 1, j]) - R[T - 1, j] for j in range(T - 1)]))


def _random_matrix(T: int, seed: int, upper: str) -> np.ndarray:
    R = np.random.default_rng(seed).uniform(0.05, 0.95, size=(T, T))
    if upper == "nan":  # no head before the task is trained
        R[np.triu_indices(T, 1)] = np.nan
    return R  # upper == "zero-shot": cells scored before training (FWT only)


HAND_MATRICES = {
    # task 0 peaks after exp 1 (0.8), above its just-learned 0.6: max-based forgetting 0.3, not 0.1
    "peak-after-learning": [[0.6, None, None], [0.8, 0.7, None], [0.5, 0.6, 0.9]],
    # both old tasks improve: negative forgetting, positive BWT
    "improvement": [[0.5, None, None], [0.7, 0.6, None], [0.9, 0.8, 0.4]],
    # a dip then a recovery: just-learned minus final = 0, but the peak is later
    "dip-and-peak": [[0.7, None, None, None], [0.4, 0.6, None, None], [0.9, 0.65, 0.5, None], [0.7, 0.6, 0.55, 0.8]],
    "two-tasks": [[0.9, None], [0.6, 0.8]],
}


def _matrices():
    cases = [pytest.param(np.array(m, dtype=float), id=name) for name, m in HAND_MATRICES.items()]
    for T, seed in [(2, 0), (3, 1), (5, 2), (8, 3)]:
        for upper in ("nan", "zero-shot"):
            cases.append(pytest.param(_random_matrix(T, seed, upper), id=f"random-T{T}-{upper}"))
    return cases


def _cells(R: np.ndarray):
    return [[None if math.isnan(v) else float(v) for v in row] for row in R]


@pytest.mark.parametrize("R", _matrices())
def test_bwt_and_forgetting_match_independent_definitions(R):
    """MedCL's BWT is GEM's; its forgetting is Chaudhry's, the max taken over the rows after the task
    was trained (cells scored zero-shot before training never count; on a matrix whose upper
    triangle is empty this is the literal formula)."""
    tasks = [f"t{j}" for j in range(len(R))]
    out = summarize(_cells(R), tasks)
    assert out["backward_transfer"] == pytest.approx(_gem_bwt(R), abs=1e-12)
    assert out["forgetting"] == pytest.approx(_chaudhry_forgetting(R), abs=1e-12)
    if np.isnan(R[np.triu_indices(len(R), 1)]).all():
        assert out["forgetting"] == pytest.approx(_chaudhry_forgetting(R, from_learned=False), abs=1e-12)
    # sensitivity: 0.1 less on task 0 at the end moves both by 0.1 / (T - 1), the number of old tasks
    worse = R.copy()
    worse[-1, 0] -= 0.1
    changed = summarize(_cells(worse), tasks)
    assert changed["backward_transfer"] == pytest.approx(out["backward_transfer"] - 0.1 / (len(R) - 1), abs=1e-12)
    assert changed["forgetting"] == pytest.approx(out["forgetting"] + 0.1 / (len(R) - 1), abs=1e-12)


def test_max_based_forgetting_differs_from_just_learned_minus_final():
    R = np.array(HAND_MATRICES["peak-after-learning"], dtype=float)
    out = summarize(_cells(R), ["a", "b", "c"])
    assert out["forgetting_per_task"]["c"] is None  # the last task cannot be forgotten yet
    assert out["forgetting_per_task"]["a"] == pytest.approx(0.3) and out["forgetting_per_task"]["b"] == pytest.approx(0.1)
    assert out["forgetting"] == pytest.approx(0.2)
    assert out["backward_transfer"] == pytest.approx(-0.1)  # = -(just-learned minus final) = -(0.1 + 0.1) / 2
    zero_shot = np.array([[0.6, 0.9, 0.1], [0.5, 0.4, 0.2], [0.4, 0.3, 0.8]])  # task b scored 0.9 before it was trained
    out = summarize(_cells(zero_shot), ["a", "b", "c"])
    assert out["forgetting_per_task"]["b"] == pytest.approx(0.1)  # 0.4 - 0.3, not 0.9 - 0.3
    assert _chaudhry_forgetting(zero_shot, from_learned=False) == pytest.approx((0.2 + 0.6) / 2)
    assert out["forgetting"] == pytest.approx((0.2 + 0.1) / 2)


def _avalanche_stream_metric(base, R: np.ndarray) -> float:
    """Drive an Avalanche stream plugin metric through its strategy callbacks as its training loop
    does: train experience i, then evaluate every experience j of the stream, the metric's value
    for (i, j) being R[i][j]; returns the value emitted after the last evaluation."""

    class FromMatrix(base):
        def metric_update(self, strategy):
            pass

        def metric_result(self, strategy):
            return float(R[self.train_exp_id, strategy.experience.current_experience])

    def experience(j):
        return SimpleNamespace(current_experience=j, origin_stream=SimpleNamespace(name="test"), task_labels=[0])

    metric = FromMatrix()
    values = None
    for i in range(len(R)):
        metric.before_training_exp(SimpleNamespace(experience=experience(i), is_eval=False))
        strategy = SimpleNamespace(experience=experience(0), is_eval=True, clock=SimpleNamespace(train_iterations=i))
        metric.before_eval(strategy)
        for j in range(len(R)):
            strategy.experience = experience(j)
            metric.before_eval_exp(strategy)
            metric.after_eval_iteration(strategy)
            metric.after_eval_exp(strategy)
        values = metric.after_eval(strategy)
    return values[0].value, metric.forgetting.result()


@pytest.mark.parametrize("R", _matrices())
def test_bwt_and_forgetting_against_avalanche(R):
    """Avalanche 0.6 (``avalanche.evaluation.metrics.forgetting_bwt``): ``StreamBWT`` equals MedCL's
    BWT.  ``StreamForgetting`` does NOT equal MedCL's forgetting: Avalanche's forgetting of an
    experience is its value right after training on it minus its last value (``Forgetting.initial``
    is set when the evaluated experience is the one just trained, ``last`` at every other
    evaluation), i.e. exactly ``-BWT``; MedCL (Chaudhry et al. 2018) uses the best value since
    training, so MedCL's forgetting >= Avalanche's, per task and on average, with equality only
    where no later row beats the just-learned one.  Both ignore cells scored before training."""
    forgetting_bwt = pytest.importorskip("avalanche.evaluation.metrics.forgetting_bwt")
    tasks = [f"t{j}" for j in range(len(R))]
    out = summarize(_cells(R), tasks)
    bwt, _ = _avalanche_stream_metric(forgetting_bwt.StreamBWT, R)
    forgetting, per_task = _avalanche_stream_metric(forgetting_bwt.StreamForgetting, R)
    assert bwt == pytest.approx(out["backward_transfer"], abs=1e-12)
    assert forgetting == pytest.approx(-out["backward_transfer"], abs=1e-12)
    assert sorted(per_task) == list(range(len(R) - 1))
    for j, value in per_task.items():
        assert value == pytest.approx(R[j, j] - R[-1, j], abs=1e-12)
        assert out["forgetting_per_task"][tasks[j]] >= value - 1e-12
        peaked_later = np.nanmax(R[j : len(R) - 1, j]) > R[j, j]
        assert (out["forgetting_per_task"][tasks[j]] > value + 1e-12) == peaked_later
    assert out["forgetting"] >= forgetting - 1e-12
