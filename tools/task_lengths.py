#!/usr/bin/env python
"""Write a task's request-length histogram (`length count` a line), as `--lengths FILE` reads it.

    python tools/task_lengths.py --teacher MODEL --data-dir GLUE/SST-2 --task sst2 --max-length 128 --out sst2.txt

The lengths are those of the training rows tokenized with the teacher's tokenizer, special tokens included and
truncated at --max-length: what `search --lengths task` uses, for `profile` and `compare`, which have no task.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdnas_deploy.data.prepare import prepare
from kdnas_deploy.data.sources import DataSource
from kdnas_deploy.latency.lengths import LengthDistribution


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", required=True, help="Model folder whose tokenizer counts the tokens.")
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    prepared = prepare(args.teacher, DataSource(task=args.task, data_dir=str(args.data_dir)), args.max_length)
    dist = LengthDistribution.from_dataset(prepared.encoded.train, f"task {args.task} train", args.max_length)
    rows = len(prepared.encoded.train)
    lines = [f"# {dist.describe()}", *(f"{n} {round(p * rows)}" for n, p in zip(dist.lengths, dist.probs))]
    args.out.write_text("\n".join(lines) + "\n")
    print(dist.describe())


if __name__ == "__main__":
    main()
