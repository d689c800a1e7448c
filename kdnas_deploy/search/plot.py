"""The search's picture: proxy score against latency for every candidate, the Pareto front, the teacher and,
with budgets, each budget and the candidate chosen for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and score (higher), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_search(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    profile = next(iter(report["reward"]["targets_ms"]))
    done = [c for c in report["candidates"] if c["status"] == "done" and c["score"] is not None]
    points = [(c["latency_ms"][profile], c["score"]) for c in done]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if points:
        episodes = [c["episode"] for c in done]
        sc = ax.scatter([p[0] for p in points], [p[1] for p in points], c=episodes, cmap="viridis", s=28, label="candidates")
        fig.colorbar(sc, ax=ax, label="episode")
        front = pareto_front(points)
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "r-", lw=1.2, label="Pareto front")
        if report.get("best"):
            best = next(c for c in done if c["arch"] == report["best"])
            ax.scatter([best["latency_ms"][profile]], [best["score"]], marker="*", s=200, c="red", label=f"best {best['arch']}")
    teacher = report["teacher"]
    if teacher.get("score") is not None:
        ax.scatter([teacher["latency_ms"][profile]], [teacher["score"]], marker="D", s=60, c="black", label=f"teacher {teacher['arch']}")
    ax.axvline(report["reward"]["targets_ms"][profile], color="grey", ls="--", lw=1, label="latency target")
    choices = report.get("choices") or []
    for i, choice in enumerate(choices):  # budgets are on the first profile, the one plotted
        ax.axvline(choice["budget_ms"], color="tab:orange", ls=":", lw=1, label="budgets" if i == 0 else None)
    picked = [c for c in done if c["arch"] in {ch["arch"] for ch in choices}]
    if picked:
        ax.scatter([c["latency_ms"][profile] for c in picked], [c["score"] for c in picked], marker="s", s=90,
                   facecolors="none", edgecolors="tab:orange", label="chosen per budget")
    ax.set_xscale("log")
    ax.set_xlabel(f"latency on {profile} (ms, log scale)")
    ax.set_ylabel("proxy score (held-out slice of train)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
