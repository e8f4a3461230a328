"""Progress as lines on a stream, for runs without a terminal (a log, CI, nohup) where the tqdm
bars hide: the one writer behind ``hwq attack``'s and the compile fidelity pass's input lines
(``hwq.attack.suite.ProgressLines``), ``hwq compile --target truenorth``'s layer lines
(``hwq.cli.core.compile_progress``) and ``hwq truenorth run``'s tick lines
(``hwq_targets.truenorth.cli.TickProgress``).

A job quicker than ``PROGRESS_AFTER_S`` writes no lines (the terminal's bar hides itself too);
callers that must report from the start (``hwq attack``) pass ``after=0``."""

from __future__ import annotations

import sys
import time

PROGRESS_AFTER_S = 2.0  # seconds a job runs before its progress lines start


class ShareLines:
    """A line on ``stream`` at every ``every`` share of ``total``, once ``after`` seconds have
    run since it was made: ``{label}: {done}/{total} {unit} ({pct} %), {elapsed:.1f} s``
    (``truenorth run: 5000/50000 ticks (10 %), 3.2 s``). ``show(done)`` hears of the work done
    so far; marks passed before ``after`` are skipped, not caught up (the next line comes at the
    next mark). ``after=None`` is ``PROGRESS_AFTER_S``; ``clock`` (seconds) is for tests."""

    def __init__(self, total: int, label: str, unit: str, *, stream=None, every: float = 0.1,
                 after: float | None = None, clock=None):
        self.total, self.label, self.unit, self.every = max(1, int(total)), label, unit, every
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock or time.perf_counter
        self.after = PROGRESS_AFTER_S if after is None else after
        self.start = self.clock()
        self.done = 0
        self.next_mark = every

    def elapsed(self) -> float:
        return self.clock() - self.start

    def due(self) -> bool:
        """Whether the job has run ``after`` seconds, so its lines may show."""
        return not self.after or self.elapsed() >= self.after

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def show(self, done: int) -> None:
        self.done = int(done)
        share = self.done / self.total
        if share + 1e-12 < self.next_mark:
            return
        while self.next_mark <= share + 1e-12:
            self.next_mark += self.every
        elapsed = self.elapsed()
        if not self.after or elapsed >= self.after:
            self.write(f"{self.label}: {self.done}/{self.total} {self.unit} ({100 * min(share, 1):.0f} %), "
                       f"{elapsed:.1f} s")
