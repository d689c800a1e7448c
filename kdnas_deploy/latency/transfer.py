"""Moving timings between latency tables: merging another table (or a JSON export of one) into a table, and
exporting machines' rows as a JSON file.

The deployment-target flow: `profile` fills a table on the target; its rows travel as the SQLite file or as
`table export`'s JSON; `table merge` adds them to the build host's table beside the rows already there; `search
--machine ID` reads them. A row the destination already has is kept (its own measurement wins), so merging the same
rows twice adds nothing. Copying the target's file over the build host's table would instead lose the build host's
own timings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdnas_deploy.instruction_set import describe_info, from_info
from kdnas_deploy.util.errors import KdnasError, first_line
from kdnas_deploy.util.files import read_text_file
from kdnas_deploy.latency.table import APP_ID, SCHEMA_VERSION, SQLITE_HEADER, LatencyTable, MachineRows, check_export


@dataclass(frozen=True)
class Merged:
    """One machine's rows offered by one source, and how many of them the destination did not have yet."""

    source: str
    machine: str
    info: dict[str, Any]
    offered: int
    added: int


def read_exports(source: Path, machines: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The per-machine exports (`LatencyTable.export_rows`'s form) held by `source`: a latency table file or a JSON
    file written from `export`. `machines` keeps only those fingerprints; an empty one keeps all."""
    source = Path(source).expanduser()
    try:
        with source.open("rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except IsADirectoryError:
        raise KdnasError(f"{source}: is a directory, not a latency table or an export") from None
    except OSError as exc:
        raise KdnasError(f"{source}: cannot read ({exc.strerror or first_line(exc)})") from None
    if header == SQLITE_HEADER:
        with LatencyTable(source, readonly=True) as table:
            ids = [m.id for m in table.machines() if m.count]
            exports = [table.export_rows(fid) for fid in ids if not machines or fid in machines]
    else:
        text = read_text_file(source, "latency export")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KdnasError(f"{source}: neither a latency table (SQLite) nor a JSON export ({exc.msg}, line "
                             f"{exc.lineno})") from None
        if isinstance(data, dict) and "exports" in data:
            if data.get("app") != APP_ID or data.get("schema_version") != SCHEMA_VERSION:
                raise KdnasError(f"{source}: not an export of a kdnas-deploy latency table of this schema version")
            data = data["exports"]
        items = data if isinstance(data, list) else [data]
        if not all(isinstance(e, dict) and isinstance(e.get("fingerprint"), dict) for e in items):
            raise KdnasError(f"{source}: not an export of a kdnas-deploy latency table")
        exports = [e for e in items if not machines or e["fingerprint"].get("id") in machines]
    return exports


def merge(table: LatencyTable, sources: Sequence[Path], machines: Sequence[str] = ()) -> list[Merged]:
    """Adds the timings of every source (latency tables or JSON exports) to `table`, keeping the rows it already
    has. Every source is read and checked before the first row is written, so a bad file leaves the table as it
    was. `machines` limits the merge to those fingerprints; one that no source holds is an error."""
    sources = [Path(s).expanduser() for s in sources]
    for s in sources:
        if table.path.exists() and s.exists() and os.path.samefile(s, table.path):
            raise KdnasError(f"{s} is the table being merged into; name another file")
    read = [(s, read_exports(s, machines)) for s in sources]
    missing = set(machines) - {e["fingerprint"].get("id") for _, exports in read for e in exports}
    if missing:
        raise KdnasError(f"no source holds machine {', '.join(sorted(missing))} (`kdnas-deploy table list --table "
                         "SOURCE` shows what a table holds)")
    for s, exports in read:
        for e in exports:
            try:
                check_export(e)
            except KdnasError as exc:
                raise KdnasError(f"{s}: {exc}") from None
            if from_info(e["fingerprint"]["info"]) is None:
                # Before instruction sets were keyed, an AVX2 host and an AVX512-VNNI host of one CPU model string
                # shared an id: rows under such an id may be two machines' (docs/decisions/instruction-set.md).
                raise KdnasError(f"{s}: machine {e['fingerprint']['id']} was profiled before fingerprints recorded "
                                 "the instruction set, so its rows may mix CPUs of one model name: profile the "
                                 "target again with this version and merge that")
    merged = []
    for s, exports in read:
        for e in exports:
            added = table.import_rows(e)
            fp = e["fingerprint"]
            merged.append(Merged(str(s), fp["id"], fp["info"], len(e["timings"]), added))
    return merged


def export(table: LatencyTable, machines: Sequence[str] = ()) -> dict[str, Any]:
    """The rows of `machines` (every machine with timings when empty) as one JSON-able document for `read_exports`."""
    held = [m for m in table.machines() if m.count]
    unknown = set(machines) - {m.id for m in held}
    if unknown:
        raise KdnasError(f"latency table {table.path} has no timings of machine {', '.join(sorted(unknown))}")
    ids = [m.id for m in held if not machines or m.id in machines]
    return {"app": APP_ID, "schema_version": SCHEMA_VERSION, "exports": [table.export_rows(fid) for fid in ids]}


def describe(info: dict[str, Any]) -> str:
    """A machine's fingerprint info in a few words: profile, CPU or GPU, cores, instruction set and ONNX Runtime
    version."""
    device = info.get("gpu") or info.get("cpu") or "unknown machine"
    cores = f" x{info['cpu_count']}" if info.get("cpu_count") else ""
    ort = f", onnxruntime {info['onnxruntime']}" if info.get("onnxruntime") else ""
    return f"{info.get('profile', '?')} on {device}{cores} ({describe_info(info)}){ort}"


def this_host(machines: Sequence[MachineRows]) -> set[str]:
    """The fingerprints among `machines` that this host would read with a shipped profile of the same name: the
    rows a search here uses without `--machine`. A machine timed with a profile file of its own is not matched."""
    from kdnas_deploy.fingerprint import fingerprint_id, machine_fingerprint
    from kdnas_deploy.hardware import load_profile, shipped_profiles

    shipped = set(shipped_profiles())
    here = set()
    for name in {m.info.get("profile") for m in machines} & shipped:
        here.add(fingerprint_id(machine_fingerprint(load_profile(name))))
    return here & {m.id for m in machines}
