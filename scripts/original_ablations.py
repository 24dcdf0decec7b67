"""Where does a faithful run of the original's recipe land away from the original's number, and why? Each row is the
faithful recipe (``mnist-original``, ``mnist-original-steplr``, ``cifar10-original`` or ``hf-original``) with one of
its differences from our own recipes switched back to ours; the first row is the faithful recipe itself over seeds,
the noise every other row is read against. The rows are needed only where the faithful run lands more than a point
away.

    python scripts/original_ablations.py mnist-original --data-root ../shared/data --threads 2
    python scripts/original_ablations.py mnist-original --rows faithful schedule-per-step --seeds 1
    python scripts/original_ablations.py cifar10-original --epochs 10 --data-root ../shared/data   # cheaper
    python scripts/original_ablations.py --list

Every row is one call of scripts/train_recipe.py with ``--set`` overrides and the tag ``abl-<row>-s<seed>``
(``-e<epochs>`` when --epochs shortens the recipe, its warmup staying a fifth of the epochs as the original's
``epochs // 5``), so each run writes its own record, results/<recipe>-abl-<row>-s<seed>.json (its ``notes`` naming
the row and seed), resumes from its checkpoint when killed, and is skipped once its record exists; runs with a
checkpoint go first, so a half-done run is finished before a new one starts. The costly rows (fp32) run only when
named in --rows, and then after the rest. A row's
later seed runs only where its first seed lands under a point from the faithful runs' mean (``--every-seed`` runs them
all): a gap of a point or more keeps one seed, which the table reads as a hint. scripts/results_table.py renders the
rows into docs/results.md, each against the faithful runs of the same length.

Two drivers can share the rows (on 2 cores, two 1-thread runs side by side get through more epochs an hour than one
2-thread run): start the same command twice with ``--threads 1``, the second a few seconds after the first. A driver
claims each run before it starts it (<run>.driver.lock beside the run's checkpoint, in --checkpoint-dir, by default
checkpoints/runs; held until the run's process has ended and written its record); the other skips a run that is
claimed, or whose checkpoint a live process holds, and a row's later seed while its earlier seed runs there, since that
result decides whether the later one is needed (the driver running the earlier seed comes to it in its pass over the
later seeds; the ``faithful`` row and ``--every-seed`` do not wait). Two drivers sharing rows need the same
--checkpoint-dir. A driver ends by saying how many runs it left to other processes: run it again once they end, to be
sure none is left.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vitkit import checkpoint as ckpt, data, recipes  # noqa: E402

# row -> (what is switched back to ours, the train_recipe.py --set overrides): per recipe, else per dataset, else
# "*"; None where the row does not apply. HF's ViT (hf-original) has no embedding scale and no dropout inside its MLP,
# and draws its weights N(0, 0.02) with zero biases, as our default init does (ours truncated at 2 std): those rows
# are ours alone.
HF = "hf-original"
ROWS: dict[str, tuple[str, dict[str, list[str] | None]]] = {
    "faithful": ("none: the faithful recipe itself, over seeds (the noise)", {"*": []}),
    "schedule-per-step": ("the LR schedule stepped per optimizer step, not per epoch", {"*": ["fit.lr_update='step'"]}),
    "no-embed-scale": ("no sqrt(dim) scale on the token embeddings", {"*": ["model.embed_scale=False"], HF: None}),
    "trunc-normal-init": ("truncated-normal 0.02 init (positions and CLS included), not PyTorch's defaults",
                          {"*": ["model.init='trunc_normal'"], HF: None}),
    "no-attn-dropout": ("no dropout on the attention probabilities",
                        {"*": ["model.attn_dropout=0.0"], HF: ["hf_model.attention_probs_dropout_prob=0.0"]}),
    "no-mlp-dropout": ("no dropout inside the MLP", {"*": ["model.mlp_dropout=0.0"], HF: None}),
    "our-split": ("5,000 validation images", {"*": ["data.val_size=5000"]}),
    "our-norm": ("our input normalisation (the loaders' default statistics)",
                 {"mnist": ["data.mean=None", f"data.std={tuple(data.MNIST_STD)}"],
                  "cifar10": [f"data.mean={tuple(data.CIFAR10_MEAN)}", f"data.std={tuple(data.CIFAR10_STD)}"]}),
    "inverted": ("MNIST inverted (dark digits on white), as our MNIST recipes train", {"mnist": ["data.invert=True"]}),
    "width-128": ("width 128, as our mnist-seed", {"mnist": ["model.dim=128"]}),
    "zero-embed-init": ("towards the original, not back to ours: the CLS token and position table start at zero, "
                        "as the original's transformers 4.6.0 left them (the installed one draws them N(0, 0.02))",
                        {"*": None, HF: ["hf_init.embeddings='zeros'"]}),
    "fp32": ("fp32 instead of bf16 autocast", {"*": []}),  # --precision fp32, not an override
}
# Rows that move the faithful recipe towards the original where it still differs from it, not back to ours.
TOWARDS_ORIGINAL = ("zero-embed-init", "fp32")
# Rows that cost several times a bf16 run (fp32 is about 2.5x on a CPU with native bf16): run only when named in
# --rows, and then after the rest.
COSTLY_ROWS = ("fp32",)
# Seed 0 of the faithful recipe at its full length is its headline run (results/<recipe>-full.json); shortened
# runs (--epochs) have no such run, so their faithful row starts at seed 0.
SEEDS = (1,)
SEEDS_SHORTENED = (0, 1)
# A row whose first seed lands this far or further from the faithful runs' mean needs no second seed.
SETTLED_GAP = 0.01
# The length each recipe's rows are planned at: MNIST at its own 10 epochs, CIFAR-10 at 10 of its 30.
PLANNED_EPOCHS = {"mnist-original": None, "mnist-original-steplr": None, "cifar10-original": 10, HF: 10}


def overrides(row: str, recipe: str) -> list[str] | None:
    """The row's ``--set`` entries for ``recipe`` (its own entry, else its dataset's, else ``"*"``); None where the
    row does not apply to it."""
    per = ROWS[row][1]
    if recipe in per:
        return per[recipe]
    return per.get(recipes.dataset_of(recipe), per.get("*"))


def tag(row: str, seed: int, epochs: int | None) -> str:
    """The run's --tag: its record is results/<recipe>-<tag>.json."""
    return f"abl-{row}-s{seed}" + (f"-e{epochs}" if epochs else "")


def parse(record_name: str) -> tuple[str, str, int, int | None] | None:
    """(recipe, row, seed, epochs) of an ablation record's file name (the inverse of :func:`tag`); None for any
    other record."""
    for recipe in PLANNED_EPOCHS:
        head = f"{recipe}-abl-"
        if not (record_name.startswith(head) and record_name.endswith(".json")):
            continue
        row, _, rest = record_name[len(head):-len(".json")].rpartition("-s")
        seed, _, epochs = rest.partition("-e")
        if row in ROWS and seed.isdigit() and (not epochs or epochs.isdigit()):
            return recipe, row, int(seed), int(epochs) if epochs else None
    return None


def ablation_records(records: dict[str, dict]) -> dict[tuple[str, int | None, str], dict[int, dict]]:
    """``(recipe, epochs, row) -> {seed: record}`` of the ablation records among ``records`` (file name -> record),
    with each faithful recipe's headline run (results/<recipe>-full.json) as its ``faithful`` row at its own length
    (``epochs`` None), under its own seed."""
    runs: dict[tuple[str, int | None, str], dict[int, dict]] = {}
    for name, rec in records.items():
        parsed = parse(name)
        if parsed is not None:
            recipe, row, seed, epochs = parsed
            runs.setdefault((recipe, epochs, row), {})[seed] = rec
    for recipe in PLANNED_EPOCHS:
        if f"{recipe}-full.json" in records:
            full = records[f"{recipe}-full.json"]
            runs.setdefault((recipe, None, "faithful"), {})[int(full["seed"])] = full
    return runs


def test_accuracies(records: dict[str, dict]) -> dict[tuple[str, int | None, str], dict[int, float]]:
    """``(recipe, epochs, row) -> {seed: test accuracy}`` of :func:`ablation_records`."""
    return {key: {seed: rec["metrics"]["test_acc"] for seed, rec in by_seed.items()}
            for key, by_seed in ablation_records(records).items()}


def planned_seeds(epochs: int | None) -> tuple[int, ...]:
    """The seeds the driver runs by default: at a recipe's own length one beside its headline run's, shortened two."""
    return SEEDS_SHORTENED if epochs else SEEDS


def settled_by_one_seed(recipe: str, row: str, seed: int, epochs: int | None, results: Path = ROOT / "results"
                        ) -> str | None:
    """Why ``seed`` of ``row`` need not run: a row gets a second seed only where its first differs from the faithful
    runs' mean by under a point (SETTLED_GAP). None where it must run (or where the records cannot tell yet)."""
    if row == "faithful":
        return None
    names = [p.name for p in results.glob(f"{recipe}-*.json")]
    accs = test_accuracies({n: json.loads((results / n).read_text()) for n in names
                            if parse(n) is not None or n == f"{recipe}-full.json"})
    gap = settling_gap(accs, recipe, row, epochs, before_seed=seed)
    if gap is None:
        return None
    return (f"its first seed lands {100 * gap:+.2f} points from the faithful mean: a point or more, so one seed is kept "
            "(the table reads it as a hint)")


def settling_gap(accs: dict, recipe: str, row: str, epochs: int | None, before_seed: int | None = None
                 ) -> float | None:
    """The first seed's gap from the faithful runs' mean (``accs`` from :func:`test_accuracies`), where it is a point
    or more, so that one seed settles the row; None where it is under a point (a second seed is due), or where the
    records cannot tell yet. ``before_seed``: the first seed among those below it."""
    earlier = [a for k, a in sorted(accs.get((recipe, epochs, row), {}).items())
               if before_seed is None or k < before_seed]
    faithful = accs.get((recipe, epochs, "faithful"), {})
    if row == "faithful" or not earlier or not faithful:
        return None
    gap = earlier[0] - sum(faithful.values()) / len(faithful)
    return gap if round(abs(gap), 6) >= SETTLED_GAP else None  # accuracies are multiples of 1e-4: a point is one


def needless(recipe: str, row: str, seed: int, epochs: int | None, results: Path, every_seed: bool) -> str | None:
    """Why the run need not start: its record exists, or (unless ``every_seed``) its row's first seed settles the
    row. None where it must run."""
    record = results / f"{recipe}-{tag(row, seed, epochs)}.json"
    if record.is_file():
        return f"recorded ({record})"
    why = None if every_seed else settled_by_one_seed(recipe, row, seed, epochs, results)
    return None if why is None else f"not needed, {why}"


def run_file(recipe: str, row: str, seed: int, epochs: int | None, runs: Path, suffix: str) -> Path:
    """A run's file in the checkpoint folder ``runs``: ``.pt`` its checkpoint, ``.driver`` the name its driver's
    claim locks."""
    return runs / f"{recipe}-{tag(row, seed, epochs)}{suffix}"


def claim(recipe: str, row: str, seed: int, epochs: int | None, runs: Path) -> ckpt.RunLock:
    """The lock a driver holds on a run from before it starts until its record is written (the run's own checkpoint
    lock covers its training only)."""
    return ckpt.RunLock(run_file(recipe, row, seed, epochs, runs, ".driver"))


def running_elsewhere(recipe: str, row: str, seed: int, epochs: int | None, runs: Path,
                      earlier_seeds: bool = True) -> str | None:
    """Why ``seed`` of ``row`` is left to another process (a second driver): the run, or with ``earlier_seeds`` an
    earlier seed of its row (whose result decides whether this one is needed), is claimed by a driver or holds its
    checkpoint's lock there. None where neither is held."""
    for earlier in range(seed + 1) if earlier_seeds else (seed,):
        for lock in (claim(recipe, row, earlier, epochs, runs),
                     ckpt.RunLock(run_file(recipe, row, earlier, epochs, runs, ".pt"))):
            holder = lock.in_use()
            if holder is not None:
                run = "it" if earlier == seed else f"its seed {earlier}"
                return f"{run} is running in process {holder.get('pid')} on {holder.get('host')}"
    return None


def from_root(path: str) -> str:
    """``path`` (relative to where the driver started) as the runs, which start in ROOT, must name it: relative to
    ROOT where it can be (each record names its data copy as its run was given it, and records hold no machine
    paths), else absolute."""
    full = Path(path).expanduser().resolve()
    try:
        return os.path.relpath(full, ROOT)
    except ValueError:  # another drive (Windows)
        return str(full)


def command(recipe: str, row: str, seed: int, epochs: int | None, passthrough: list[str], runs: Path
            ) -> list[str] | None:
    """The run's train_recipe.py call, its checkpoint in the checkpoint folder ``runs``; None where the row does not
    apply to ``recipe``."""
    sets = overrides(row, recipe)
    if sets is None:
        return None
    cmd = [sys.executable, str(ROOT / "scripts" / "train_recipe.py"), recipe, "--seed", str(seed), "--tag",
           tag(row, seed, epochs), "--resume", *passthrough, "--checkpoint",
           str(run_file(recipe, row, seed, epochs, runs, ".pt"))]
    for s in sets:
        cmd += ["--set", s]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    if row == "fp32":
        cmd += ["--precision", "fp32"]
    length = f"at {epochs} epochs" if epochs else "at its own length"
    return cmd + ["--notes", f"ablation of {recipe} {length}: row {row} ({ROWS[row][0]}), seed {seed}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?", choices=list(PLANNED_EPOCHS))
    ap.add_argument("--rows", nargs="*", default=[r for r in ROWS if r not in COSTLY_ROWS], choices=list(ROWS),
                    help=f"default: every row but the costly ones ({', '.join(COSTLY_ROWS)}), which run only when named")
    ap.add_argument("--seeds", nargs="*", type=int, default=None, help="default: 1 (0 and 1 with --epochs)")
    ap.add_argument("--epochs", type=int, default=None, help="shorter runs (e.g. 10 for CIFAR-10)")
    ap.add_argument("--data-root", default=data.default_data_root())
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-dir", default=str(ROOT), help="where the runs write (and the driver reads) results/")
    ap.add_argument("--checkpoint-dir", default=None,
                    help="the runs' checkpoints and the drivers' claims (default: checkpoints/runs under --out-dir); "
                         "e.g. a folder that outlives the machine's work tree, such as a mounted drive")
    ap.add_argument("--list", action="store_true", help="print the rows and their overrides")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--every-seed", action="store_true",
                    help="run every seed of every row (default: a later seed only where the first lands under a "
                         "point from the faithful mean)")
    args = ap.parse_args(argv)
    if args.list:
        for row, (what, per) in ROWS.items():
            print(f"{row:20s} {what}; " + "; ".join(f"{d}: {'does not apply' if s is None else ' '.join(s) or '-'}"
                                                 for d, s in per.items()))
        return 0
    if args.recipe is None:
        ap.error(f"give a recipe ({', '.join(PLANNED_EPOCHS)}), or --list")
    if args.epochs is not None and args.epochs < 5:
        ap.error(f"--epochs {args.epochs}: at least 5, so that the warmup (a fifth of the epochs) is a whole epoch")
    seeds = args.seeds if args.seeds is not None else planned_seeds(args.epochs)
    out = Path(args.out_dir).resolve()  # the runs start in ROOT: paths relative to this folder would move
    passthrough = ["--data-root", from_root(args.data_root), "--out-dir", str(out)] + (
        ["--threads", str(args.threads)] if args.threads else [])
    results = out / "results"
    runs = Path(args.checkpoint_dir).expanduser().resolve() if args.checkpoint_dir else out / "checkpoints" / "runs"
    left = 0  # runs left to other processes
    plan = [(seed, row) for seed in seeds for row in args.rows]
    # a run with a checkpoint first: finishing a half-done run beats starting a new one; the costly rows last, so
    # that every cheap row's seeds (which decide what the table may say) land before them
    plan.sort(key=lambda run: (not run_file(args.recipe, run[1], run[0], args.epochs, runs, ".pt").is_file(),
                               run[1] in COSTLY_ROWS))
    for seed, row in plan:
        cmd = command(args.recipe, row, seed, args.epochs, passthrough, runs)
        if cmd is None:
            print(f"{row}: does not apply to {args.recipe}")
            continue
        why = needless(args.recipe, row, seed, args.epochs, results, args.every_seed)
        if why is not None:
            print(f"{row} seed {seed}: {why}")
            continue
        # a later seed waits for its row's earlier one only where that result decides whether it runs
        waits = row != "faithful" and not args.every_seed
        busy = running_elsewhere(args.recipe, row, seed, args.epochs, runs, earlier_seeds=waits)
        if busy is not None:
            print(f"{row} seed {seed}: left to another process, {busy}")
            left += 1
            continue
        if args.dry_run:
            print(shlex.join(cmd[1:]), flush=True)
            continue
        lock = claim(args.recipe, row, seed, args.epochs, runs)
        try:
            lock.acquire(verbose=False)
        except ckpt.CheckpointError as e:
            if lock.in_use() is None:  # not another driver's claim: the folder cannot be written, say
                print(f"{row} seed {seed}: {e}", file=sys.stderr)
                return 1
            print(f"{row} seed {seed}: left to another process, which claimed it a moment ago")
            left += 1
            continue
        try:  # what another driver may have finished between the check above and this claim
            why = needless(args.recipe, row, seed, args.epochs, results, args.every_seed)
            if why is not None:
                print(f"{row} seed {seed}: {why}")
                continue
            print(shlex.join(cmd[1:]), flush=True)
            if subprocess.run(cmd, cwd=ROOT).returncode != 0:
                return 1
        finally:
            lock.release()
    if left:
        print(f"{left} run(s) left to other processes: run this command again once they have ended, in case one "
              "of them stopped before its record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
