"""The episode loop: propose with a strategy, record predictions, evaluate (proxy distillation), journal, refit.

Evaluation is a callable, so the loop is the same for real proxy distillation and for benchmarks on recorded
or synthetic objectives; an executor decides where an episode's candidates run (in turn here, or in parallel on
Ray). A candidate that raises (export error, out of memory, diverged loss) is journaled as failed and the search
goes on; an interrupt stops it with everything finished kept, and running again with the same journal resumes:
finished candidates are never redone, the ones in flight are re-run first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from kdnas_deploy.search.executors import Evaluate, Executor, LocalExecutor
from kdnas_deploy.search.journal import Candidate, Journal
from kdnas_deploy.search.reward import RewardConfig, reward
from kdnas_deploy.search.strategies import Observation, Proposal, Strategy
from kdnas_deploy.space import StudentArch


class SearchProgress:
    """Hooks for showing progress; the default shows nothing."""

    def episode_start(self, episode: int, episodes: int, candidates: list[StudentArch]) -> None: ...
    def candidate_end(self, episode: int, candidate: Candidate, best: Candidate | None) -> None: ...


def observations(journal: Journal) -> list[Observation]:
    return [Observation(c.arch, c.score, c.reward) for c in journal.candidates() if c.status != "pending"]


def best_candidate(candidates: list[Candidate]) -> Candidate | None:
    done = [c for c in candidates if c.status == "done" and c.reward is not None]
    return max(done, key=lambda c: c.reward) if done else None  # type: ignore[arg-type, return-value]


def run_episodes(
    strategy: Strategy, journal: Journal, evaluate: Evaluate, latency: Callable[[StudentArch], Mapping[str, float]],
    config: RewardConfig, episodes: int, top_k: int, progress: SearchProgress | None = None,
    executor: Executor | None = None,
) -> list[Candidate]:
    """Runs (or resumes) `episodes` episodes of `top_k` candidates each; returns every journaled candidate."""
    progress = progress or SearchProgress()
    executor = executor or LocalExecutor()
    for episode in range(journal.last_episode() + 1, episodes + 1):
        in_flight = [c for c in journal.candidates("pending") if c.episode == episode]
        if in_flight:
            batch = [c.arch for c in in_flight]
        else:
            proposals: list[Proposal] = strategy.propose(top_k, observations(journal))
            if not proposals:
                break  # the (feasible part of the) space is exhausted
            for p in proposals:
                journal.add_pending(p.arch, episode, dict(latency(p.arch)), p.predicted_reward, p.predicted_score, p.uncertainty)
            batch = [p.arch for p in proposals]
        progress.episode_start(episode, episodes, batch)
        for outcome in executor.run(evaluate, batch):
            arch = outcome.arch
            if outcome.error is not None or outcome.score is None:
                journal.fail(arch, outcome.error or "no score", outcome.seconds)
            else:
                journal.finish(arch, outcome.score, reward(outcome.score, dict(latency(arch)), config), outcome.metrics,
                               outcome.seconds)
            everything = journal.candidates()
            progress.candidate_end(episode, next(c for c in everything if c.arch == arch), best_candidate(everything))
    return journal.candidates()


def prediction_quality(candidates: list[Candidate]) -> dict[int, float | None]:
    """Per episode, Spearman rank correlation between predicted and measured reward: does the controller learn?"""
    from scipy.stats import spearmanr

    out: dict[int, float | None] = {}
    for episode in sorted({c.episode for c in candidates}):
        pairs = [(c.predicted_reward, c.reward) for c in candidates
                 if c.episode == episode and c.predicted_reward is not None and c.reward is not None]
        if len(pairs) >= 3 and len({p for p, _ in pairs}) > 1 and len({r for _, r in pairs}) > 1:
            out[episode] = float(spearmanr(*zip(*pairs)).statistic)
        else:
            out[episode] = None
    return out
