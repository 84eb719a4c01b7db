"""Markdown tables, shared by the model cards, the benchmark scripts and their tests."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (cells are written as given)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """Body rows (cells stripped) of the first Markdown table after `heading` in `markdown`."""
    if heading not in markdown:
        raise ValueError(f"missing section {heading!r}")
    table: list[str] = []
    for line in markdown.split(heading, 1)[1].splitlines():
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table[2:]]
