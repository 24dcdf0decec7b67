"""Render the README's results and speed tables from results/*.json, so they cannot drift from the runs.

    python scripts/results_table.py          # rewrite the marked sections of README.md
    python scripts/results_table.py --check  # exit 1 if README.md is out of date (the tests run this)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def load_records(results_dir: Path) -> list[tuple[str, dict]]:
    records = []
    # training runs (lower-case names) first, then notebook runs
    for path in sorted(results_dir.glob("*.json"), key=lambda p: (p.name[0].isupper(), p.name)):
        if path.stem.endswith("-smoke"):
            continue
        records.append((path.name, json.loads(path.read_text())))
    return records


def hardware(rec: dict) -> str:
    hw = rec["hardware"]
    if "gpu" in hw:
        return hw["gpu"]
    threads = rec.get("config", {}).get("threads", hw.get("torch_threads"))
    return f"{hw['cpu']}, {threads} of {hw['cpu_count']} CPU threads"


def dataset(rec: dict) -> str:
    d = rec["dataset"]
    if "JPEG" in d:
        return "CIFAR-10 JPEG copy"
    if "CIFAR10 python batches" in d:
        return "CIFAR-10 (original batches)"
    if "MNIST" in d:
        return "MNIST (original IDX)"
    return d


def budget(rec: dict) -> str:
    m, cfg = rec["metrics"], rec.get("config", {})
    if cfg.get("checkpoint"):
        return f"evaluates the weights in `{cfg['checkpoint']}`"
    parts = [f"{rec['wall_time_s'] / 60:.0f} min wall"]
    if m.get("epochs_run") is not None:
        planned = cfg.get("fit", {}).get("epochs")
        parts.append(f"{m['epochs_run']} epochs" + (f" of {planned}" if planned and planned != m["epochs_run"] else ""))
    if m.get("optimizer_steps"):
        parts.append(f"{m['optimizer_steps']:,} steps")
    if cfg.get("budget_min"):
        parts.append(f"budget {cfg['budget_min']:g} min")
    return ", ".join(parts)


def pct(x) -> str:
    return "" if x is None else f"{100 * x:.2f} %"


def results_table(records) -> str:
    rows = ["| run | test acc | best val acc | params | budget | hardware | data | seed | record |",
            "|---|---:|---:|---:|---|---|---|---:|---|"]
    for name, rec in records:
        if name.startswith("bench-") or "test_acc" not in rec["metrics"]:
            continue
        m = rec["metrics"]
        run = f"`{rec.get('config', {}).get('recipe', name.removesuffix('.json'))}`"
        if name[0].isupper():  # a notebook's record, e.g. VisualizeAttentionMap-full-strong.json
            run += f" in {name.split('-')[0]}.ipynb"
        params = f"{m['parameters'] / 1e6:.2f} M" if m.get("parameters") else ""
        rows.append(f"| {run} | **{pct(m['test_acc'])}** | {pct(m.get('best_val_acc', m.get('val_acc')))} | "
                    f"{params} | {budget(rec)} | {hardware(rec)} | {dataset(rec)} | {rec['seed']} | "
                    f"[{name}](results/{name}) |")
    return "\n".join(rows)


def speed_table(records) -> str:
    lines = []
    for name, rec in records:
        if not name.startswith("bench-"):
            continue
        m, cfg, hw = rec["metrics"], rec["config"], rec["hardware"]
        lines.append(f"Measured by `python bench/bench_throughput.py` on {hw['cpu']} (torch threads: "
                     f"{hw['torch_threads']}){', ' + hw['gpu'] if 'gpu' in hw else ''}: ViT dim {cfg['dim']}, depth {cfg['depth']}, "
                     f"heads {cfg['heads']}, MLP {cfg['mlp_dim']}, patch {cfg['patch_size']}, batch {cfg['batch']}; "
                     f"median of {cfg['rounds']} interleaved rounds ([{name}](results/{name})).\n")
        compiled = "ours (sdpa, torch.compile)"
        has_compiled = any(compiled in ips for ips in m["training_images_per_s"].values())
        lines += ["| device, precision | ours (SDPA) | ours (explicit attention) | HF ViT (SDPA) | ours / HF | "
                  "SDPA / explicit |" + (" ours compiled (first 3 steps) |" if has_compiled else ""),
                  "|---|---:|---:|---:|---:|---:|" + ("---:|" if has_compiled else "")]
        for key, ips in m["training_images_per_s"].items():
            ours, explicit, hf = ips["ours (sdpa)"], ips["ours (explicit)"], ips["hf (sdpa)"]
            row = (f"| {key} | {ours:.0f} img/s | {explicit:.0f} img/s | {hf:.0f} img/s | "
                   f"x{ours / hf:.2f} | x{ours / explicit:.2f} |")
            if has_compiled:
                row += f" {ips[compiled]:.0f} img/s ({m['warmup_s'][key][compiled]:.0f} s) |"
            lines.append(row)
        for dev, times in m["rollout_ms"].items():
            lines.append(f"\n`attention_rollout` on ViT-B/16-sized attentions (12 layers, 12 heads, 197 tokens, "
                         f"batch 1) on {dev}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items()) + ".")
    return "\n".join(lines) if lines else "_No benchmark recorded yet._"


def render(text: str, records) -> str:
    for marker, body in (("results", results_table(records)), ("speed", speed_table(records))):
        start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
        if start not in text or end not in text:
            raise SystemExit(f"README.md lacks the {start} ... {end} markers")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{body}\n{end}{tail}"
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--readme", default=str(README))
    ap.add_argument("--results", default=str(ROOT / "results"))
    args = ap.parse_args()
    readme = Path(args.readme)
    text = readme.read_text()
    new = render(text, load_records(Path(args.results)))
    if args.check:
        if new != text:
            print("README.md results/speed tables are out of date: run python scripts/results_table.py")
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
