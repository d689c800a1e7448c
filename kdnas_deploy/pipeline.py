"""The whole job: a search, its final students, and each one shipped as an artifact for every profile searched.

Search knows nothing of export and export nothing of search; this module, above both, chains them (and is what
`kdnas-deploy search` runs). Data flows one way: search -> final students -> artifacts -> report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.search.run import run_search
from kdnas_deploy.search.settings import SearchSettings


def run_pipeline(settings: SearchSettings, out: Path, *, export_status: Callable[[str], None] | None = None,
                 **search: Any) -> dict[str, Any]:
    """`run_search` with each final student exported (unless the settings say `export = false`); `search` takes
    run_search's keyword arguments (resume, progress, executor, ...)."""

    def exporter(folder: Path, profiles: list[Any], run: Path, table: Path, machines: dict[str, str]) -> dict[str, Any]:
        return export_finals(folder, profiles, run, table, export_status, machines, settings.lengths)

    return run_search(settings, out, exporter=exporter, **search)


def export_finals(folder: Path, profiles: list[Any], out: Path, table: Path,
                  status: Callable[[str], None] | None = None,
                  machines: dict[str, str] | None = None, lengths: str = "task") -> dict[str, dict[str, Any]]:
    """The final student's artifact for each profile; a failed export (for example an int8 accuracy drop over the
    limit) is recorded in the report instead of ending a run whose students are already distilled. `machines`
    (profile name -> fingerprint id) are the machines whose table rows the search read: the cards' table latency
    is theirs too. `lengths` is the search's: the cards report latency under the traffic the search optimised for."""
    from kdnas_deploy.artifact.export import export_artifact
    from kdnas_deploy.artifact.runtime import read_card

    results: dict[str, dict[str, Any]] = {}
    for profile in profiles:
        target = out / "artifacts" / f"{folder.name}-{profile.name}"
        try:
            card = read_card(target) if target.is_dir() else None
        except KdnasError:
            card = None
        try:
            if card is None:  # a resumed run keeps artifacts it already exported
                card = export_artifact(folder, profile, target, table=table, search_run=out, overwrite=True,
                                       status=status, machine=(machines or {}).get(profile.name), lengths=lengths).card
        except KdnasError as exc:
            results[profile.name] = {"folder": None, "error": str(exc)}
            continue
        results[profile.name] = {"folder": str(target), "file": card["file"], "size_mb": card["size_mb"],
                                 "artifact_dev": card["metrics"]["artifact_dev"], "latency": card["latency"]}
    return results
