"""The front door lists what the registry holds: every registered attention mechanism has a row in the
README's mechanism table and in docs/mechanisms.md's, and no row names a mechanism that is not registered."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from models.attention import list_attentions

ROOT = Path(__file__).resolve().parents[1]


def table_names(path: Path) -> set:
    """The `name`s that open a row of a markdown table whose header's first column is `name`."""
    names, in_table = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("| name |"):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        elif in_table:
            m = re.match(r"\| `([a-z_0-9]+)` \|", line)
            if m:
                names.add(m.group(1))
    return names


@pytest.mark.parametrize("doc", ["README.md", "docs/mechanisms.md"])
def test_mechanism_tables_match_the_registry(doc):
    names = table_names(ROOT / doc)
    registered = set(list_attentions())
    assert not registered - names, f"{doc}: no table row for {sorted(registered - names)}"
    assert not names - registered, f"{doc}: rows for unregistered {sorted(names - registered)}"
