import pytest

from framework.metrics.continual import format_matrix, summarize

TASKS = ["blood", "organ", "chest"]


def test_three_task_stream_hand_computed():
    R = [
        [0.90, None, None],
        [0.70, 0.80, None],
        [0.60, 0.75, 0.85],
    ]
    out = summarize(R, TASKS)
    assert out["average_accuracy"] == pytest.approx((0.60 + 0.75 + 0.85) / 3)
    assert out["average_accuracy_per_experience"] == pytest.approx([0.90, 0.75, (0.60 + 0.75 + 0.85) / 3])
    # forgetting: blood max(0.9, 0.7) - 0.6 = 0.3 ; organ 0.8 - 0.75 = 0.05 ; chest excluded (last)
    assert out["forgetting_per_task"]["blood"] == pytest.approx(0.30)
    assert out["forgetting_per_task"]["organ"] == pytest.approx(0.05)
    assert out["forgetting_per_task"]["chest"] is None
    assert out["forgetting"] == pytest.approx(0.175)
    # backward transfer: (0.6 - 0.9 + 0.75 - 0.8) / 2
    assert out["backward_transfer"] == pytest.approx(-0.175)


def test_forgetting_uses_the_best_earlier_score_not_the_first():
    R = [[0.5, None], [0.9, 0.7], [0.6, 0.7]]
    out = summarize(R, ["a", "b"], [["a"], ["a"], ["b"]])
    assert out["forgetting_per_task"]["a"] == pytest.approx(0.3)


def test_joint_single_row_has_no_forgetting():
    out = summarize([[0.8, 0.6]], ["a", "b"], [["a", "b"]])
    assert out["average_accuracy"] == pytest.approx(0.7)
    assert out["forgetting"] is None and out["backward_transfer"] is None


def test_negative_forgetting_when_a_task_improves():
    out = summarize([[0.5, None], [0.6, 0.9]], ["a", "b"])
    assert out["forgetting"] == pytest.approx(-0.1)


def test_ragged_or_mismatched_matrices_are_refused():
    with pytest.raises(ValueError, match="row 1 has 1 entries"):
        summarize([[0.1, 0.2], [0.3]], ["a", "b"])
    with pytest.raises(ValueError, match="2 columns but 3 task names"):
        summarize([[0.1, 0.2]], TASKS)


def test_table_shows_dashes_for_missing_cells():
    text = format_matrix([[0.9, None], [0.7, 0.8]], ["blood", "organ"])
    lines = text.splitlines()
    assert "blood" in lines[0] and "organ" in lines[0]
    assert lines[2].rstrip().endswith("-") and "0.900" in lines[2]
    assert "0.700" in lines[3] and "0.800" in lines[3]


def test_registered_metrics_on_the_matrix_so_far():
    from framework.metrics import MatrixView, compute_metrics

    view = MatrixView([[0.8, 0.1, None], [0.6, 0.9, 0.3], [0.5, 0.7, 0.95]], ["a", "b", "c"])
    values = compute_metrics(["learning_accuracy", "min_accuracy"], view)
    assert values["learning_accuracy"] == pytest.approx((0.8 + 0.9 + 0.95) / 3)  # each task right after it was trained
    assert values["min_accuracy"] == pytest.approx(0.5)
    first_row = compute_metrics(["min_accuracy"], MatrixView([[0.8, 0.1, None]], ["a", "b", "c"]))
    assert first_row["min_accuracy"] == pytest.approx(0.8)  # b is not trained yet: its zero-shot cell does not count


def test_an_unknown_metric_is_refused_before_training():
    from framework.callbacks import ContinualEvaluation

    with pytest.raises(ValueError, match=r"ContinualEvaluation: metrics: unknown continual metric 'learning_acc'; registered: .*did you mean 'learning_accuracy'"):
        ContinualEvaluation(metrics=["learning_acc"])
