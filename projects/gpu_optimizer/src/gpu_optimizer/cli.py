"""`gpu-optimizer` command line."""

from __future__ import annotations

import argparse
import sys


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gpu_optimizer.settings import get_settings

    settings = get_settings()
    uvicorn.run(
        "gpu_optimizer.api:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level=settings.log_level,
    )
    return 0


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def _top(args: argparse.Namespace) -> int:
    from gpu_optimizer.top import run_top

    return run_top(interval=args.interval, once=args.once)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpu-optimizer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8002)")
    serve.set_defaults(func=_serve)
    top = sub.add_parser("top", help="terminal GPU monitor (memory, utilization, power, processes)")
    top.add_argument("--interval", type=_positive_seconds, default=1.0, help="seconds (default 1)")
    top.add_argument("--once", action="store_true", help="print one table and exit")
    top.set_defaults(func=_top)
    from gpu_optimizer.commands import add_memory_commands

    add_memory_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
