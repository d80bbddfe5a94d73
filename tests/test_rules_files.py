"""A broken rules path reports every mistake in every file, one a line, each naming file and line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rules import RulesError, Ruleset

AIRLOCK = str(Path(sys.executable).parent / "airlock")

THREE_SCHEMA_MISTAKES = """\
version: 1
egress:
  allow: [{host: api.test, ports: [70000]}]
rules:
  - id: fine
    match: {method: DELETE}
    action: deny
  - id: typo
    match: {mthod: POST}
    action: deny
  - id: misspelt-verdict
    match: {method: PUT}
    action: dney
"""

THREE_RULE_MISTAKES = """\
version: 1
rules:
  - id: twice
    match: {method: DELETE}
    action: deny
  - id: twice
    match: {method: PUT}
    action: deny
  - id: sets-and-matches-effect
    match: {any: [{effect: read}]}
    effect: write
  - id: fine
    match: {method: PATCH}
    action: log
  - id: keyless
    match: {method: POST}
    dedup: {key: "no fields here"}
"""


def load_errors(path: Path) -> list[str]:
    """The lines of the RulesError that loading `path` raises."""
    with pytest.raises(RulesError) as err:
        Ruleset.load(path)
    lines = str(err.value).splitlines()
    assert list(err.value.problems) == lines
    return lines


def test_three_schema_mistakes_are_three_lines_in_file_order(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(THREE_SCHEMA_MISTAKES)
    lines = load_errors(f)
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"{f}:3:") and "egress.allow[0].ports[0]" in lines[0]
    assert lines[1].startswith(f"{f}:9:") and "rules[1].match.mthod: unknown key 'mthod'" in lines[1]
    assert lines[2].startswith(f"{f}:13:") and "rules[2].action: 'dney' is not one of" in lines[2]


def test_three_rule_mistakes_are_three_lines_and_the_good_rules_are_not_blamed(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(THREE_RULE_MISTAKES)
    lines = load_errors(f)
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"{f}:6:") and "rules[1].id: 'twice' is already defined in" in lines[0]
    assert (
        lines[1].startswith(f"{f}:10:") and "a rule that sets effect cannot also match on effect" in lines[1]
    )
    assert lines[2].startswith(f"{f}:17:") and "rules[4].dedup.key:" in lines[2]
    assert "names no field of the action" in lines[2]


def test_every_file_of_a_directory_reports_its_own_mistakes(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("version: 1\nrules: [\n")  # not YAML at all
    (tmp_path / "b.yaml").write_text("version: 1\ndefaults: {delete: deny}\n")
    (tmp_path / "c.yaml").write_text("version: 1\nrules:\n  - {id: ok, match: {}, action: log}\n")
    lines = load_errors(tmp_path)
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{tmp_path / 'a.yaml'}:") and "not valid YAML" in lines[0]
    assert lines[1].startswith(f"{tmp_path / 'b.yaml'}:2:12: defaults.delete: unknown key 'delete'")


def test_a_mistake_in_a_rule_leaves_the_next_one_checked(tmp_path: Path) -> None:
    # The schema refuses rule 0; rule 1 is still compiled, and its own mistake reported.
    f = tmp_path / "r.yaml"
    f.write_text(
        textwrap.dedent(
            """\
            version: 1
            rules:
              - {id: a, match: {method: GET}, action: maybe}
              - {id: b, match: {body: {type: nonsense}}, action: deny}
            """
        )
    )
    lines = load_errors(f)
    assert [line.split(": ")[1] for line in lines] == ["rules[0].action", "rules[1].match.body"]


def test_rules_check_prints_every_mistake_after_invalid(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(THREE_SCHEMA_MISTAKES)
    done = subprocess.run([AIRLOCK, "rules", "check", str(f)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 3, done.stderr
    assert lines[0].startswith(f"invalid: {f}:3:")
    assert lines[1].startswith(f"{f}:9:") and lines[2].startswith(f"{f}:13:")
