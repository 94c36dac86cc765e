"""Bad input through `medcl fit`: one line on stderr naming the file, the field, what was expected
and what was found, and no traceback."""
import re
import sys

import numpy as np
import pytest

from framework.cli import main


@pytest.fixture
def bad_files(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    split = np.array([0, 0, 1, 1, 2, 2], np.uint8)
    np.savez(tmp_path / "shape.npz", images=images, masks=np.zeros((6, 16, 18), np.uint8), split=split)
    masks = np.zeros((6, 16, 16), np.uint8)
    masks[2, 3, 3] = 2
    np.savez(tmp_path / "nonbinary.npz", images=images, masks=masks, split=split)
    (tmp_path / "surv").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / "surv" / f"p{i}.png")
    rows = lambda f: "id,time,event\n" + "\n".join(f(i) for i in range(6))  # noqa: E731
    (tmp_path / "neg.csv").write_text(rows(lambda i: f"p{i},{-1 if i == 3 else i + 1},1"))
    (tmp_path / "event.csv").write_text(rows(lambda i: f"p{i},{i + 1},{2 if i == 4 else 1}"))
    (tmp_path / "missing.csv").write_text(rows(lambda i: f"p{i},{i + 1},1") + "\np9,3,1")
    return tmp_path


CASES = [
    ("data_modules.SegmentationDataModule", {"file": "shape.npz"},
     r"shape.npz: field 'masks' expected the spatial shape of 'images' \(16, 16\) for every sample, found \(16, 18\)"),
    ("data_modules.SegmentationDataModule", {"file": "nonbinary.npz"},
     r"nonbinary.npz: field 'masks' expected binary values \{0,1\} \(or \{0,255\}\) for a task with one label, found values \[0, 2\]"),
    ("data_modules.SurvivalDataModule", {"images": "surv", "table": "neg.csv"},
     r"neg.csv: column 'time' at line 5 \(id 'p3'\) expected a finite number >= 0, found '-1'"),
    ("data_modules.SurvivalDataModule", {"images": "surv", "table": "event.csv"},
     r"event.csv: column 'event' at line 6 \(id 'p4'\) expected 0 \(censored\) or 1 \(event\), found '2'"),
    ("data_modules.SurvivalDataModule", {"images": "surv", "table": "missing.csv"},
     r"missing.csv: column 'id' value 'p9' has no image file in .*surv"),
]


@pytest.mark.parametrize("class_path, args, message", CASES)
def test_bad_input_is_one_line(bad_files, monkeypatch, capsys, class_path, args, message):
    init = ", ".join(f"{k}: {bad_files / v}" for k, v in args.items())
    argv = ["medcl", "fit", "--model", "framework.paradigms.JointModule", "--data", "data_modules.DomainStream",
            "--data.init_args.domains", f"[{{class_path: {class_path}, init_args: {{{init}}}}}]",
            "--trainer.max_epochs", "1", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(bad_files / "run")]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.delenv("MEDCL_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("medcl: error:")]
    assert re.search(message, line), line
    assert "Traceback" not in err
