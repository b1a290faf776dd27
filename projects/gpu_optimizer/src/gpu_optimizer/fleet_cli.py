"""The ``measure-fleet`` subcommand's parser and handler; the work is in :mod:`gpu_optimizer.fleet`.

Kept apart so registering the command imports neither torch nor Ray.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 8,16,32, got {text!r}")
    return sizes


def _measure_fleet(args: argparse.Namespace) -> int:
    from gpu_optimizer.cluster import ClusterError
    from gpu_optimizer.fleet import FleetWorkload, NoGpuInCluster, measure_fleet
    from gpu_optimizer.models import parse_shape
    from gpu_optimizer.settings import get_settings
    from gpu_optimizer.storage import Database

    workload = FleetWorkload(
        args.model,
        parse_shape(args.input_shape),
        args.batch_sizes,
        args.optimizer,
        args.dtype,
        args.mode,
    )
    try:
        database = Database(args.database_url or get_settings().sqlalchemy_url())
        try:
            rows = measure_fleet(workload, cluster=args.cluster, database=database)
        finally:
            database.dispose()
    except (NoGpuInCluster, ClusterError) as exc:
        print(f"gpu-optimizer measure-fleet: error: {exc}", file=sys.stderr)
        return 3
    data: list[dict[str, Any]] = [
        {
            "gpu": r.gpu_name,
            "driver": r.driver_version,
            "node": r.node,
            "batch_size": r.batch_size,
            "ok": r.ok,
            "error": r.error,
            "max_allocated_bytes": r.max_allocated_bytes,
            "max_reserved_bytes": r.max_reserved_bytes,
            "estimated_peak_bytes": r.estimated_peak_bytes,
        }
        for r in rows
    ]
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from gpu_optimizer.commands import fmt_bytes

        print(f"{'gpu':<28} {'driver':<12} {'batch':>6} {'reserved':>12} {'allocated':>12}")
        for d in data:
            reserved = fmt_bytes(d["max_reserved_bytes"]) if d["ok"] else "OOM"
            allocated = fmt_bytes(d["max_allocated_bytes"] or 0) if d["ok"] else "-"
            print(
                f"{d['gpu']:<28} {d['driver']:<12} {d['batch_size']:>6} "
                f"{reserved:>12} {allocated:>12}"
            )
        print(f"stored {len(rows)} measurements; `gpu-optimizer plan` now uses them")
    return 0


def _ray_resources(args: argparse.Namespace) -> int:
    from gpu_optimizer.cluster import machine_resources
    from gpu_optimizer.machines import load_machine_profiles

    print(json.dumps(machine_resources(profiles=load_machine_profiles(args.machines))))
    return 0


def add_fleet_commands(sub: Any, model_args: Any, guarded: Any) -> None:
    res = sub.add_parser(
        "ray-resources",
        help="this machine's Ray custom resources (one per GPU, by machine profile) as JSON",
    )
    res.add_argument("--machines", metavar="FILE", help="machine profile TOML (default: packaged)")
    res.set_defaults(func=guarded(_ray_resources))
    p = sub.add_parser(
        "measure-fleet",
        help="profile a step on every GPU node of a Ray cluster; plans then use the peaks",
    )
    model_args(p)
    p.add_argument(
        "--batch-sizes", type=_sizes, default=(8, 16, 32), help="comma-separated (default 8,16,32)"
    )
    p.add_argument("--cluster", default=None, help="Ray address (default $AIML_RAY_ADDRESS)")
    p.add_argument("--database-url", default=None, help="default: the service's database")
    p.set_defaults(func=guarded(_measure_fleet))
