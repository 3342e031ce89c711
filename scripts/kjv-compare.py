#!/usr/bin/env python3
"""Side-by-side validation table of our KJV runs and the PyTorch twin's (docs/training.md).

    python3 scripts/kjv-compare.py --ours runs/kjv-mdm-s{0,1,2} --twin runs/twin-mdm-s{0,1,2}.json \
        [--twin-runs DIR]   # also writes each twin JSON as a run folder (metrics.csv, validation.csv)
                            # that `cargo run --example plot` draws

Prints, per validation step, every seed's bound (bits/token), the mean and the spread (max - min).
Reads only what the runs wrote: our validation.csv, the twin's --json output.
"""
import argparse
import csv
import json
import math
import os


def ours(run):
    with open(os.path.join(run, "validation.csv")) as f:
        return {int(r["step"]): float(r["bits_per_token"]) for r in csv.DictReader(f)}


def twin(path):
    with open(path) as f:
        log = json.load(f)
    return {v["step"]: v["bits"] for v in log["val"]}, log


def write_run(log, out, tokens_per_step):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "tokens", "lr", "loss", "grad_norm", "tokens_per_s", "elapsed_s"])
        for i, loss in enumerate(log["loss"]):
            w.writerow([i + 1, (i + 1) * tokens_per_step, "", loss, "", "", ""])
    with open(os.path.join(out, "validation.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "tokens", "nats_per_token", "bits_per_token", "stderr_bits", "perplexity"])
        for v in log["val"]:
            w.writerow([v["step"], v["step"] * tokens_per_step, v["bits"] * math.log(2), v["bits"],
                        v["stderr"], 2 ** v["bits"]])


def row(label, runs):
    steps = sorted(set.intersection(*[set(r) for r in runs]))
    cells = []
    for s in steps:
        vals = [r[s] for r in runs]
        mean = sum(vals) / len(vals)
        cells.append(f"{mean:.2f} ({', '.join(f'{v:.2f}' for v in vals)}; spread {max(vals) - min(vals):.2f})")
    return steps, f"| {label} | " + " | ".join(cells) + " |"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", nargs="+", required=True)
    ap.add_argument("--twin", nargs="+", required=True)
    ap.add_argument("--twin-runs", default=None)
    ap.add_argument("--tokens-per-step", type=int, default=2048)
    ap.add_argument("--label", default="MDM")
    a = ap.parse_args()
    our_runs = [ours(r) for r in a.ours]
    twins = [twin(p) for p in a.twin]
    steps, ours_line = row(f"mdm-rs {a.label}, {len(our_runs)} seeds", our_runs)
    _, twin_line = row(f"PyTorch twin {a.label}, {len(twins)} seeds", [t for t, _ in twins])
    print("| validation bound, bits/token: mean (seeds; spread) | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("|---" * (len(steps) + 1) + "|")
    print(ours_line)
    print(twin_line)
    if a.twin_runs:
        for path, (_, log) in zip(a.twin, twins):
            name = os.path.splitext(os.path.basename(path))[0]
            write_run(log, os.path.join(a.twin_runs, name), a.tokens_per_step)


if __name__ == "__main__":
    main()
