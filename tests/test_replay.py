from collections import Counter

import pytest
import torch

from framework.callbacks.replay import ClassBalancedPolicy, ReplayBuffer, ReplayCallback, ReservoirPolicy


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
        hits.update(int(img[0, 0, 0]) // 50 for _, img, _ in buffer.items)  # 4 quarters of the stream
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
    state = buffer.state_dict()
    restored = ReplayBuffer(30, policy(), seed=99)
    restored.load_state_dict(state)
    assert [(t, y.item()) for t, _, y in restored.items] == [(t, y.item()) for t, _, y in buffer.items]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(restored.items, buffer.items))
    # same generator state -> same future decisions
    stream(buffer, "c", 40)
    stream(restored, "c", 40)
    assert [(t, y.item()) for t, _, y in restored.items] == [(t, y.item()) for t, _, y in buffer.items]


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


def test_callback_mixes_old_tasks_into_the_batch_in_place():
    cb = ReplayCallback(capacity=50, policy="reservoir", replay_batch_size=8)
    first = {"a": {"image": torch.rand(16, 3, 4, 4), "target": torch.randint(0, 3, (16,))}}
    cb.on_train_batch_start(None, None, first, 0)
    assert set(first) == {"a"}  # nothing older to replay yet
    second = {"b": {"image": torch.rand(16, 1, 4, 4), "target": torch.randint(0, 5, (16,))}}
    cb.on_train_batch_start(None, None, second, 1)
    assert set(second) == {"a", "b"}
    assert second["a"]["image"].shape == (8, 3, 4, 4)
    assert len(cb.buffer) == 32


@pytest.mark.parametrize("kwargs, fragment", [({"policy": "fifo"}, "policy expected"), ({"replay_batch_size": -1}, "replay_batch_size"), ({"capacity": 0}, "capacity")])
def test_callback_argument_validation(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        ReplayCallback(**kwargs)


def test_resume_with_another_budget_fails_loudly():
    cb = ReplayCallback(capacity=20, policy="reservoir")
    stream(cb.buffer, "a", 30)
    state = cb.state_dict()
    assert ReplayCallback(capacity=50).state_key == cb.state_key  # Lightning hands the state over ...
    with pytest.raises(ValueError, match="checkpoint field 'capacity' is 20, this buffer has 50"):
        ReplayCallback(capacity=50).load_state_dict(state)  # ... and the mismatch is refused
