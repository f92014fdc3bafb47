"""`pyscale info`: the device, its spec row, versions, and which backends can run here (and why not)."""

from __future__ import annotations

import argparse
import json

HELP = "show the device, its spec row, library versions and the available backends"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object (for machines)")


def _fmt(value: object) -> str:
    return "—" if value is None else str(value)


def run(args: argparse.Namespace) -> int:
    from pyscale import sysinfo

    info = sysinfo.collect()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for dev in info["devices"]:
        table = Table(title=f"{dev['kind']} device: {dev['name']}", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        for key in ("index", "uuid", "compute_capability", "memory_bytes", "driver_version"):
            table.add_row(key, _fmt(dev[key]))
        spec = dev.get("spec")
        if spec is None:
            table.add_row("spec", dev.get("spec_unavailable_reason", "unknown"))
        elif spec.get("known") is False:
            table.add_row("spec", f"unknown: {spec.get('reason')}")
        else:
            for key, value in spec.items():
                if key not in ("sources", "match"):
                    table.add_row(f"spec.{key}", _fmt(value))
        console.print(table)
    versions = Table(title="versions", show_header=False)
    for key, value in info["versions"].items():
        versions.add_row(key, _fmt(value))
    console.print(versions)
    backends = Table(title="backends")
    backends.add_column("backend")
    backends.add_column("available")
    backends.add_column("detail")
    for b in info["backends"]:
        backends.add_row(b["name"], "[green]yes[/]" if b["available"] else "[red]no[/]", b["detail"])
    console.print(backends)
    return 0
