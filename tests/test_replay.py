"""ReplayBuffer basics and the Replay strategy: old tasks added to the batch, herding at experience end, checkpoints."""
from collections import Counter
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from framework.callbacks import ReplayCallback
from framework.replay import ClassBalancedPolicy, ReplayBuffer, ReservoirPolicy


def stream(buffer, task, n, n_classes=4, channels=3, start=0):
    images = torch.arange(start, start + n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, channels, 2, 2).clone()
    targets = torch.arange(n) % n_classes
    for i in range(0, n, 16):
        buffer.add_batch(task, images[i : i + 16], targets[i : i + 16])


@pytest.mark.parametrize("policy", [ReservoirPolicy, ClassBalancedPolicy])
@pytest.mark.parametrize("capacity", [1, 10, 64])
def test_capacity_is_never_exceeded(policy, capacity):
    buffer = ReplayBuffer(capacity, policy(), seed=0)
    stream(buffer, "a", 100)
    assert len(buffer) == min(capacity, 100)
    stream(buffer, "b", 100)
    assert len(buffer) == capacity


def test_reservoir_keeps_tasks_in_proportion_to_what_was_seen():
    buffer = ReplayBuffer(200, ReservoirPolicy(), seed=0)
    stream(buffer, "a", 1000)
    stream(buffer, "b", 3000)
    counts = buffer.counts()
    assert sum(counts.values()) == 200
    assert 30 <= counts["a"] <= 70  # expectation 50 (1000 / 4000 of the stream)


def test_reservoir_inclusion_is_uniform_over_the_stream():
    hits = Counter()
    for seed in range(40):
        buffer = ReplayBuffer(20, ReservoirPolicy(), seed=seed)
        stream(buffer, "a", 200)
        images, _ = buffer.task_data("a")
        hits.update(int(v) // 50 for v in images[:, 0, 0, 0])  # 4 quarters of the stream
    assert all(150 <= hits[q] <= 250 for q in range(4)), hits  # expectation 200 each


def test_class_balanced_equalises_classes_and_tasks():
    buffer = ReplayBuffer(80, ClassBalancedPolicy(), seed=0)
    # task a: heavily imbalanced (class 0 dominates), 4 classes
    images = torch.zeros(400, 3, 2, 2)
    targets = torch.cat([torch.zeros(340, dtype=torch.long), torch.arange(60) % 3 + 1])
    buffer.add_batch("a", images, targets)
    counts_a = buffer.class_counts("a")
    assert max(counts_a.values()) - min(counts_a.values()) <= 1, counts_a
    stream(buffer, "b", 400, n_classes=4)
    assert buffer.counts() == {"a": 40, "b": 40}
    assert set(buffer.class_counts("b").values()) == {10}


def test_sample_excludes_current_tasks_and_groups_by_task():
    buffer = ReplayBuffer(50, ReservoirPolicy(), seed=0)
    stream(buffer, "a", 30, channels=3)
    stream(buffer, "b", 30, channels=1)
    out = buffer.sample(16, exclude=("b",))
    assert set(out) == {"a"}
    assert out["a"]["image"].shape == (16, 3, 2, 2) and out["a"]["target"].shape == (16,)
    both = buffer.sample(40)
    assert sum(len(v["target"]) for v in both.values()) == 40
    assert buffer.sample(8, exclude=("a", "b")) == {}


@pytest.mark.parametrize("policy", [ReservoirPolicy, ClassBalancedPolicy])
def test_state_dict_round_trip_restores_items_and_randomness(policy):
    buffer = ReplayBuffer(30, policy(), seed=3)
    stream(buffer, "a", 50)
    stream(buffer, "b", 50, channels=1)
    restored = ReplayBuffer(30, policy(), seed=99)
    restored.load_state_dict(buffer.state_dict())

    def contents(b):
        return {t: [x.clone() for x in b.task_data(t)] for t in b.tasks()}

    def same(x, y):
        return x.keys() == y.keys() and all(torch.equal(p, q) for t in x for p, q in zip(x[t], y[t]))

    assert same(contents(restored), contents(buffer))
    # same generator and policy state -> same future decisions
    stream(buffer, "c", 40)
    stream(restored, "c", 40)
    assert same(contents(restored), contents(buffer))


def test_state_dict_survives_weights_only_torch_load(tmp_path):
    buffer = ReplayBuffer(10, ClassBalancedPolicy(), seed=0)
    stream(buffer, "a", 20)
    torch.save(buffer.state_dict(), tmp_path / "b.pt")
    state = torch.load(tmp_path / "b.pt", weights_only=True)
    other = ReplayBuffer(10, ClassBalancedPolicy())
    other.load_state_dict(state)
    assert len(other) == 10


def test_loading_a_different_policy_or_capacity_is_refused():
    buffer = ReplayBuffer(10, ReservoirPolicy())
    stream(buffer, "a", 20)
    with pytest.raises(ValueError, match="field 'policy'"):
        ReplayBuffer(10, ClassBalancedPolicy()).load_state_dict(buffer.state_dict())
    with pytest.raises(ValueError, match="field 'capacity'"):
        ReplayBuffer(11, ReservoirPolicy()).load_state_dict(buffer.state_dict())


# ---------------------------------------------------------------------- the callback
def test_replay_strategy_adds_old_tasks_to_the_batch():
    cb = ReplayCallback(capacity=50, policy="reservoir", replay_batch_size=8)
    first = {"a": {"image": torch.rand(16, 3, 4, 4), "target": torch.randint(0, 3, (16,))}}
    first = cb.before_forward(None, None, first)
    assert set(first) == {"a"}  # nothing older to replay yet
    given = {"b": {"image": torch.rand(16, 1, 4, 4), "target": torch.randint(0, 5, (16,))}}
    second = cb.before_forward(None, None, given)
    assert set(second) == {"a", "b"} and set(given) == {"b"}  # a new batch: Lightning's stays as it came
    assert second["a"]["image"].shape == (8, 3, 4, 4)
    assert len(cb.buffer) == 32


def test_callback_replays_uint8_exemplars_as_uint8():
    cb = ReplayCallback(capacity=50, replay_batch_size=4)
    cb.before_forward(None, None, {"a": {"image": torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8), "target": torch.zeros(8, dtype=torch.long)}})
    batch = cb.before_forward(None, None, {"b": {"image": torch.rand(8, 1, 4, 4), "target": torch.zeros(8, dtype=torch.long)}})
    assert batch["a"]["image"].dtype == torch.uint8 and batch["b"]["image"].dtype == torch.float32


def test_callback_replay_ratio_scales_with_the_current_batch():
    cb = ReplayCallback(capacity=100, replay_batch_size=None, replay_ratio=0.5)
    cb.before_forward(None, None, {"a": {"image": torch.rand(40, 3, 2, 2), "target": torch.zeros(40, dtype=torch.long)}})
    for size, expected in ((16, 8), (10, 5), (3, 2)):
        batch = cb.before_forward(None, None, {"b": {"image": torch.rand(size, 3, 2, 2), "target": torch.zeros(size, dtype=torch.long)}})
        assert len(batch["a"]["target"]) == expected


def test_callback_task_balance_gives_old_tasks_equal_shares():
    cb = ReplayCallback(capacity=200, replay_batch_size=10, balance="task")
    for task, n in (("a", 90), ("b", 10)):
        cb.buffer.add_batch(task, torch.rand(n, 3, 2, 2), torch.zeros(n, dtype=torch.long))
    batch = cb.before_forward(None, None, {"c": {"image": torch.rand(4, 3, 2, 2), "target": torch.zeros(4, dtype=torch.long)}})
    assert len(batch["a"]["target"]) == len(batch["b"]["target"]) == 5


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"policy": "fifo"}, "policy: unknown buffer policy 'fifo'; registered: "),
        ({"replay_batch_size": -1}, "replay_batch_size expected an integer >= 0, found -1"),
        ({"capacity": 0}, "capacity expected a positive integer, found 0"),
        ({"max_mb": 10.0}, "exactly one budget"),
        ({"capacity": None, "max_mb": -1.0}, "max_mb expected a positive number"),
        ({"replay_ratio": 0.5}, "exactly one of replay_batch_size and replay_ratio"),
        ({"replay_batch_size": None, "replay_ratio": -0.5}, "replay_ratio expected a finite number >= 0"),
        ({"balance": "class"}, "balance expected one of"),
        ({"task_quota": {"a": 0}}, r"task_quota\['a'\] expected a positive integer, found 0"),
        ({"task_quota": [1]}, "task_quota expected a mapping"),
        ({"herding_candidates": 0}, "herding_candidates expected a positive integer, found 0"),
        ({"max_tasks_per_step": 0}, "max_tasks_per_step expected a positive integer or null, found 0"),
    ],
)
def test_callback_argument_validation(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment) as err:
        ReplayCallback(**kwargs)
    assert str(err.value).startswith("Replay:")


def test_resume_with_another_budget_fails_loudly():
    cb = ReplayCallback(capacity=20, policy="reservoir")
    stream(cb.buffer, "a", 30)
    state = cb.state_dict()
    assert ReplayCallback(capacity=50).state_key == cb.state_key  # Lightning hands the state over ...
    with pytest.raises(ValueError, match="checkpoint field 'capacity' is 20, this buffer has 50"):
        ReplayCallback(capacity=50).load_state_dict(state)  # ... and the mismatch is refused
    with pytest.raises(ValueError, match="checkpoint field 'policy' is 'reservoir', this buffer uses 'herding'"):
        ReplayCallback(capacity=20, policy="herding").load_state_dict(state)


def test_callback_checkpoint_round_trip_through_weights_only_load(tmp_path):
    cb = ReplayCallback(capacity=20, policy="class_balanced", seed=1)
    stream(cb.buffer, "a", 30)
    torch.save(cb.state_dict(), tmp_path / "cb.pt")
    state = torch.load(tmp_path / "cb.pt", weights_only=True)
    assert state["world_size"] == 1 and len(state["ranks"]) == 1
    other = ReplayCallback(capacity=20, policy="class_balanced", seed=7)
    other.load_state_dict(state)
    assert torch.equal(other.buffer.task_data("a")[0], cb.buffer.task_data("a")[0])
    assert torch.equal(other.buffer.sample(5)["a"]["image"], cb.buffer.sample(5)["a"]["image"])


def test_old_checkpoint_format_is_refused_clearly():
    old = {"buffer": {"capacity": 20, "policy": "ReservoirPolicy", "order": [], "tasks": {}}, "replay_batch_size": 32}
    with pytest.raises(ValueError, match="replay buffer format is from an older MedCL"):
        ReplayCallback(capacity=20).load_state_dict(old)


def _fake_distributed(monkeypatch, world_size, rank, others):
    """Pretend to be ``rank`` of ``world_size`` processes; ``others`` gives the other ranks' buffer states."""
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: world_size)
    monkeypatch.setattr(dist, "get_rank", lambda: rank)

    def all_gather_object(out, obj):
        for r in range(world_size):
            out[r] = obj if r == rank else others[r]

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)


def test_ddp_checkpoint_gathers_every_rank_and_each_rank_restores_its_own(monkeypatch):
    rank0, rank1 = ReplayCallback(capacity=20, seed=0), ReplayCallback(capacity=20, seed=1)
    stream(rank0.buffer, "a", 30, start=0)
    stream(rank1.buffer, "a", 30, start=1000)  # another data shard
    _fake_distributed(monkeypatch, 2, 1, {0: rank0.buffer.state_dict()})
    state = rank1.state_dict()
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    restored = ReplayCallback(capacity=20)
    restored.load_state_dict(state)  # as rank 1
    assert torch.equal(restored.buffer.task_data("a")[0], rank1.buffer.task_data("a")[0])
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    restored.load_state_dict(state)  # as rank 0
    assert torch.equal(restored.buffer.task_data("a")[0], rank0.buffer.task_data("a")[0])
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    with pytest.raises(ValueError, match="checkpoint field 'world_size' is 2, this run has world_size 4"):
        restored.load_state_dict(state)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    with pytest.raises(ValueError, match="'world_size' is 2, this run has world_size 1"):
        ReplayCallback(capacity=20).load_state_dict(state)


# ---------------------------------------------------------------------- herding at experience end
class _Adapters:
    def __init__(self):
        self.active = []
        self.modalities = {"rgb", "ct"}  # as ModalityAdapters.modalities: the modalities the model's tasks have

    @contextmanager
    def use(self, modality):
        self.active.append(modality)
        yield


class _Backbone:
    def encode_image(self, images, normalize=True):
        assert not torch.is_grad_enabled()
        feats = images.float().flatten(1)[:, :4]
        return torch.nn.functional.normalize(feats, dim=1) if normalize else feats


class _Model:
    def __init__(self):
        self.backbone, self.adapters = _Backbone(), _Adapters()

    def route(self, spec):  # as MedCLModel.route: the task's modality adapters (and input size)
        return self.adapters.use(spec.modality)


class _Module:
    def __init__(self):
        self.model = _Model()
        self.task_specs = {"a": SimpleNamespace(modality="rgb"), "b": SimpleNamespace(modality="ct")}
        self.device = torch.device("cpu")
        self.training = True
        self.modes = []

    def model_for(self, task):
        return self.model

    def eval(self):
        self.modes.append("eval")
        self.training = False

    def train(self, mode=True):
        self.modes.append(f"train({mode})")
        self.training = mode


class _Domain:
    def __init__(self, images, targets):
        self.items = [{"image": i, "target": t} for i, t in zip(images, targets)]

    def loader(self, split, keyed=True, shuffle=None):
        assert (split, keyed, shuffle) == ("train", False, False)
        return DataLoader(self.items, batch_size=7)


def test_herding_callback_encodes_each_experience_and_keeps_per_class_quotas():
    gen = torch.Generator().manual_seed(0)
    data = {
        "a": (torch.randint(0, 256, (60, 3, 2, 2), dtype=torch.uint8, generator=gen), torch.arange(60) % 3),
        "b": (torch.randint(0, 256, (40, 1, 2, 2), dtype=torch.uint8, generator=gen), torch.arange(40) % 2),
    }
    domains = {t: _Domain(*d) for t, d in data.items()}
    trainer = SimpleNamespace(datamodule=SimpleNamespace(domain=domains.__getitem__), progress_bar_callback=None, is_global_zero=True)
    module = _Module()
    cb = ReplayCallback(capacity=30, policy="herding", herding_candidates=1000)
    batch = {"a": {"image": data["a"][0][:8], "target": data["a"][1][:8]}}
    cb.before_forward(trainer, module, batch)
    assert len(cb.buffer) == 0  # herding stores nothing during an experience
    cb.after_experience(trainer, module, 0, ["a"])
    assert cb.buffer.class_counts("a") == {0: 10, 1: 10, 2: 10}
    assert module.training and module.modes == ["eval", "train(True)"] and module.model.adapters.active == ["rgb"]
    assert cb.buffer.task_data("a")[0].dtype == torch.uint8
    cb.after_experience(trainer, module, 1, ["b"])  # 5 groups: quota 6 each
    assert cb.buffer.class_counts("a") == {0: 6, 1: 6, 2: 6} and cb.buffer.class_counts("b") == {0: 6, 1: 6}
    assert module.model.adapters.active == ["rgb", "ct"]


def test_herding_candidates_are_a_seeded_subset():
    images, targets = torch.arange(50, dtype=torch.float32).view(50, 1, 1, 1).expand(50, 3, 2, 2).clone(), torch.zeros(50, dtype=torch.long)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(domain=lambda t: _Domain(images, targets)), progress_bar_callback=None)
    cb = ReplayCallback(capacity=30, policy="herding", herding_candidates=12, seed=5)
    first = cb.featurise(trainer, _Module(), 0, "a")
    again = cb.featurise(trainer, _Module(), 0, "a")
    assert len(first[0]) == 12 and torch.equal(first[0], again[0])
    cb.after_experience(trainer, _Module(), 0, ["a"])
    assert len(cb.buffer) == 12  # at most the candidates


def test_herding_end_to_end_with_lightning_checkpoint_and_resume(tmp_path):
    """Shrunk quickstart with policy=herding: exemplars chosen at each experience end, saved, restored."""
    import yaml

    from framework.cli import run_cli
    from helpers import shrink_config

    config = shrink_config("experiments/quickstart.yaml", tmp_path, train_subset=48, eval_subset=20)
    data = yaml.safe_load(config.read_text())
    (replay,) = [c for c in data["trainer"]["callbacks"] if c["class_path"].endswith("ReplayCallback")]
    replay["init_args"] = {"capacity": 40, "policy": "herding", "replay_batch_size": 8, "herding_candidates": 32}
    config.write_text(yaml.safe_dump(data))
    cli = run_cli(["fit", "--config", str(config)])
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, ReplayCallback)]
    assert set(cb.buffer.counts()) == {"bloodmnist", "organamnist"} and len(cb.buffer) <= 40
    assert cb.buffer.task_data("bloodmnist")[0].shape[1:] == (3, 28, 28)
    checkpoints = tmp_path / "run" / "version_0" / "checkpoints"
    state = torch.load(checkpoints / "experience=0-epoch=0.ckpt", map_location="cpu", weights_only=True)["callbacks"]["ReplayCallback"]
    assert state["world_size"] == 1 and list(state["ranks"][0]["tasks"]) == ["bloodmnist"]

    resumed = run_cli(["--config", str(config)], run=False)
    resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=str(checkpoints / "experience=0-epoch=0.ckpt"))
    (again,) = [c for c in resumed.trainer.callbacks if isinstance(c, ReplayCallback)]
    assert again.buffer.counts() == cb.buffer.counts()
