"""Distillation: students built from a teacher, the objective, the training loop and the library API.

How a student starts from its teacher is named here, without importing torch, so that settings can check it:
- `inherit`: the teacher's mapped layers, sliced to the student's widths by taking the first heads, FFN neurons
  and hidden dimensions (`student.inherit_weights`);
- `ranked`: the same slicing of a copy of the teacher whose units are first sorted by importance on training
  rows (`ranking.rank_teacher`), so a narrower student keeps the units that matter most;
- `random`: a fresh initialisation.
"""

from typing import Literal, get_args

Init = Literal["inherit", "ranked", "random"]
INITS: tuple[str, ...] = get_args(Init)
#: Ranked: on the GLUE MNLI proxy (tools/bench_ranking.py) it lifts sliced students by several points over
#: taking the first units, for ~16 s of ranking per run on a MiniLM teacher; unsliced students are unchanged.
DEFAULT_INIT: Init = "ranked"
#: One line per init: the CLI's --init help and the model card (how its student started) both read these.
INIT_DESCRIPTIONS: dict[str, str] = {
    "ranked": "the teacher's weights, keeping its most important heads, FFN neurons and hidden dimensions"
              " (ranked on training rows)",
    "inherit": "the teacher's weights, keeping its first heads, FFN neurons and hidden dimensions",
    "random": "random weights",
}
#: Training batches are length-bucketed over windows of this many batches (TrainConfig.length_buckets; 0: plain random
#: batches). Here, without torch, so that the command line can show it.
LENGTH_BUCKETS = 50
