"""Writes the tiny review-sentiment task the README's example runs on (train.csv, dev.csv): short sentences
composed from word lists, label 1 for praise and 0 for complaint. Deterministic; run it to regenerate."""

import csv
import random
from pathlib import Path

SUBJECTS = ["the film", "this movie", "the plot", "the acting", "the soundtrack", "the ending", "the script",
            "the director's new work", "the cast", "the story", "the dialogue", "the camera work", "this sequel",
            "the lead performance", "the pacing"]
GOOD = ["wonderful", "moving", "brilliant", "charming", "delightful", "gripping", "beautifully made", "sharp and funny",
        "a joy to watch", "heartfelt", "clever", "stunning", "warm and generous", "thrilling", "superb"]
BAD = ["dull", "tedious", "a mess", "painfully slow", "lifeless", "clumsy", "boring", "forgettable", "poorly written",
       "a chore to sit through", "flat", "awful", "confused", "predictable and cold", "irritating"]
FRAMES = ["{s} is {a}.", "honestly, {s} was {a}.", "i thought {s} was {a}.", "{s} felt {a} from start to finish.",
          "overall {s} is {a}.", "we all agreed {s} was {a}."]


def rows(n: int, rng: random.Random) -> list[tuple[str, int]]:
    out = []
    for _ in range(n):
        label = rng.randint(0, 1)
        text = rng.choice(FRAMES).format(s=rng.choice(SUBJECTS), a=rng.choice(GOOD if label else BAD))
        out.append((text[0].upper() + text[1:], label))
    return out


def main() -> None:
    rng = random.Random(0)
    here = Path(__file__).parent
    for name, n in (("train.csv", 600), ("dev.csv", 300)):
        with (here / name).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows(n, rng))


if __name__ == "__main__":
    main()
