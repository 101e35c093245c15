"""Regenerate the file lists in ChestCTMTL/CMakeLists.txt from what is on disk.

Run after adding or removing a module script or resource; Testing/test_structure.py fails
while the lists and the tree disagree, so a forgotten file never goes missing from the
installed extension.
"""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "ChestCTMTL"


def _listing(root: Path, base: Path, pattern: str) -> list:
    return sorted(str(p.relative_to(base)) for p in root.rglob(pattern)
                  if p.is_file() and "__pycache__" not in p.parts)


def main() -> None:
    cmake = MODULE / "CMakeLists.txt"
    text = cmake.read_text()
    lists = {
        "MODULE_PYTHON_SCRIPTS": _listing(MODULE, MODULE, "*.py"),
        "MODULE_PYTHON_RESOURCES": _listing(MODULE / "Resources", MODULE, "*"),
        "EXTENSION_RESOURCES": _listing(REPO / "Resources", REPO / "Resources", "*"),
    }
    for variable, items in lists.items():
        body = "".join(f"  {item}\n" for item in items)
        text, count = re.subn(r"set\(\s*" + variable + r"\s+.*?\)",
                              f"set({variable}\n{body}  )", text, flags=re.S)
        assert count == 1, f"{variable} not found once in {cmake}"
    cmake.write_text(text)
    print(f"updated {cmake.relative_to(REPO)}: " + ", ".join(f"{k} {len(v)}" for k, v in lists.items()))


if __name__ == "__main__":
    main()
