"""Progress for long work: a tqdm bar on a terminal, plain lines at a sensible rate elsewhere.

Under DVC or CI, stderr is not a terminal: a bar would write a carriage-return frame per
update into the log. There, a line is printed at every 10% of the work (and at the end), so a
whole `dvc repro` prints a few hundred lines at most.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from tqdm import tqdm


class Progress:
    """`update(n)`, `note(**fields)` (shown with the next line or bar refresh), `write(text)`
    (a line that does not break the bar), `close()`; also a context manager."""

    def __init__(self, total: int, desc: str, unit: str, *, enabled: bool = True,
                 stream: IO[str] | None = None, every: float = 0.1) -> None:
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled = enabled
        self.done = 0
        self.fields: dict[str, Any] = {}
        self.start = time.perf_counter()
        self.step = max(1, round(total * every)) if total else 1
        self.next_line = self.step
        terminal = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream,
                        dynamic_ncols=True) if terminal else None

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and self.total and (self.done >= self.next_line
                                              or self.done == self.total):
            while self.next_line <= self.done:
                self.next_line += self.step
            self._line()

    def note(self, **fields: Any) -> None:
        self.fields.update(fields)
        if self.bar is not None:
            self.bar.set_postfix(fields, refresh=False)

    def write(self, text: str) -> None:
        """A status line (printed even when progress is off), above the bar if one shows."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self) -> None:
        elapsed = time.perf_counter() - self.start
        share = self.done / self.total
        extra = "".join(f", {k} {v}" for k, v in self.fields.items())
        print(f"{self.desc}: {self.done}/{self.total} {self.unit} ({share:.0%}, "
              f"{elapsed:.0f} s{extra})", file=self.stream, flush=True)
