"""The import direction: data_modules -> framework.core <- the rest of framework; framework never imports data_modules.

Checked statically on the import graph (grimp, the library behind import-linter), so an import
inside a function counts too, and by importing the core in a fresh process.
"""
from __future__ import annotations

import subprocess
import sys

import grimp
import pytest

from conftest import REPO

HEAVY_LIBRARIES = ("open_clip", "timm", "peft", "transformers", "monai")
#: checked in a fresh process (transformers is left out: torchmetrics, which Lightning loads, imports it when installed)
LOADED_LIBRARIES = ("open_clip", "timm", "peft", "monai")


@pytest.fixture(scope="module")
def graph():
    sys.path.insert(0, str(REPO))
    return grimp.build_graph("framework", "data_modules", include_external_packages=True)


def _imports(graph, module):
    return {(module, imported) for imported in graph.find_modules_directly_imported_by(module)}


def _all_imports(graph, package):
    return {pair for module in graph.find_descendants(package) | {package} for pair in _imports(graph, module)}


def test_framework_never_imports_data_modules(graph):
    bad = sorted((a, b) for a, b in _all_imports(graph, "framework") if b == "data_modules" or b.startswith("data_modules."))
    assert not bad, f"framework/ imports data_modules/ (use the protocol in framework/core/data_protocol.py): {bad}"


def test_the_core_imports_only_the_core_and_no_model_library(graph):
    bad = sorted(
        (a, b) for a, b in _all_imports(graph, "framework.core")
        if (b.startswith("framework") and not (b == "framework" or b.startswith("framework.core"))) or b.split(".")[0] in HEAVY_LIBRARIES + ("data_modules",)
    )
    assert not bad, f"framework.core must stay neutral: {bad}"


#: what data_modules/ may use of framework/: the core, and the C-index metric (torchmetrics + torchsurv, no model library)
DATA_MAY_IMPORT = ("framework.core", "framework.metrics.survival", "framework.metrics")


def test_data_modules_use_only_the_core_of_framework(graph):
    bad = sorted(
        (a, b) for a, b in _all_imports(graph, "data_modules")
        if b.startswith("framework") and not any(b == ok or b.startswith(ok + ".") for ok in DATA_MAY_IMPORT) and b != "framework"
    )
    assert not bad, f"data_modules/ may import only {DATA_MAY_IMPORT} of framework/: {bad}"


def test_importing_every_data_module_loads_no_model_tower():
    code = (
        "import sys, pkgutil, importlib, data_modules; "
        "[importlib.import_module('data_modules.' + m.name) for m in pkgutil.iter_modules(data_modules.__path__)]; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'open_clip', 'timm', 'peft'}), "
        "sorted(m for m in sys.modules if m.startswith('framework.') and not m.startswith(('framework.core', 'framework.metrics'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[] []", out.stdout


def test_importing_the_core_loads_no_model_library():
    code = (
        "import sys; import framework.core.specs, framework.core.seeding, framework.core.checkpoints, framework.core.divergence, "
        "framework.core.data_protocol, framework.core.registry; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({LOADED_LIBRARIES + ('data_modules',)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


def test_the_import_linter_contracts_hold():
    """`lint-imports` reads the contracts in setup.cfg; they must be kept, not only written."""
    from pathlib import Path

    lint = Path(sys.executable).parent / "lint-imports"  # installed beside this Python by the dev extra
    out = subprocess.run([str(lint), "--config", "setup.cfg", "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken" in out.stdout, out.stdout[-2000:]
