"""What the subcommands print: aligned tables (`segment-ops status`, `rejected`, `models list`)."""

from __future__ import annotations

from collections.abc import Sequence

CELL_WIDTH = 60  # a table cell longer than this is cut (`--json` prints whole values)


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], *,
                 numeric: frozenset[int] | set[int] = frozenset(), width: int | None = CELL_WIDTH) -> str:
    """`rows` under `header` in aligned columns (numbers right-aligned); a cell longer than `width` is cut
    with "…" (None: never cut), and line breaks become spaces. A row with fewer cells than the header ends in
    one that spans the rest of the line (a busy or unreadable sync's note), and does not widen the columns."""
    def limit(row: Sequence[str], i: int) -> int | None:
        spans = len(row) != len(header) and i == len(row) - 1
        return 3 * width if spans and width is not None else width

    cut = [[_cell(c, limit(row, i)) for i, c in enumerate(row)] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cut if len(row) == len(header) or i < len(row) - 1)
              for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i in numeric and r else c.ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=False))).rstrip()
             for r, row in enumerate(cut)]
    return "\n".join(lines)


def _cell(text: object, width: int | None) -> str:
    text = " ".join(str(text).split())
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def still_held(holder: str, held: object, seconds: float, undone: str, *, wait_option: bool = True) -> str:
    """What to say when `holder` kept the staging file (or state) `held` locked for all of `seconds` (a
    `StagingLockedError`): "<holder> still holds <held> after <N>s; nothing was <undone>. Run again ...",
    naming `--wait` when the command has it."""
    longer = ", or with a longer --wait" if wait_option else ""
    return (f"{holder} still holds {held} after {seconds:.0f}s; nothing was {undone}. Run again when it has "
            f"finished{longer}.")
