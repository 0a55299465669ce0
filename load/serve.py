"""`python -m load.serve APP [uvicorn's flags]`: the runner's servers, run the way `carebook serve`
runs Carebook (`app.kit.serving`: with several workers, each on its own socket).

It takes the subset of uvicorn's command line that the runner passes, under uvicorn's names,
so that Carebook and the baselines are started with the same flags.
"""

from __future__ import annotations

import argparse

from app.kit import serving


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m load.serve", description=__doc__)
    parser.add_argument("app", help="module:attribute of the app (or of its factory)")
    parser.add_argument("--factory", action="store_true", help="APP is an app factory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--loop", default="uvloop")
    parser.add_argument("--http", default="httptools")
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument("--no-server-header", action="store_true")
    args = parser.parse_args(argv)
    serving.run(
        args.app,
        factory=args.factory,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop=args.loop,
        http=args.http,
        access_log=not args.no_access_log,
        server_header=not args.no_server_header,
    )


if __name__ == "__main__":
    main()
