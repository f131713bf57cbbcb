"""raysl's import layers, checked by import-linter (the contracts are in pyproject.toml, [tool.importlinter]).

Bug these catch: an import that points up or sideways, lazy ones inside functions included. Before the
contracts, `raysl analyze` and its reports imported raysl.scale, whose pure scaling fits shared a file with
the code that starts Ray (scale -> search -> launch -> train); report and analyze imported each other
(report -> analyze -> scaling_report -> report, a cycle); data.imagefolder imported the training run's
progress relay; data.shards and data.imagefolder imported each other's private helpers. Nothing failed
until someone moved code and an import cycle or a Ray start turned up where no one expected it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")
HANG = 600  # only a guard against a hang; a check takes a second or two


def lint_imports(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert Path(LINT_IMPORTS).exists(), f"{LINT_IMPORTS} is missing: pip install -e '.[test]' (import-linter)"
    return subprocess.run([LINT_IMPORTS, "--no-cache", "--no-logo", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=HANG)


def test_raysl_keeps_its_import_contracts():
    """Every contract in pyproject.toml holds: layers only import down, no import cycles, and reading
    finished experiments imports nothing that trains or starts Ray."""
    done = lint_imports(cwd=ROOT)
    assert done.returncode == 0, f"lint-imports exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert "0 broken" in done.stdout, done.stdout


def test_an_upward_import_fails_the_check(tmp_path):
    """The check can fail: in a throw-away package whose lower layer imports the upper one (lazily, inside
    a function, as raysl's upward imports were), lint-imports with that package's own config exits non-zero
    and names the import."""
    package = tmp_path / "layered"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "upper.py").write_text("from layered import lower\n\n\ndef run():\n    return lower.value()\n")
    (package / "lower.py").write_text("def value():\n    from layered import upper  # points up\n\n"
                                      "    return upper.__name__\n")
    config = tmp_path / "layers.toml"
    config.write_text(textwrap.dedent("""\
        [tool.importlinter]
        root_package = "layered"

        [[tool.importlinter.contracts]]
        id = "layers"
        name = "upper over lower"
        type = "layers"
        layers = ["layered.upper", "layered.lower"]
        """))
    done = lint_imports(str(config), cwd=tmp_path)
    assert done.returncode != 0, f"lint-imports passed an upward import:\n{done.stdout}\n{done.stderr}"
    assert "layered.lower -> layered.upper" in done.stdout, done.stdout


def test_pyflakes_finds_no_undefined_or_unused_name():
    """ruff's pyflakes rules (F: undefined names, unused imports, redefinitions) on raysl/ and tests/. Catches
    what a rename leaves behind on a path the tests may not run: pbt.start_of still used TRAIN_RUN after it
    was merged into outcome.TRAIN_RUN_NAME, and every PBT and multi-node test failed with a NameError in a CI
    run."""
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "F", "--output-format",
                           "concise", "raysl", "tests"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
