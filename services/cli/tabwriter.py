"""Go's text/tabwriter (left-aligned, space padding), so tables line up as Hubble's and
Cilium's do: cells end with a tab, a column is as wide as its widest cell plus the
padding, the last cell of a line is never padded, and a line without any tab ends
every column block above it."""
from __future__ import annotations


class TabWriter:
    def __init__(self, minwidth: int = 2, padding: int = 3) -> None:
        self.minwidth = minwidth
        self.padding = padding
        self._text = ""

    def write(self, s: str) -> None:
        self._text += s

    def render(self) -> str:
        out: list[str] = []
        lines = self._text.split("\n")
        trailing_newline = lines[-1] == ""
        if trailing_newline:
            lines.pop()
        block: list[list[str]] = []
        for line in lines:
            cells = line.split("\t")
            block.append(cells)
            if len(cells) == 1:  # Go flushes on a line without tabs
                out.extend(self._format(block))
                block = []
        out.extend(self._format(block))
        text = "\n".join(out)
        return text + "\n" if trailing_newline and out else text

    def _format(self, lines: list[list[str]]) -> list[str]:
        rendered: list[str] = []
        widths: list[int] = []

        def write_lines(a: int, b: int) -> None:
            for cells in lines[a:b]:
                parts = []
                for j, c in enumerate(cells):
                    if j < len(widths) and j < len(cells) - 1:
                        parts.append(c + " " * (widths[j] - len(c)))
                    else:
                        parts.append(c)
                rendered.append("".join(parts))

        def fmt(line0: int, line1: int) -> None:
            column = len(widths)
            this = line0
            while this < line1:
                if column >= len(lines[this]) - 1:
                    this += 1
                    continue
                write_lines(line0, this)
                line0 = this
                width = self.minwidth
                while this < line1 and column < len(lines[this]) - 1:
                    width = max(width, len(lines[this][column]) + self.padding)
                    this += 1
                widths.append(width)
                fmt(line0, this)
                widths.pop()
                line0 = this
            write_lines(line0, line1)

        fmt(0, len(lines))
        return rendered


def tabulate(text: str, minwidth: int = 2, padding: int = 3, strip: bool = False) -> str:
    """Render at once; strip=True drops the trailing spaces of padded empty cells."""
    tw = TabWriter(minwidth, padding)
    tw.write(text)
    out = tw.render()
    if strip:
        out = "\n".join(line.rstrip() for line in out.split("\n"))
    return out
