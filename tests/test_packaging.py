"""``pip install .`` installs cococo_core (every sub-package, nothing else) with the ``cococo`` command;
.ci/stage-20-package.sh installs it for real and runs it from outside the checkout."""
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_library_package_and_nothing_else_is_listed():
    found = sorted(".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "cococo_core").rglob("__init__.py")
                   if "__pycache__" not in init.parts)
    assert PROJECT["build-system"]["build-backend"] == "setuptools.build_meta"
    from setuptools import find_packages

    include = PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(find_packages(str(ROOT), include=include)) == found


def test_the_console_command_is_the_cli():
    module, _, name = PROJECT["project"]["scripts"]["cococo"].partition(":")
    assert getattr(importlib.import_module(module), name) is importlib.import_module("cococo_core.cli").main


def test_help_names_the_program_as_it_was_started(tmp_path):
    launcher = tmp_path / "cococo"
    launcher.write_text("import sys\nfrom cococo_core.cli import main\nsys.exit(main())\n")
    as_command = subprocess.run([sys.executable, str(launcher), "--help"], capture_output=True, text=True, cwd=ROOT,
                                timeout=120, env={"PYTHONPATH": str(ROOT)})
    as_module = subprocess.run([sys.executable, "-m", "cococo_core", "mask", "--help"], capture_output=True, text=True,
                               cwd=ROOT, timeout=120)
    assert as_command.stdout.startswith("usage: cococo ")
    assert as_module.stdout.startswith("usage: python -m cococo_core mask ")

