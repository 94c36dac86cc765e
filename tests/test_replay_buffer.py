"""framework.replay: tensor storage, budgets, policies for every task kind, herding, checkpoints, per-step cost."""
import sys
from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode

from framework.replay import POLICIES, HerdingPolicy, ReplayBuffer, herding_order

POLICY_NAMES = sorted(POLICIES)


# ---------------------------------------------------------------------- data of every task kind
def _encode(images, ids):
    """Write each sample's id into its first two values (so pairs can be checked after storage)."""
    flat = images.view(len(images), -1)
    flat[:, 0], flat[:, 1] = (ids % 251).to(images.dtype), (ids // 251).to(images.dtype)
    return images


def decode(images):
    flat = images.reshape(len(images), -1).long()
    return flat[:, 0] + 251 * flat[:, 1]


#: kind -> (image shape, image dtype, target of a sample id)
KINDS = {
    "class": ((3, 6, 6), torch.uint8, lambda ids: ids % 4),
    "mask": ((1, 8, 8), torch.uint8, lambda ids: (ids % 3).view(-1, 1, 1).expand(-1, 8, 8).to(torch.uint8).clone()),
    "survival": ((1, 6, 6), torch.float32, lambda ids: torch.stack([ids.float() + 0.5, (ids % 2).float()], dim=1)),
    "volume": ((1, 3, 6, 6), torch.float32, lambda ids: (ids % 2).view(-1, 1, 1, 1).expand(-1, 3, 6, 6).to(torch.uint8).clone()),
    "multilabel": ((3, 6, 6), torch.uint8, lambda ids: torch.stack([(ids >> b) & 1 for b in range(5)], dim=1).float()),
}


def make(kind, ids):
    shape, dtype, target = KINDS[kind]
    ids = torch.as_tensor(ids)
    gen = torch.Generator().manual_seed(int(ids[0]) if len(ids) else 0)  # same ids, same data
    if dtype == torch.uint8:
        images = torch.randint(0, 256, (len(ids), *shape), dtype=dtype, generator=gen)
    else:
        images = torch.rand(len(ids), *shape, generator=gen)
    return _encode(images, ids), target(ids)


def features_of(images):
    """Deterministic fake backbone features."""
    return torch.nn.functional.normalize(images.float().reshape(len(images), -1)[:, 2:10] + 1e-3, dim=1)


def offer(buffer, task, kind, n, start=0, batch=16):
    """Offer a task's stream in batches; with herding, run the experience-end selection."""
    images, targets = make(kind, torch.arange(start, start + n))
    for i in range(0, n, batch):
        buffer.add_batch(task, images[i : i + batch], targets[i : i + batch])
    if isinstance(buffer.policy, HerdingPolicy):
        buffer.policy.select(buffer, {task: (images, targets, features_of(images))})
    return images, targets


def check_pairs(buffer, task, kind):
    """Every stored image still sits next to its own target."""
    images, targets = buffer.task_data(task)
    assert torch.equal(KINDS[kind][2](decode(images)).to(targets.dtype), targets)


# ---------------------------------------------------------------------- storage
@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_dtype_is_preserved_in_storage_and_sampling(policy, dtype):
    buffer = ReplayBuffer(40, policy, seed=0)
    images = _encode(torch.zeros(100, 3, 4, 4, dtype=dtype), torch.arange(100))
    targets = torch.arange(100) % 2
    for i in range(0, 100, 25):
        buffer.add_batch("a", images[i : i + 25], targets[i : i + 25])
    if policy == "herding":
        buffer.policy.select(buffer, {"a": (images, targets, features_of(images + 1))})
    stored, _ = buffer.task_data("a")
    drawn = buffer.sample(10)["a"]["image"]
    assert stored.dtype == dtype and drawn.dtype == dtype
    assert torch.equal(stored, images[decode(stored)])  # exact copies of offered samples
    assert buffer.nbytes() == len(buffer) * (3 * 4 * 4 * stored.element_size() + 8)


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("capacity", [1, 7, 64])
def test_capacity_is_never_exceeded_nor_the_allocation(policy, capacity):
    buffer = ReplayBuffer(capacity, policy, seed=0)
    for task, kind, n in (("a", "class", 100), ("b", "mask", 50), ("c", "class", 30)):
        offer(buffer, task, kind, n)
        assert len(buffer) <= capacity
        assert all(s.rows <= capacity for s in buffer._stores.values())
    if policy != "herding":  # herding leaves capacity % groups unused
        assert len(buffer) == capacity


def test_allocation_grows_geometrically_and_stops_at_the_budget():
    buffer = ReplayBuffer(100, "reservoir")
    rows = []
    for i in range(20):
        buffer.add_batch("a", torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.zeros(10, dtype=torch.long))
        rows.append(buffer._stores["a"].rows)
    assert rows[:5] == [10, 20, 40, 40, 80] and rows[-1] == 100  # x2, capped at the capacity (not 128)
    assert buffer.allocated_bytes() == buffer.nbytes() == 100 * (3 * 4 * 4 + 8)


def test_changing_a_tasks_shape_or_dtype_is_refused():
    buffer = ReplayBuffer(10)
    buffer.add_batch("organ", torch.zeros(4, 3, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"task 'organ' stores images of shape \(3, 28, 28\) and dtype torch.uint8, but new images have shape \(3, 64, 64\) and dtype torch.uint8"):
        buffer.add_batch("organ", torch.zeros(4, 3, 64, 64, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"stores images .* dtype torch.uint8, but new images .* dtype torch.float32"):
        buffer.add_batch("organ", torch.zeros(4, 3, 28, 28), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"stores targets of shape \(\) and dtype torch.int64, but new targets have shape \(2,\)"):
        buffer.add_batch("organ", torch.zeros(4, 3, 28, 28, dtype=torch.uint8), torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="expected as many targets as images, found 3 targets for 4 images"):
        buffer.add_batch("organ", torch.zeros(4, 3, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    assert len(buffer) == 4


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({}, "exactly one budget"),
        ({"capacity": 5, "max_mb": 1.0}, "exactly one budget"),
        ({"capacity": 0}, "capacity expected a positive integer, found 0"),
        ({"capacity": 2.5}, "capacity expected a positive integer, found 2.5"),
        ({"max_mb": 0.0}, "max_mb expected a positive number of megabytes, found 0.0"),
        ({"capacity": 5, "policy": "fifo"}, "policy: unknown buffer policy .fifo.; registered: "),
        ({"capacity": 5, "task_quota": {"a": -1}}, r"task_quota\['a'\] expected a positive integer, found -1"),
        ({"capacity": 5, "task_quota": {"a": True}}, r"task_quota\['a'\] expected a positive integer"),
        ({"capacity": 5, "task_quota": {"": 3}}, "task_quota expected task names"),
    ],
)
def test_buffer_argument_validation(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        ReplayBuffer(**kwargs)


def test_sample_argument_validation():
    buffer = ReplayBuffer(5)
    with pytest.raises(ValueError, match="n expected an integer >= 0, found -1"):
        buffer.sample(-1)
    with pytest.raises(ValueError, match=r"balance expected one of \['uniform', 'task'\], found 'class'"):
        buffer.sample(3, balance="class")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=f"max_tasks expected an integer >= 1 or None, found {bad!r}"):
            buffer.sample(3, max_tasks=bad)


# ---------------------------------------------------------------------- policies
def test_reservoir_keeps_tasks_in_proportion_to_their_stream_sizes():
    shares = []
    for seed in range(5):
        buffer = ReplayBuffer(300, "reservoir", seed=seed)
        offer(buffer, "a", "class", 600, batch=64)
        offer(buffer, "b", "class", 1800, start=600, batch=64)
        offer(buffer, "c", "mask", 600, start=2400, batch=64)
        counts = buffer.counts()
        assert sum(counts.values()) == 300
        shares.append([counts["a"] / 300, counts["b"] / 300, counts["c"] / 300])
    mean = torch.tensor(shares).mean(0)
    assert torch.allclose(mean, torch.tensor([0.2, 0.6, 0.2]), atol=0.04), mean  # stream shares 1:3:1


def test_reservoir_inclusion_is_uniform_over_positions_in_the_stream():
    hits = Counter()
    for seed in range(30):
        buffer = ReplayBuffer(20, "reservoir", seed=seed)
        offer(buffer, "a", "class", 120, batch=32)
        offer(buffer, "b", "survival", 80, start=120, batch=32)
        for task in buffer.tasks():
            hits.update(int(i) // 50 for i in decode(buffer.task_data(task)[0]))  # 4 quarters of the stream
    assert all(110 <= hits[q] <= 190 for q in range(4)), hits  # expectation 150 each


def test_class_balanced_gives_every_group_an_equal_share():
    buffer = ReplayBuffer(60, "class_balanced", seed=0)
    images, _ = make("class", torch.arange(500))
    targets = torch.cat([torch.zeros(400, dtype=torch.long), torch.arange(100) % 2 + 1])  # class 0 dominates
    for i in range(0, 500, 50):
        buffer.add_batch("a", images[i : i + 50], targets[i : i + 50])
    assert buffer.class_counts("a") == {0: 20, 1: 20, 2: 20}
    offer(buffer, "b", "mask", 200)  # one group for a task without class targets
    offer(buffer, "c", "class", 200)  # four more classes: 8 groups, 7 or 8 each
    counts = [*buffer.class_counts("a").values(), buffer.counts()["b"], *buffer.class_counts("c").values()]
    assert len(counts) == 8 and sum(counts) == 60 and max(counts) - min(counts) <= 1, counts


def test_herding_order_picks_the_sample_nearest_the_mean_first():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.6, 0.8], [0.0, -1.0]])
    normed = torch.nn.functional.normalize(features, dim=1)
    mean = normed.mean(0)
    order = herding_order(features, 5)
    assert int(order[0]) == int(((normed - mean) ** 2).sum(1).argmin())
    assert sorted(order.tolist()) == list(range(5)) and order.dtype == torch.long
    # greedy reference: each pick makes the running mean closest to the target mean
    picked, total = [], torch.zeros(2)
    for t in range(1, 4):
        dist = [float(((mean - (total + normed[i]) / t) ** 2).sum()) if i not in picked else float("inf") for i in range(5)]
        picked.append(min(range(5), key=dist.__getitem__))
        total += normed[picked[-1]]
    assert herding_order(features, 3).tolist() == picked
    # two clusters: the second pick balances the first
    pair = herding_order(torch.tensor([[1.0, 0.1], [1.0, 0.12], [0.1, 1.0]]), 2).tolist()
    assert 2 in pair
    assert herding_order(features, 0).numel() == 0
    with pytest.raises(ValueError, match=r"k expected an integer in \[0, 5\]"):
        herding_order(features, 6)
    with pytest.raises(ValueError, match="features expected a 2-D tensor"):
        herding_order(torch.zeros(5), 1)


def test_herding_keeps_per_group_quotas_in_herding_order_and_truncates_old_groups():
    buffer = ReplayBuffer(24, "herding")
    images, targets = make("class", torch.arange(80))  # 4 classes, 20 each
    feats = features_of(images)
    buffer.policy.select(buffer, {"a": (images, targets, feats)})
    assert buffer.class_counts("a") == {0: 6, 1: 6, 2: 6, 3: 6}
    stored = decode(buffer.task_data("a")[0])
    for c in range(4):
        rows = (targets == c).nonzero().flatten()
        expected = rows[herding_order(feats[rows], 6)]
        assert torch.equal(stored[c * 6 : c * 6 + 6], expected)  # group by group, herding-ordered
        normed = torch.nn.functional.normalize(feats[rows], dim=1)
        assert int(stored[c * 6]) == int(rows[((normed - normed.mean(0)) ** 2).sum(1).argmin()])  # first = nearest the mean
    mask_images, mask_targets = make("mask", torch.arange(100, 140))
    buffer.policy.select(buffer, {"b": (mask_images, mask_targets, features_of(mask_images))})  # 5 groups: quota 4
    assert buffer.class_counts("a") == {0: 4, 1: 4, 2: 4, 3: 4} and buffer.counts()["b"] == 4
    kept = decode(buffer.task_data("a")[0])
    assert all(torch.equal(kept[c * 4 : c * 4 + 4], stored[c * 6 : c * 6 + 4]) for c in range(4))  # first-ranked kept
    check_pairs(buffer, "a", "class")
    check_pairs(buffer, "b", "mask")


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_policy_handles_every_task_kind(policy, kind):
    buffer = ReplayBuffer(30, policy, seed=1)
    offer(buffer, "old", "class", 60)
    offer(buffer, "new", kind, 90, start=60)
    assert len(buffer) <= 30 and buffer.counts().get("new", 0) > 0
    shape, dtype, _ = KINDS[kind]
    images, targets = buffer.task_data("new")
    assert images.shape[1:] == shape and images.dtype == dtype
    check_pairs(buffer, "new", kind)
    check_pairs(buffer, "old", "class")
    drawn = buffer.sample(12, exclude=("old",))["new"]
    assert torch.equal(KINDS[kind][2](decode(drawn["image"])).to(drawn["target"].dtype), drawn["target"])
    if kind in ("mask", "survival", "multilabel", "volume"):
        assert buffer.class_counts("new") == {}  # one group per task


# ---------------------------------------------------------------------- budgets and quotas
@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_max_mb_budget_sets_the_capacity_and_shrinks_it_for_larger_samples(policy):
    small = 3 * 6 * 6 + 8  # uint8 class image + long target
    buffer = ReplayBuffer(max_mb=small * 50 / 2**20, policy=policy)
    assert buffer.capacity is None and len(buffer) == 0
    offer(buffer, "a", "class", 120)
    assert buffer.capacity == 50 and len(buffer) <= 50
    large = 1 * 3 * 6 * 6 * 4 + 3 * 6 * 6  # float volume + uint8 mask
    offer(buffer, "b", "volume", 40, start=500)
    assert buffer.capacity == small * 50 // large == 10  # shrunk for the larger kind
    assert len(buffer) <= buffer.capacity and buffer.nbytes() <= small * 50
    assert all(s.rows <= buffer.capacity for s in buffer._stores.values())
    check_pairs(buffer, "a", "class")
    with pytest.raises(ValueError, match=r"max_mb=.* cannot hold one sample of task 'c' \(8,008 bytes"):
        buffer.add_batch("c", torch.zeros(2, 1000, dtype=torch.float64), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_task_quota_is_respected_and_replaces_own_samples(policy):
    buffer = ReplayBuffer(40, policy, seed=0, task_quota={"a": 8})
    first_images, _ = offer(buffer, "a", "class", 40)
    assert buffer.counts()["a"] <= 8
    offer(buffer, "b", "mask", 200, start=1000)
    offer(buffer, "a", "class", 200, start=2000)  # a at its quota only replaces its own samples
    counts = buffer.counts()
    assert counts["a"] <= 8 and len(buffer) <= 40
    if policy != "herding":
        assert counts["a"] == 8 and counts["b"] == 32
        assert (decode(buffer.task_data("a")[0]) >= 2000).any()  # later samples of a got in


def test_task_quota_caps_the_allocation():
    buffer = ReplayBuffer(1000, "reservoir", task_quota={"a": 30})
    offer(buffer, "a", "class", 200)
    assert buffer._stores["a"].rows == 30


# ---------------------------------------------------------------------- sampling
def test_sampling_uniform_follows_stored_sizes_and_task_balance_gives_equal_shares():
    buffer = ReplayBuffer(200, "reservoir", seed=0, task_quota={"b": 10, "c": 3})
    offer(buffer, "a", "class", 90)
    offer(buffer, "b", "mask", 10, start=100)
    offer(buffer, "c", "survival", 3, start=200)
    offer(buffer, "now", "class", 5, start=300)
    assert buffer.counts() == {"a": 90, "b": 10, "c": 3, "now": 5}
    draws = Counter()
    for _ in range(200):
        out = buffer.sample(10, exclude=("now",))
        assert sum(len(v["target"]) for v in out.values()) == 10 and "now" not in out
        draws.update({t: len(v["target"]) for t, v in out.items()})
    assert 0.82 <= draws["a"] / 2000 <= 0.92 and draws["c"] < draws["b"] < draws["a"]  # 90 : 10 : 3
    out = buffer.sample(20, exclude=("now", "c"), balance="task")
    assert {t: len(v["target"]) for t, v in out.items()} == {"a": 10, "b": 10}
    shares = Counter()
    for _ in range(30):
        out = buffer.sample(7, exclude=("now", "c"), balance="task")
        sizes = sorted(len(v["target"]) for v in out.values())
        assert sizes == [3, 4]  # the remainder goes to a random task
        shares.update(t for t, v in out.items() if len(v["target"]) == 4)
    assert set(shares) == {"a", "b"}
    out = buffer.sample(30, exclude=("now",), balance="task")  # c holds only 3
    assert {t: len(v["target"]) for t, v in out.items()} == {"a": 10, "b": 10, "c": 3}
    rows = decode(buffer.sample(10, exclude=("now", "b", "c"))["a"]["image"])
    assert len(set(rows.tolist())) == 10  # without replacement


@pytest.mark.parametrize("balance", ["uniform", "task"])
def test_max_tasks_caps_the_tasks_of_a_replay_draw_and_rotates_them(balance):
    buffer = ReplayBuffer(400, "reservoir", seed=0)
    for k, task in enumerate("abcdef"):
        offer(buffer, task, "class", 20, start=100 * k)
    seen = Counter()
    for _ in range(60):
        out = buffer.sample(12, exclude=("f",), balance=balance, max_tasks=2)
        assert len(out) == 2 and "f" not in out  # two of the five old tasks per draw
        assert sum(len(v["target"]) for v in out.values()) == 12
        seen.update(list(out))
    assert set(seen) == set("abcde") and min(seen.values()) >= 10  # every old task gets its turns
    # a cap that does not bind changes nothing, not even the generator's stream
    twin = ReplayBuffer(400, "reservoir", seed=0)
    for k, task in enumerate("abcdef"):
        offer(twin, task, "class", 20, start=100 * k)
    capped = twin.sample(12, exclude=("f",), max_tasks=5)
    fresh = ReplayBuffer(400, "reservoir", seed=0)
    for k, task in enumerate("abcdef"):
        offer(fresh, task, "class", 20, start=100 * k)
    uncapped = fresh.sample(12, exclude=("f",))
    assert {t: v["image"].tolist() for t, v in capped.items()} == {t: v["image"].tolist() for t, v in uncapped.items()}


# ---------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_state_dict_round_trip_restores_contents_and_generator(policy, tmp_path):
    buffer = ReplayBuffer(30, policy, seed=3, task_quota={"b": 12})
    offer(buffer, "a", "class", 50)
    offer(buffer, "b", "volume", 50, start=100)
    offer(buffer, "c", "mask", 20, start=200)
    torch.save(buffer.state_dict(), tmp_path / "buffer.pt")
    restored = ReplayBuffer(30, policy, seed=99, task_quota={"b": 12})
    restored.load_state_dict(torch.load(tmp_path / "buffer.pt", weights_only=True))
    assert restored.counts() == buffer.counts() and restored.capacity == buffer.capacity
    for task in buffer.tasks():
        assert all(torch.equal(x, y) for x, y in zip(restored.task_data(task), buffer.task_data(task)))
    for a, b in zip(restored.sample(9).items(), buffer.sample(9).items()):  # same generator state
        assert a[0] == b[0] and torch.equal(a[1]["image"], b[1]["image"]) and torch.equal(a[1]["target"], b[1]["target"])
    offer(buffer, "d", "class", 40, start=300)  # same policy state: same future decisions
    offer(restored, "d", "class", 40, start=300)
    for task in buffer.tasks():
        assert torch.equal(restored.task_data(task)[0], buffer.task_data(task)[0])


def test_state_dict_is_compact():
    buffer = ReplayBuffer(1000, "reservoir")
    offer(buffer, "a", "class", 33)
    state = buffer.state_dict()
    image = state["tasks"]["a"]["image"]
    assert image.shape[0] == 33 and image.untyped_storage().nbytes() == image.nbytes  # trimmed, not a view


@pytest.mark.parametrize(
    "other, fragment",
    [
        (dict(capacity=20, policy="class_balanced"), "checkpoint field 'policy' is 'reservoir', this buffer uses 'class_balanced'"),
        (dict(capacity=25), "checkpoint field 'capacity' is 20, this buffer has 25"),
        (dict(max_mb=1.0), "checkpoint field 'capacity' is 20, this buffer has None"),
        (dict(capacity=20, task_quota={"a": 5}), r"checkpoint field 'task_quota' is None, this buffer has \{'a': 5\}"),
    ],
)
def test_loading_a_mismatching_checkpoint_is_refused(other, fragment):
    buffer = ReplayBuffer(20, "reservoir")
    offer(buffer, "a", "class", 30)
    target = ReplayBuffer(**other)
    with pytest.raises(ValueError, match=fragment):
        target.load_state_dict(buffer.state_dict())
    assert len(target) == 0  # nothing half-loaded
    with pytest.raises(ValueError, match="format is from an older MedCL"):
        ReplayBuffer(20).load_state_dict({"capacity": 20, "policy": "ReservoirPolicy", "order": [], "tasks": {}})


def test_set_task_data_replaces_a_task_and_checks_the_budget():
    buffer = ReplayBuffer(10, "class_balanced")
    offer(buffer, "a", "class", 8)
    images, targets = make("class", torch.arange(100, 104))
    buffer.set_task_data("a", images, targets)
    assert buffer.counts() == {"a": 4} and buffer.class_counts("a") == {0: 1, 1: 1, 2: 1, 3: 1}
    offer(buffer, "b", "class", 30, start=200)  # the policy's index was rebuilt for a
    assert len(buffer) == 10
    check_pairs(buffer, "a", "class")
    with pytest.raises(ValueError, match=r"task 'b' expected at most \d+ samples \(capacity 10"):
        buffer.set_task_data("b", *make("class", torch.arange(11)))


# ---------------------------------------------------------------------- per-step work is O(1) in the capacity
class _Recorder(TorchFunctionMode):
    """Records the size of every tensor a torch call creates (in-place calls return their target: skipped)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if isinstance(out, torch.Tensor) and not name.endswith("_") and name != "__set__":
            self.largest = max(self.largest, out.numel())
        return out


def _step_work(policy, capacity):
    """(largest tensor created, Python line events) of one steady-state step: offer 64 new samples + draw 32."""
    buffer = ReplayBuffer(capacity, policy, seed=0)
    tiny = torch.zeros(capacity, 1, 2, 2, dtype=torch.uint8)
    buffer.add_batch("old", tiny, torch.arange(capacity) % 4)  # full
    images, targets = torch.ones(64, 1, 2, 2, dtype=torch.uint8), torch.arange(64) % 4
    buffer.add_batch("new", images, targets)  # warm up: allocation of the new task
    lines = 0

    def tracer(frame, event, arg):
        nonlocal lines
        if event == "line":
            lines += 1
        return tracer

    with _Recorder() as recorder:
        sys.settrace(tracer)
        try:
            buffer.add_batch("new", images, targets)
            buffer.sample(32, exclude=("new",))
            buffer.sample(32, balance="task")
        finally:
            sys.settrace(None)
    return recorder.largest, lines


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_per_step_work_does_not_grow_with_the_capacity(policy):
    small = _step_work(policy, 1_000)
    large = _step_work(policy, 50_000)
    # no tensor proportional to the capacity (50,000 samples x 4 values) is ever created: the largest
    # is the new task's storage doubling (the rows it writes), whatever the capacity ...
    assert max(small[0], large[0]) <= 4 * 64 * 4, (small, large)
    # ... and the Python work (line events, not timings) is the same up to random branch choices
    assert large[1] <= 1.5 * small[1] + 300, (small, large)
