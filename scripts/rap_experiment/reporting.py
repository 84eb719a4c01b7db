"""Markdown tables of the benchmark scripts and their tests (`markdown_table` is the model card's own)."""

from __future__ import annotations

from rap_hf.model_card import markdown_table

__all__ = ["markdown_table", "table_rows"]


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
