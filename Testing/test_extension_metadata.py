"""What the Slicer Extensions Index and the Extensions Manager read about this extension.

ChestCTMTL.json (the entry to submit to Slicer/ExtensionsIndex) is checked against the index's
own schemas, vendored unchanged in Testing/extensions_index/ (source and commit in its README),
and against the checks of the index's scripts/check_description_files.py that need no network:
file name = CMake project(), LF line endings, an https scm_url to a repository whose name starts
with "Slicer", the category and dependencies the top-level CMakeLists.txt declares. The
CMake URLs must name files that this repository ships.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "ChestCTMTL.json"
SCHEMAS = sorted((Path(__file__).parent / "extensions_index").glob("*.json"))
CMAKE = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
#: The draft-07 keywords _validate understands; a schema using another one fails the test
#: instead of being half-checked.
KNOWN_KEYWORDS = {"$schema", "$id", "type", "title", "description", "required",
                  "additionalProperties", "properties", "enum", "default", "minimum", "maximum",
                  "items", "additionalItems"}
TYPES = {"object": dict, "string": str, "array": list, "boolean": bool, "integer": int}


def _cmake_value(variable: str) -> str:
    # the index's own pattern (check_cmakelists_content): a literal, double-quoted string
    match = re.search(r'set\s*\(%s\s*"([^"]+)"[ ]*\)' % variable, CMAKE, re.IGNORECASE)
    assert match, "{} is not set to a literal string in CMakeLists.txt".format(variable)
    return match.group(1)


def _is_type(value, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, TYPES[name])


def _validate(value, schema: dict, where: str = "entry") -> list:
    """Errors of ``value`` against ``schema`` (the subset of draft-07 the index uses)."""
    unknown = set(schema) - KNOWN_KEYWORDS
    assert not unknown, "schema keywords this check does not implement: {}".format(unknown)
    errors = []
    if "type" in schema and not _is_type(value, schema["type"]):
        return ["{}: {!r} is not of type {}".format(where, value, schema["type"])]
    if "enum" in schema and value not in schema["enum"]:
        errors.append("{}: {!r} is not one of {}".format(where, value, schema["enum"]))
    if "minimum" in schema and value < schema["minimum"]:
        errors.append("{}: {} < minimum {}".format(where, value, schema["minimum"]))
    if "maximum" in schema and value > schema["maximum"]:
        errors.append("{}: {} > maximum {}".format(where, value, schema["maximum"]))
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append("{}: required property {!r} is missing".format(where, key))
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                errors += _validate(item, properties[key], "{}.{}".format(where, key))
            elif schema.get("additionalProperties", True) is False:
                errors.append("{}: property {!r} is not allowed".format(where, key))
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for n, item in enumerate(value):
            errors += _validate(item, schema["items"], "{}[{}]".format(where, n))
    return errors


def test_the_vendored_schemas_are_there():
    assert [p.name for p in SCHEMAS] == ["slicer-extension-catalog-entry-schema-v1.0.1.json",
                                         "slicer-extension-catalog-entry-schema-v1.0.2.json"]


@pytest.mark.parametrize("schema_path", SCHEMAS, ids=lambda p: p.stem)
def test_entry_is_valid_against_the_index_schema(schema_path):
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    assert _validate(entry, schema) == []


def test_the_validator_can_fail():
    schema = json.loads(SCHEMAS[-1].read_text(encoding="utf-8"))
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    broken = dict(entry, tier=7, maintainers=["someone"], build_dependencies="PyTorch")
    del broken["scm_url"]
    errors = " | ".join(_validate(broken, schema))
    for expected in ("'scm_url' is missing", "7 > maximum 5", "'maintainers' is not allowed",
                     "build_dependencies: 'PyTorch' is not of type array"):
        assert expected in errors


def test_entry_names_a_schema_the_index_knows():
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    name = entry["$schema"].split("#")[0].rsplit("/", 1)[-1]
    assert name in [p.name for p in SCHEMAS]


def test_entry_agrees_with_the_cmake_lists():
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    project = re.search(r"project\s*\(\s*([^\s\)]+)", CMAKE, re.IGNORECASE).group(1)
    assert ENTRY.stem == project == "ChestCTMTL"  # the index names the file after project()
    assert entry["category"] == _cmake_value("EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == _cmake_value("EXTENSION_DEPENDS").split()
    assert "PyTorch" in entry["build_dependencies"]
    assert b"\r" not in ENTRY.read_bytes()  # the index refuses CR / CRLF line endings


def _owner_repo_branch_path(url: str):
    """(owner, repository, branch, path in the repository) of a GitHub file URL."""
    parts = urlsplit(url)
    segments = parts.path.strip("/").split("/")
    if parts.netloc == "raw.githubusercontent.com":
        return segments[0], segments[1], segments[2], "/".join(segments[3:])
    assert parts.netloc == "github.com" and len(segments) > 4 and segments[2] == "blob", \
        "{} does not name a file of the repository".format(url)
    return segments[0], segments[1], segments[3], "/".join(segments[4:])


def test_cmake_urls_name_shipped_files_of_the_one_repository():
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    scm = urlsplit(entry["scm_url"])
    assert scm.scheme == "https"
    owner, name = scm.path.strip("/").split("/")
    name = name[:-4] if name.endswith(".git") else name
    assert name.startswith("Slicer")  # the index's check_git_repository_name
    urls = [_cmake_value("EXTENSION_HOMEPAGE"), _cmake_value("EXTENSION_ICONURL")] + \
        _cmake_value("EXTENSION_SCREENSHOTURLS").split()
    for url in urls:
        url_owner, url_name, branch, path = _owner_repo_branch_path(url)
        assert (url_owner, url_name, branch) == (owner, name, entry["scm_revision"]), url
        assert (REPO / path).is_file(), "{} names {}, which is not in the repository".format(url, path)
    for url in urls[1:]:  # the index accepts PNG, JPEG or GIF pictures
        path = REPO / _owner_repo_branch_path(url)[3]
        head = path.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8") or \
            head.startswith(b"GIF8"), path
        assert path.stat().st_size < 300 * 1024, path
