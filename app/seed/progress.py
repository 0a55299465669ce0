"""How a long seed reports what it is doing: a few lines and a row counter. The loading code
only talks to a `Progress`, so that it prints nothing of its own; `ConsoleProgress` writes to
stderr, with a bar that redraws on a terminal."""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from typing import Protocol

import typer


class Counter(Protocol):
    def update(self, n_steps: int) -> None: ...


class Progress(Protocol):
    def say(self, message: str) -> None: ...

    def counting(self, total: int, label: str) -> AbstractContextManager[Counter]: ...


class ConsoleProgress:
    def say(self, message: str) -> None:
        typer.echo(message, err=True)

    def counting(self, total: int, label: str) -> AbstractContextManager[Counter]:
        return typer.progressbar(
            length=total, label=label, show_pos=True, show_percent=True, file=sys.stderr
        )
