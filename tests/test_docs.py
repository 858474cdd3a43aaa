"""The docs stay true: docs/cli.md equals what the parsers print now, every command in a code block
names a script and flags that exist, every relative link resolves."""
import glob
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT


def test_cli_reference_is_current():
    out = subprocess.run([sys.executable, "scripts/cli_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


DOCS = ["README.md", *sorted(glob.glob("docs/*.md", root_dir=ROOT)), "benchmarks/results/README.md"]


def commands(text: str) -> list[str]:
    """`python X.py ...` commands in the markdown's code blocks, continuation lines joined."""
    out = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S):
        for cmd in re.sub(r"\\\n\s*", " ", block).splitlines():
            m = re.search(r"(?:python|torchrun [^\n]*?)\s+((?:scripts/)?\w+\.py)\b(.*)", cmd)
            if m and not cmd.lstrip().startswith("#"):
                out.append((m.group(1), m.group(2)))
    return out


@pytest.mark.parametrize("doc", DOCS)
def test_commands_name_real_scripts_and_flags(doc):
    """Every script a doc's code block runs exists, and every --flag it passes is one the script has
    (parsing its --help; nothing is run)."""
    helps: dict = {}
    found = commands(open(os.path.join(ROOT, doc)).read())
    assert len(found) >= 5 or doc != "README.md"  # the README's commands are found at all
    for script, rest in found:
        assert os.path.isfile(os.path.join(ROOT, script)), f"{doc}: {script}: no such script"
        if script not in helps:
            helps[script] = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True,
                                           text=True).stdout
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest):
            assert re.search(rf"{re.escape(flag)}\b", helps[script]), f"{doc}: {script} has no {flag}"


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_resolve(doc):
    text = open(os.path.join(ROOT, doc)).read()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "#")):
            continue
        path = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), target.split("#")[0]))
        assert os.path.exists(path), f"{doc}: link {target} leads nowhere"


def test_every_result_file_has_a_provenance_row():
    """benchmarks/results/README.md's provenance table names every result file (a backticked name or
    glob in a row's first cell), so each table's command, date and commit can be found."""
    import fnmatch

    text = open(os.path.join(ROOT, "benchmarks/results/README.md")).read()
    rows = [line.split("|")[1] for line in text.splitlines() if line.startswith("| `")]
    names = [n for cell in rows for n in re.findall(r"`([^`]+)`", cell)]
    assert len(names) >= 20, names  # the table was found
    files = [f for f in os.listdir(os.path.join(ROOT, "benchmarks/results"))
             if f.endswith((".md", ".png")) and f != "README.md"]
    missing = [f for f in files if not any(fnmatch.fnmatch(f, n) for n in names)]
    assert not missing, f"benchmarks/results/README.md: no provenance row for {missing}"
