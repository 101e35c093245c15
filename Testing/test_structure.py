"""The extension's build lists every file the installed module needs, and the core stays free
of Slicer, VTK and Qt (so it runs identically in training and plain Python)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "ChestCTMTL"
FORBIDDEN = {"slicer", "vtk", "vtkmodules", "qt", "ctk", "PythonQt", "PyQt5", "PySide2",
             "PySide6", "ChestCTMTLMRML"}


def _cmake_list(text: str, variable: str) -> list:
    match = re.search(r"set\(\s*" + variable + r"\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set in ChestCTMTL/CMakeLists.txt"
    items = []
    for line in match.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        items.extend(line.split())
    return [i.replace("${MODULE_NAME}", "ChestCTMTL") for i in items]


def _files(root: Path, patterns) -> set:
    found = set()
    for pattern in patterns:
        for path in root.rglob(pattern):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            found.add(path)
    return found


def test_module_cmake_lists_every_script_and_resource():
    text = (MODULE / "CMakeLists.txt").read_text()
    scripts = {MODULE / p for p in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    resources = {MODULE / p for p in _cmake_list(text, "MODULE_PYTHON_RESOURCES")}
    extension = {REPO / "Resources" / p for p in _cmake_list(text, "EXTENSION_RESOURCES")}

    for listed in scripts | resources | extension:
        assert listed.is_file(), f"CMakeLists lists {listed.relative_to(REPO)}, which does not exist"
    on_disk_scripts = _files(MODULE, ["*.py"])
    missing = sorted(str(p.relative_to(REPO)) for p in on_disk_scripts - scripts)
    assert not missing, f"scripts not listed in MODULE_PYTHON_SCRIPTS: {missing}"
    on_disk_resources = _files(MODULE / "Resources", ["*"])
    missing = sorted(str(p.relative_to(REPO)) for p in on_disk_resources - resources)
    assert not missing, f"resources not listed in MODULE_PYTHON_RESOURCES: {missing}"
    on_disk_extension = _files(REPO / "Resources", ["*"])
    missing = sorted(str(p.relative_to(REPO)) for p in on_disk_extension - extension)
    assert not missing, f"extension resources (models included) not listed: {missing}"
    assert "slicer_add_python_unittest" in text


def _imported_modules(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0], node.lineno
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                in ("import_module", "__import__") and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            yield node.args[0].value.split(".")[0], node.lineno


def test_core_library_never_imports_slicer_vtk_or_qt():
    offenders = []
    for path in sorted((MODULE / "ChestCTMTLLib").rglob("*.py")):
        for name, line in _imported_modules(path):
            if name in FORBIDDEN:
                offenders.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_forbidden_import_detector_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import vtk\n    from qt import QTimer\n")
    names = {n for n, _ in _imported_modules(bad)}
    assert {"vtk", "qt"} <= names


def test_code_for_slicer_runs_on_python39_syntax():
    """Slicer 5.8 ships Python 3.9: every module file needs postponed annotations, no `match`."""
    problems = []
    for path in sorted(list(MODULE.rglob("*.py")) + list((REPO / "ChestCTMTLTraining").rglob("*.py"))):
        if "__pycache__" in path.parts:
            continue
        text = path.read_text()
        try:  # the parser's 3.9 grammar rejects match, parenthesised with-items, etc.
            tree = ast.parse(text, feature_version=(3, 9))
        except SyntaxError as exc:
            problems.append(f"{path.relative_to(REPO)}:{exc.lineno}: not Python 3.9 syntax: {exc.msg}")
            continue
        if text.strip() and "from __future__ import annotations" not in text:
            problems.append(f"{path.relative_to(REPO)}: missing 'from __future__ import annotations'")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("isinstance", "issubclass") \
                    and len(node.args) == 2 and isinstance(node.args[1], ast.BinOp):
                problems.append(f"{path.relative_to(REPO)}:{node.lineno}: X | Y type at run time")
            if isinstance(node, ast.keyword) and node.arg in ("slots", "kw_only"):
                problems.append(f"{path.relative_to(REPO)}:{node.lineno}: dataclass {node.arg}= (3.10+)")
    assert not problems, "\n".join(problems)


def _python39():
    import glob
    import shutil

    import subprocess

    candidates = sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / "3.9*" / "bin" / "python")))
    candidates += [c for c in [shutil.which("python3.9")] if c]
    for candidate in candidates:  # a pyenv shim may exist without a usable 3.9 behind it
        try:
            out = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and "3.9" in out.stdout + out.stderr:
            return candidate
    return None


def test_module_code_compiles_with_a_real_python39():
    """Stronger than the grammar check above when an interpreter is around (Slicer 5.8's Python)."""
    import subprocess

    import pytest

    python39 = _python39()
    if python39 is None:
        pytest.skip("no Python 3.9 interpreter on this machine")
    files = [str(p) for p in sorted(list(MODULE.rglob("*.py")) + list((REPO / "ChestCTMTLTraining").rglob("*.py")))
             if "__pycache__" not in p.parts]
    code = ("import sys\nbad = []\nfor f in sys.argv[1:]:\n    try:\n"
            "        compile(open(f, encoding='utf-8').read(), f, 'exec')\n"
            "    except SyntaxError as e:\n        bad.append('%s:%s: %s' % (f, e.lineno, e.msg))\n"
            "print('\\n'.join(bad))\nsys.exit(1 if bad else 0)\n")
    proc = subprocess.run([python39, "-c", code] + files, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
