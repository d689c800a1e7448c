"""Is graph A within X% of graph B on this machine? Sessions of interleaved rounds, spread out, one ratio and its bound.

One timing session on a shared CPU is a single draw: within a session, timing A and B in alternating rounds
cancels a slow spell that hits both (the paired ratio, `paired_ratio`), but the whole session's ratio still moves
by a few percent from one session to the next and drifts over hours (a pair read 0.95-1.07 of its reference within
a day on the 2-vCPU hosts). A decision at a few percent therefore needs several sessions spread out in time, each
one paired ratio, and a statement about their centre with its uncertainty: the geometric mean of the session
ratios and a one-sided upper confidence bound (Student's t over the sessions' log ratios). "A is within 3% of B"
means that bound is at most 1.03, over at least `EQUAL_MIN_SESSIONS` sessions spanning `EQUAL_MIN_HOURS`.

The record (JSON, written atomically after every session) makes a comparison resumable and extendable: run the
same command again and it adds sessions until it has the number asked for, refusing if either graph, the
profile or the rounds changed.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdnas_deploy.instruction_set import INFO_KEY, cpu_model, describe_info, from_info, host_instruction_set
from kdnas_deploy.util.errors import KdnasError

#: Interleaved rounds per session: each round times A and B once each, in a fresh ONNX Runtime session.
DEFAULT_ROUNDS = 10
#: What "equal latency" allows A over B: its one-sided 95% upper bound must be at most this.
EQUAL_TOLERANCE = 1.03
#: Fewest sessions, and the shortest span from the first session's start to the last's, for a verdict: fewer
#: sessions give a t-bound too wide to decide anything (t(0.95, 1) = 6.3), and sessions minutes apart share the
#: machine's mood of the hour.
EQUAL_MIN_SESSIONS = 6
EQUAL_MIN_HOURS = 2.0
CONFIDENCE = 0.95
RULE = "equal-latency/1: one-sided 95% upper bound of the geometric-mean paired ratio <= 1.03, >= 6 sessions over >= 2 h"


def ratio_bounds(ratios: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float | None, float | None]:
    """The geometric mean of session ratios, and its one-sided lower and upper `confidence` bounds (None with
    fewer than two sessions): a t-interval on the log ratios, so 0.97 and 1/0.97 are equally far from 1."""
    if not ratios or any(not (r > 0 and math.isfinite(r)) for r in ratios):
        raise ValueError(f"session ratios must be positive numbers, got {list(ratios)}")
    from kdnas_deploy.util.stats import mean_t_interval

    mean, lower, upper = mean_t_interval([math.log(r) for r in ratios], confidence)
    return math.exp(mean), None if lower is None else math.exp(lower), None if upper is None else math.exp(upper)


@dataclass
class Session:
    """One session: every round's median ms of A and of B (round i of both timed back to back), and their paired
    ratio (the median of the per-round ratios)."""

    started: float  # seconds since the epoch
    a_ms: list[float]
    b_ms: list[float]
    ratio: float


@dataclass(frozen=True)
class Verdict:
    #: "within": the bound is at most the tolerance with enough sessions and span; "not shown": the evidence is
    #: complete and the bound is above it; "too little evidence": fewer sessions or a shorter span than the rule's.
    status: str
    reason: str

    @property
    def within(self) -> bool:
        return self.status == "within"


@dataclass
class Comparison:
    a: str
    b: str
    profile: str
    #: What makes the record's sessions comparable with new ones: the graphs' content, the profile's, the rounds.
    key: dict[str, Any]
    sessions: list[Session] = field(default_factory=list)
    #: The CPU the sessions ran on (model and instruction set): a ratio from another kernel tier is another ratio,
    #: so a record takes sessions from one instruction set only. None in records written before it was kept.
    machine: dict[str, Any] | None = None
    #: The input shape both graphs were timed at, in words ("batch 1, 128 tokens", or the length distribution).
    shape: str | None = None

    @property
    def ratios(self) -> list[float]:
        return [s.ratio for s in self.sessions]

    @property
    def span_hours(self) -> float:
        return (self.sessions[-1].started - self.sessions[0].started) / 3600 if len(self.sessions) > 1 else 0.0

    def bounds(self, confidence: float = CONFIDENCE) -> tuple[float, float | None, float | None]:
        return ratio_bounds(self.ratios, confidence)

    def verdict(self, tolerance: float = EQUAL_TOLERANCE, min_sessions: int = EQUAL_MIN_SESSIONS,
                min_hours: float = EQUAL_MIN_HOURS, confidence: float = CONFIDENCE) -> Verdict:
        """Whether A is within `tolerance` of B by the rule: the one-sided upper bound, with enough sessions
        spread over enough time."""
        if not self.sessions:
            return Verdict("too little evidence", "no sessions timed")
        mean, _, upper = self.bounds(confidence)
        short = []
        if len(self.sessions) < min_sessions:
            short.append(f"{len(self.sessions)} of {min_sessions} sessions")
        if self.span_hours < min_hours:
            short.append(f"a span of {self.span_hours:.2f} of {min_hours:g} h")
        bound = f"upper bound {upper:.3f}" if upper is not None else f"ratio {mean:.3f} (one session, no bound)"
        if short:
            return Verdict("too little evidence", f"{bound}; the rule needs more: {', '.join(short)}")
        assert upper is not None
        if upper <= tolerance:
            return Verdict("within", f"upper bound {upper:.3f} <= {tolerance:g}")
        return Verdict("not shown", f"upper bound {upper:.3f} > {tolerance:g}")

    def summary(self, tolerance: float = EQUAL_TOLERANCE, min_sessions: int = EQUAL_MIN_SESSIONS,
                min_hours: float = EQUAL_MIN_HOURS) -> dict[str, Any]:
        mean, lower, upper = self.bounds() if self.sessions else (None, None, None)
        v = self.verdict(tolerance, min_sessions, min_hours)
        return {"a": self.a, "b": self.b, "profile": self.profile, "sessions": len(self.sessions),
                "span_hours": round(self.span_hours, 3), "ratios": [round(r, 4) for r in self.ratios],
                "geomean_ratio": mean, "lower_95": lower, "upper_95": upper, "tolerance": tolerance,
                "min_sessions": min_sessions, "min_hours": min_hours, "verdict": v.status, "reason": v.reason,
                "cpu": (self.machine or {}).get("cpu"), "instruction_set": describe_info(self.machine),
                "shape": self.shape or _key_shape(self.key)}

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "profile": self.profile, "key": self.key,
                **({"machine": self.machine} if self.machine is not None else {}),
                **({"shape": self.shape} if self.shape is not None else {}),
                "sessions": [asdict(s) for s in self.sessions]}

    @classmethod
    def from_dict(cls, data: Any, source: str) -> Comparison:
        try:
            return cls(str(data["a"]), str(data["b"]), str(data["profile"]), dict(data["key"]),
                       [Session(float(s["started"]), [float(x) for x in s["a_ms"]], [float(x) for x in s["b_ms"]],
                                float(s["ratio"])) for s in data["sessions"]],
                       dict(data["machine"]) if data.get("machine") is not None else None,
                       str(data["shape"]) if data.get("shape") is not None else None)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise KdnasError(f"{source}: not a comparison record (a, b, profile, key, sessions)") from None


def _key_shape(key: dict[str, Any]) -> str:
    """The shape a record's key says its sessions ran at (records written before the shape was kept)."""
    batch, seq_len = (key.get("shape") or [None, None])[:2]
    if key.get("length_weights"):
        return f"batch {batch}, lengths {', '.join(key['length_weights'])} weighted"
    return f"batch {batch}, {seq_len} tokens"


def comparison_key(a_path: Path, b_path: Path, profile: Any, rounds: int,
                   weights: dict[int, float] | None = None) -> dict[str, Any]:
    from kdnas_deploy.util.hashing import file_sha256

    key = {"a_sha256": file_sha256(a_path), "b_sha256": file_sha256(b_path), "profile_hash": profile.content_hash(),
           "shape": [profile.shape.batch_size, profile.shape.seq_len], "rounds": rounds}
    if weights:  # under traffic: the lengths timed and what each counts (absent at a fixed length, as before)
        key["length_weights"] = {str(n): round(w, 9) for n, w in weights.items()}
    return key


def load_record(path: Path) -> Comparison | None:
    import json

    from kdnas_deploy.util.files import read_text_file

    if not path.exists():
        return None
    try:
        data = json.loads(read_text_file(path, "comparison record"))
    except ValueError:
        raise KdnasError(f"{path}: not a comparison record (invalid JSON)") from None
    return Comparison.from_dict(data, str(path))


def graph_vocab_size(path: Path) -> int:
    """The vocabulary the graph's word embedding holds, so its timing feeds valid token ids: an artifact of a small
    model rejects BERT's ids. Read from the initializer the node consuming `input_ids` indexes (Gather, or the
    fused EmbedLayerNormalization and its int8 form); BERT's size when the graph says nothing clearer."""
    import onnx

    from kdnas_deploy.space import BERT_VOCAB_SIZE

    model = onnx.load(str(path), load_external_data=False)
    dims = {init.name: list(init.dims) for init in model.graph.initializer}
    ids = {"input_ids"}
    for node in model.graph.node:  # nodes are topologically sorted: a Cast of the ids comes before its consumer
        if node.op_type == "Cast" and node.input and node.input[0] in ids:
            ids.update(node.output)
            continue
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in ids:
            table = node.input[0]
        elif node.op_type.endswith("EmbedLayerNormalization") and len(node.input) > 2 and node.input[0] in ids:
            table = node.input[2]
        else:
            continue
        if table in dims and len(dims[table]) == 2:
            return int(dims[table][0])
    return BERT_VOCAB_SIZE


def time_session(a_path: Path, b_path: Path, profile: Any, rounds: int, seed: int = 0,
                 on_round: Callable[[int], None] | None = None,
                 vocab: tuple[int, int] | None = None,
                 weights: dict[int, float] | None = None) -> tuple[list[float], list[float]]:
    """`rounds` interleaved rounds, each timing A and B once in fresh sessions (order alternating per round).
    `vocab`: the graphs' vocabulary sizes, read from them (`graph_vocab_size`) when not given. With `weights` (node
    length -> weight, `traffic.node_weights`), each session is timed at every node length and counts as the
    expected latency under that traffic."""
    from kdnas_deploy.latency.timing import interleaved_rounds, time_graph, time_graph_lengths, weighted_ms

    a_vocab, b_vocab = vocab or (graph_vocab_size(a_path), graph_vocab_size(b_path))
    vocab_of = {"a": a_vocab, "b": b_vocab}

    def one(k: str, r: int) -> float:
        path = a_path if k == "a" else b_path
        if weights:
            return weighted_ms(time_graph_lengths(path, profile, tuple(weights), seed=seed + r, vocab_size=vocab_of[k]),
                               weights)
        return time_graph(path, profile, seed=seed + r, sessions=1, vocab_size=vocab_of[k]).median_ms

    samples = interleaved_rounds(["a", "b"], one, rounds, on_round)
    return samples["a"], samples["b"]


def compare_graphs(a_path: str | Path, b_path: str | Path, profile: Any, *, sessions: int, rounds: int = DEFAULT_ROUNDS,
                   every_s: float = 0.0, record: str | Path | None = None, labels: tuple[str, str] | None = None,
                   status: Callable[[str], None] | None = None, sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.time,
                   timer: Callable[[Path, Path, Any, int, int], tuple[list[float], list[float]]] | None = None,
                   lengths: Any = None,
                   ) -> Comparison:
    """Times A against B until the comparison holds `sessions` sessions, starting each at least `every_s` seconds
    after the one before, and returns it. With a `record` the sessions already in it count, and each new one is
    written to it before the next starts. With `lengths` (a `LengthDistribution`), each graph's time in a round is
    its expected latency under that traffic at the profile's batch (timed at the lengths that bracket it)."""
    from kdnas_deploy.latency.timing import paired_ratio
    from kdnas_deploy.model_folder import write_json_atomic

    a_path, b_path = Path(a_path), Path(b_path)
    for p in (a_path, b_path):
        if not p.is_file():
            raise KdnasError(f"{p}: no such ONNX file")
    if sessions < 1 or rounds < 1:
        raise KdnasError(f"a comparison needs at least one session of at least one round, got {sessions} x {rounds}")
    if every_s < 0 or not math.isfinite(every_s):
        raise KdnasError(f"the spacing between sessions must be 0 or more seconds, got {every_s}")
    profile.check_runnable()
    say = status or (lambda _m: None)
    a_label, b_label = labels or (str(a_path), str(b_path))
    weights = None
    if lengths is not None and not lengths.is_fixed:
        from kdnas_deploy.latency.traffic import node_weights

        padded = lengths.batch_max(profile.shape.batch_size)
        weights = node_weights(padded, padded.nodes())
    elif lengths is not None:
        profile = profile.with_shape(seq_len=lengths.lengths[0])
    key = comparison_key(a_path, b_path, profile, rounds, weights)
    record_path = Path(record) if record is not None else None
    comparison = load_record(record_path) if record_path else None
    here = {"cpu": cpu_model(), "machine": platform.machine(), INFO_KEY: host_instruction_set().to_info()}
    shape = (f"batch {profile.shape.batch_size}, lengths {lengths.describe()}" if weights
             else f"batch {profile.shape.batch_size}, {profile.shape.seq_len} tokens")
    if comparison is None:
        comparison = Comparison(a_label, b_label, profile.name, key, machine=here, shape=shape)
    elif comparison.key != key:
        changed = ", ".join(k for k in dict.fromkeys([*key, *comparison.key]) if comparison.key.get(k) != key.get(k))
        raise KdnasError(f"{record_path}: recorded for other graphs or settings ({changed} changed); "
                         "give another --record to start a new comparison")
    elif comparison.sessions and from_info(comparison.machine) not in (None, host_instruction_set()) \
            and len(comparison.sessions) < sessions:
        then, now = from_info(comparison.machine), host_instruction_set()
        same_tier = then is not None and then.summary == now.summary  # then name the features that differ
        was = then.describe() if same_tier else describe_info(comparison.machine)
        raise KdnasError(f"{record_path}: its sessions ran on {was}; this CPU has "
                         f"{now.describe() if same_tier else now.summary}: ONNX Runtime runs other kernels here, so "
                         "give another --record to start a comparison on this machine")
    elif comparison.machine is None and not comparison.sessions:
        comparison.machine = here
    if timer is None:
        vocab = (graph_vocab_size(a_path), graph_vocab_size(b_path))  # once, not per session
        timer = lambda a, b, p, n, seed: time_session(a, b, p, n, seed, vocab=vocab, weights=weights)  # noqa: E731
    time_one = timer
    while len(comparison.sessions) < sessions:
        if comparison.sessions:
            wait = comparison.sessions[-1].started + every_s - clock()
            if wait > 0:
                say(f"next session ({len(comparison.sessions) + 1}/{sessions}) in {wait / 60:.1f} min")
                sleep(wait)
        started = clock()
        n = len(comparison.sessions)
        say(f"session {n + 1}/{sessions}: {rounds} interleaved rounds")
        a_ms, b_ms = time_one(a_path, b_path, profile, rounds, 1000 * n)
        comparison.sessions.append(Session(started, list(a_ms), list(b_ms), paired_ratio(a_ms, b_ms)))
        if record_path is not None:
            write_json_atomic(record_path, comparison.to_dict())
        say(f"session {n + 1}/{sessions}: ratio {comparison.sessions[-1].ratio:.3f}")
    return comparison
