"""Running the API under uvicorn, with its worker processes sharing connections evenly.

With several workers, `uvicorn.run` binds one listening socket in the supervisor and every
worker accepts from it. Linux wakes the waiters of one accept queue last-in first-out, so the
worker that was idle most recently takes most new connections: under the load runner's 64
keep-alive connections two workers held 47 and 17, and the busy one's queue set the latency
of the whole service while the other idled (uvicorn discussion 2467, and its open pull
request 2472 for an option that does what this module does).

Here each worker listens on a socket of its own, all bound to the same address with
`SO_REUSEPORT`, and the kernel spreads new connections over them by a hash of their
addresses. The supervisor stays uvicorn's (`Multiprocess`: health checks, restarts, signals);
what it hands each worker process is a recipe for its socket instead of a shared one, so a
worker it restarts binds its own too. The supervisor keeps a socket bound to the address,
never listening (it is given no connections), so that a port in use fails at once, a port
of 0 picks one free port for all, and the port stays reserved while workers restart.

One worker, or a system without `SO_REUSEPORT` load balancing, runs `uvicorn.run` unchanged.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any, cast

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

logger = logging.getLogger("uvicorn.error")


def balanced() -> bool:
    """Whether the kernel spreads connections over sockets bound with `SO_REUSEPORT`: Linux
    does; other systems accept the option but hand every connection to one socket."""
    return sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def _bound(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A worker's own listening socket on the shared address."""
    sock = _bound(host, port)
    sock.listen(backlog)
    return sock


class WorkerSocket:
    """What the supervisor passes each worker in place of a socket: pickled for the worker
    process (uvicorn starts workers with `spawn`), it arrives there as the worker's own
    listening socket."""

    def __init__(self, host: str, port: int, backlog: int) -> None:
        self.host, self.port, self.backlog = host, port, backlog

    def __reduce__(self) -> tuple[Any, tuple[str, int, int]]:
        return listening_socket, (self.host, self.port, self.backlog)


def run(app: str, *, host: str, port: int, workers: int, **options: Any) -> None:
    """`uvicorn.run(app, host=host, port=port, workers=workers, **options)`, with each of
    several workers listening on its own `SO_REUSEPORT` socket."""
    if workers == 1 or not balanced():
        uvicorn.run(app, host=host, port=port, workers=workers, **options)
        return
    config = uvicorn.Config(app, host=host, port=port, workers=workers, **options)
    try:
        reservation = _bound(host, port)
    except OSError as exc:
        logger.error(exc)
        sys.exit(STARTUP_FAILURE)  # as uvicorn exits when it cannot bind
    with reservation:
        bound_port = reservation.getsockname()[1]
        logger.info(
            "Uvicorn running on http://%s:%d with %d workers, each on its own socket "
            "(Press CTRL+C to quit)",
            host,
            bound_port,
            workers,
        )
        recipe = WorkerSocket(host, bound_port, config.backlog)
        # Multiprocess passes its sockets through to each worker without using them itself.
        Multiprocess(config, sockets=[cast("socket.socket", recipe)]).run()
