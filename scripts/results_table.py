"""Render the tables of README.md and docs/*.md from results/*.json, so they cannot drift from the runs.

    python scripts/results_table.py          # rewrite the marked sections (<!-- name:start --> ... <!-- name:end -->)
    python scripts/results_table.py --check  # exit 1 if a page is out of date (the tests run this)

README.md holds the headline table (the run of each recipe that read best on validation); docs/results.md the full table,
docs/speed.md the benchmarks, docs/explaining.md the faithfulness tests, docs/inductive-bias.md the data-size study.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vitkit.recipes import BUDGET_RECIPES, RECIPES, dataset_of  # noqa: E402  (named_recipe matches explorations to them)


class RecordError(ValueError):
    """A results folder or record the tables cannot be built from; the message names the file."""


def load_records(results_dir: Path) -> list[tuple[str, dict]]:
    """Every record of ``results_dir`` (smoke runs left out), training runs (lower-case names) first. A missing or
    empty folder, a file that is not JSON, a record without metrics, config or hardware, or a NaN accuracy raise
    :class:`RecordError` naming the file: the tables are never rebuilt from nothing."""
    if not results_dir.is_dir():
        raise RecordError(f"--results {results_dir} is not a folder; pass the folder holding the run records "
                          "(results/ of the repository).")
    paths = sorted(results_dir.glob("*.json"), key=lambda p: (p.name[0].isupper(), p.name))
    records = []
    for path in paths:
        if path.stem.endswith("-smoke"):
            continue
        try:
            record = json.loads(path.read_text())
        except ValueError as e:
            raise RecordError(f"{path.name} is not valid JSON ({e}); restore it from git or remove it.") from None
        missing = [k for k in ("metrics", "config", "hardware") if not isinstance(record, dict) or k not in record]
        if missing:
            raise RecordError(f"{path.name} lacks {', '.join(missing)}: it is not a run record (records.save_results "
                              "writes them).")
        nan = [k for k, v in record["metrics"].items() if isinstance(v, float) and not math.isfinite(v)]
        if nan:
            raise RecordError(f"{path.name}: metrics {', '.join(nan)} are NaN or infinite; fix the record.")
        records.append((path.name, record))
    if not records:
        raise RecordError(f"--results {results_dir} holds no run records; pass the folder holding them (results/ "
                          "of the repository).")
    return records


_BF16 = {True: " (AVX512-BF16)", False: " (no native bf16)"}  # a CPU's native bf16 support, as tables say it


def _threads(rec: dict):
    """The torch threads a run trained with: its config's where it set them, else what the machine reported."""
    return rec.get("config", {}).get("threads", rec["hardware"].get("torch_threads"))


def hardware(rec: dict) -> str:
    hw = rec["hardware"]
    if "gpu" in hw:
        return hw["gpu"]
    threads = _threads(rec)
    bf16 = _BF16.get(hw.get("cpu_native_bf16"), "")
    return f"{hw['cpu']}{bf16}, {threads} of {hw['cpu_count']} CPU threads"


def dataset(rec: dict) -> str:
    d = rec["dataset"]
    if "JPEG" in d:
        return "CIFAR-10 JPEG copy"
    if "CIFAR10 python batches" in d:
        return "CIFAR-10 (original batches)"
    if "MNIST" in d:
        return "MNIST (original IDX)"
    return d


def budget(rec: dict, by_name: dict | None = None) -> str:
    """The run's cost: wall time, epochs, steps, TFLOP, its budget; for a run started from another run's weights,
    that run too (found in ``by_name`` by the weights' file name), so the table states what the result cost in all."""
    m, cfg = rec["metrics"], rec.get("config", {})
    if cfg.get("checkpoint"):
        return f"evaluates the weights in `{cfg['checkpoint']}`"
    if cfg.get("weights"):
        return f"evaluates the shipped weights `{cfg['weights']}`"
    parts = [f"{rec['wall_time_s'] / 60:.0f} min wall"]
    if m.get("epochs_run") is not None:
        planned = cfg.get("fit", {}).get("epochs")
        parts.append(f"{m['epochs_run']} epochs" + (f" of {planned}" if planned and planned != m["epochs_run"] else ""))
    if m.get("optimizer_steps"):
        parts.append(f"{m['optimizer_steps']:,} steps")
    if m.get("train_tflop"):
        parts.append(f"{m['train_tflop']:.0f} TFLOP")
    minutes = cfg.get("budget_min") or cfg.get("time_budget_min")  # train_recipe.py's, a notebook's
    if minutes:
        parts.append(f"budget {minutes:g} min")
    if cfg.get("init_from"):
        warmup = cfg["fit"].get("warmup_fraction", 0)
        parts.append(f"started from `{cfg['init_from']}` (LR {cfg['fit']['lr']:g}, "
                     + (f"warmup {warmup:.0%})" if warmup else "no warmup)"))
        before = (by_name or {}).get(Path(cfg["init_from"]).stem + ".json")
        if before is not None:
            total = (before["wall_time_s"] + rec["wall_time_s"]) / 60
            epochs = before["metrics"].get("epochs_run", 0) + m.get("epochs_run", 0)
            parts.append(f"the run that made them: {before['wall_time_s'] / 60:.0f} min; both together {total:.0f} min "
                         f"wall, {epochs} epochs")
    return ", ".join(parts)


def pct(x) -> str:
    return "" if x is None else f"{100 * x:.2f} %"


def pct_spread(sp: dict) -> str:
    """A :func:`vitkit.stats.spread` as "mean % ± std" (the std in points; left out for a single run)."""
    return pct(sp["mean"]) + (f" ± {100 * sp['std']:.2f}" if sp.get("std") is not None else "")


def _val_acc(rec: dict) -> float | None:
    """The validation accuracy a choice between runs reads: the best epoch's (a notebook's record: its val_acc)."""
    m = rec["metrics"]
    return m.get("best_val_acc", m.get("val_acc"))


def _accuracy_records(records):
    return [(name, rec) for name, rec in records if not name.startswith("bench-") and "test_acc" in rec["metrics"]]


def named_recipe(rec: dict) -> str | None:
    """The recipe whose model, data and fit settings a record ran: its own, or for an exploration (a recipe with
    ``--set`` overrides) the named recipe with exactly the settings it ended up with, if one exists."""
    cfg = rec.get("config", {})
    if not cfg.get("overrides"):
        return cfg.get("recipe")
    ran = {k: cfg.get(k) for k in ("model", "data", "fit")}
    return next((name for name, r in RECIPES.items() if r == ran), None)


def weights_table(records, folder: Path = ROOT / "weights") -> str:
    """Every file in weights/ with the recipe and test accuracy of the record its own header names, then which
    shipped file is the best model of each dataset (chosen by its run's validation accuracy)."""
    from safetensors import safe_open

    by_name = dict(records)
    rows = ["| file | recipe | test acc of this file's run | record |", "|---|---|---:|---|"]
    best: dict[str, tuple[float, float, str]] = {}  # dataset -> (validation acc, test acc, file)
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            header = {k: json.loads(v) for k, v in (f.metadata() or {}).items() if k != "vit_config"}
        name, recipe = Path(header.get("record", "")).name, header.get("recipe", "?")
        rec = by_name.get(name)
        acc = pct(rec["metrics"]["test_acc"]) if rec else "no record"
        rows.append(f"| `weights/{path.name}` | `{recipe}` | **{acc}** | "
                    + (f"[{name}](results/{name}) |" if rec else "|"))
        dataset = dataset_of(recipe)
        val = _val_acc(rec) if rec else None
        if val is not None and val > best.get(dataset, (-1.0,))[0]:
            best[dataset] = (val, rec["metrics"]["test_acc"], path.name)
    names = {"cifar10": "CIFAR-10", "mnist": "MNIST"}
    lines = [f"The best shipped {names.get(d, d)} model (chosen on validation): `weights/{f}` ({pct(t)} test)."
             for d, (_, t, f) in sorted(best.items())]
    return "\n".join(rows) + ("\n\n" + " ".join(lines) if lines else "")


def partial(rec: dict, recipe: str | None) -> bool:
    """A run that stopped short of its recipe's own length: fewer epochs than the recipe's, unless the recipe's
    length is a budget (BUDGET_RECIPES) and a budget ended the run."""
    m, cfg = rec["metrics"], rec.get("config", {})
    planned, ran = cfg.get("fit", {}).get("epochs"), m.get("epochs_run")
    if planned is None or ran is None or ran >= planned:
        return False
    recipe = recipe or cfg.get("recipe") or ""  # an exploration: the recipe it started from
    budgeted = bool({recipe, f"cifar10-{recipe}", f"mnist-{recipe}"} & BUDGET_RECIPES)  # notebooks say "fast"
    return not (budgeted and (cfg.get("budget_min") or cfg.get("max_tflop") or cfg.get("time_budget_min")))


def headline_table(records) -> str:
    """The README's table: the complete run of each training recipe that read best on validation, linked to its record (partial runs are in
    docs/results.md, labelled so)."""
    best: dict[str, tuple[str, dict]] = {}
    by_name = dict(records)
    for name, rec in _accuracy_records(records):
        recipe = named_recipe(rec)
        if name[0].isupper() or recipe is None or name.startswith("explore-") or partial(rec, recipe):
            continue
        val = _val_acc(rec)
        if val is not None and (recipe not in best or val > _val_acc(best[recipe][1])):
            best[recipe] = (name, rec)  # chosen on validation; test accuracy is only reported
    rows = ["| recipe | test acc | budget | hardware | record |", "|---|---:|---|---|---|"]
    for recipe, (name, rec) in sorted(best.items()):
        rows.append(f"| `{recipe}` | **{pct(rec['metrics']['test_acc'])}** | {budget(rec, by_name)} | {hardware(rec)} | "
                    f"[{name}](results/{name}) |")
    return "\n".join(rows)


def results_table(records) -> str:
    rows = ["| run | test acc | best val acc | params | budget | hardware | data | seed | record |",
            "|---|---:|---:|---:|---|---|---|---:|---|"]
    by_name = dict(records)
    for name, rec in _accuracy_records(records):
        m = rec["metrics"]
        cfg = rec.get("config", {})
        run = f"`{cfg.get('recipe', name.removesuffix('.json'))}`"
        if partial(rec, named_recipe(rec)):
            run += " (partial)"
        if cfg.get("overrides"):  # an exploration: the recipe with some entries changed (train_recipe.py --set)
            run += " with " + ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in cfg["overrides"].items())
        own = RECIPES.get(cfg.get("recipe"), {}).get("fit", {}).get("epochs")
        if own and cfg.get("fit", {}).get("epochs", own) < own and cfg["recipe"] not in BUDGET_RECIPES \
                and not cfg.get("init_from"):  # train_recipe.py --epochs (a budget recipe's epochs are a cap)
            run += f", shortened to {cfg['fit']['epochs']} of its {own} epochs"
        if name[0].isupper():  # a notebook's record, e.g. VisualizeAttentionMap-full-strong.json
            run += f" in {name.split('-')[0]}.ipynb"
        params = f"{m['parameters'] / 1e6:.2f} M" if m.get("parameters") else ""
        rows.append(f"| {run} | **{pct(m['test_acc'])}** | {pct(m.get('best_val_acc', m.get('val_acc')))} | "
                    f"{params} | {budget(rec, by_name)} | {hardware(rec)} | {dataset(rec)} | {rec['seed']} | "
                    f"[{name}](results/{name}) |")
    return "\n".join(rows)


def _legacy_speed_lines(name: str, rec: dict) -> list[str]:
    """Records of the first bench (ours/explicit/HF SDPA only), kept for the hardware they were measured on."""
    m, cfg, hw = rec["metrics"], rec["config"], rec["hardware"]
    lines = [f"Record of the first bench script ([{name}](results/{name}), {hw['cpu']}, torch threads {hw['torch_threads']}"
             f"{'; ' + rec['notes'] if rec.get('notes') else ''}): ViT dim {cfg['dim']}, depth {cfg['depth']}, "
             f"MLP {cfg['mlp_dim']}, batch {cfg['batch']}.\n",
             "| device, precision | ours (SDPA) | ours (explicit attention) | HF ViT (SDPA) |", "|---|---:|---:|---:|"]
    for key, ips in m["training_images_per_s"].items():
        lines.append(f"| {key} | {ips['ours (sdpa)']:.0f} img/s | {ips['ours (explicit)']:.0f} img/s | "
                     f"{ips['hf (sdpa)']:.0f} img/s |")
    return lines


def _bench_lines(name: str, rec: dict) -> list[str]:
    m, cfg, hw = rec["metrics"], rec["config"], rec["hardware"]
    where = hw["cpu"] + (" (native bf16)" if hw.get("cpu_native_bf16") else " (no native bf16)" if
                         "cpu_native_bf16" in hw else "")
    lines = [f"Measured by `python bench/bench_throughput.py` on {where}, torch threads {cfg['threads']}"
             f"{', ' + hw['gpu'] if 'gpu' in hw else ''}: ViT dim {cfg['dim']}, depth {cfg['depth']}, heads "
             f"{cfg['heads']}, MLP {cfg['mlp_dim']}, patch {cfg['patch_size']}, batch {cfg['batch']} "
             f"({m['gflop_per_training_image']:.2f} GFLOP per training image); median of {cfg['rounds']} "
             f"interleaved rounds of {cfg['steps']} steps ([{name}](results/{name})). Matmul peak: "
             + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in m["peak_gflops"].items()) + ".\n",
             "| precision | variant | img/s | GFLOP/s | % of peak | vs fastest peer | first 3 steps |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for key, ips in m["training_images_per_s"].items():
        for variant, v in sorted(ips.items(), key=lambda kv: -kv[1]):
            bold = "**" if variant == "ours (fit default)" else ""
            lines.append(f"| {key} | {bold}{variant}{bold} | {v:.0f} | {m['gflops'][key][variant]:.0f} | "
                         f"{100 * m['fraction_of_peak'][key][variant]:.0f} % | "
                         f"{m['vs_fastest_peer'][key][variant]:.2f}x | {m['warmup_s'][key][variant]:.1f} s |")
    for dev, peer in m.get("fastest_peer", {}).items():
        fd = m["fit_default"][dev]
        key = f"{dev}-{fd['precision']}"
        if "ours (fit default)" in m["training_images_per_s"].get(key, {}):
            lines.append(f"\n**{dev}:** `fit` by default runs {fd['precision']}, torch.compile "
                         f"{'on' if fd['compiled'] else 'off'}: "
                         f"{m['vs_fastest_peer'][key]['ours (fit default)']:.2f}x the fastest peer configuration "
                         f"({peer['config']}, {peer['images_per_s']:.0f} img/s) and "
                         f"{100 * m['fraction_of_peak'][key]['ours (fit default)']:.0f} % of the "
                         f"{fd['precision']} matmul peak.")
    for skipped in m.get("skipped", []):
        lines.append(f"\nSkipped: {skipped}.")
    for dev, times in m["rollout_ms"].items():
        overhead = times.get("check_overhead_pct")
        lines.append(f"\n`attention_rollout` on ViT-B/16-sized attentions (12 layers, 12 heads, 197 tokens, "
                     f"batch 1) on {dev}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items()
                                                       if k != "check_overhead_pct")
                     + (f"; its input checks add {overhead:.0f} %" if overhead is not None else "") + ".")
    return lines


def speed_table(records) -> str:
    lines = []
    for name, rec in records:
        if name.startswith("bench-") and not name.startswith(("bench-dropout-", "bench-fit-")):
            lines += (_bench_lines if "peak_gflops" in rec["metrics"] else _legacy_speed_lines)(name, rec) + [""]
    return "\n".join(lines).strip() if lines else "_No benchmark recorded yet._"


def fit_speed_table(records) -> str:
    """bench/bench_fit.py's records: a recipe trained by fit itself in each layout and compile setting, fit's own
    training images/s (median of interleaved rounds, every round listed), and what the default chose."""
    lines = []
    for name, rec in records:
        if not name.startswith("bench-fit-"):
            continue
        cfg, m = rec["config"], rec["metrics"]
        chosen = m["chosen"]["fit default"]
        lines += ([""] if lines else []) + [
            f"Measured by `python bench/bench_fit.py` ([{name}](results/{name})) on {hardware(rec)}: recipe "
            f"`{cfg['recipe']}`, {cfg['steps']} optimizer steps per `fit` call, median of {cfg['rounds']} interleaved "
            f"rounds. `fit`'s default chose: {chosen['precision']}, compile {'on' if chosen['compiled'] else 'off'}, "
            f"{'channels-last' if chosen['channels_last'] else 'standard'} layout.\n",
            "| variant | training images/s | every round |", "|---|---:|---|"]
        for variant, ips in sorted(m["training_images_per_s"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {variant} | {ips:.0f} | " + ", ".join(f"{x:.0f}" for x in m["rounds"][variant]) + " |")
    return "\n".join(lines) or "_No bench_fit record yet (`python bench/bench_fit.py --data-root <data>`)._"


def dropout_table(records) -> str:
    """bench/bench_dropout.py's records: one recipe's model with its dropout (our masks, PyTorch's) and without, each
    eager, compiled (inductor's random numbers) and compiled with aten's, images/s (median of interleaved rounds) of
    one run each; a column a record did not measure is empty."""
    runs = [(name, rec) for name, rec in records if name.startswith("bench-dropout-")]
    if not runs:
        return "_No record of bench/bench_dropout.py yet._"
    columns = list(dict.fromkeys(k for _, rec in runs for k in rec["metrics"]["training_images_per_s"]))
    lines = ["| recipe (dropout: embeddings+residual / attention / MLP) | machine | " + " | ".join(columns) + " |",
             "|---|---|" + "---:|" * len(columns)]
    for name, rec in runs:
        ips, cfg = rec["metrics"]["training_images_per_s"], rec["config"]
        drop = "/".join(f"{cfg['model'].get(k, 0.0):g}" for k in ("dropout", "attn_dropout", "mlp_dropout"))
        lines.append(f"| [`{cfg['recipe']}`](results/{name}) ({drop}), batch {cfg['batch']}, {cfg['precision']}, "
                     f"median of {cfg['rounds']} rounds | {hardware(rec)} | "
                     + " | ".join(f"{ips[c]:.0f}" if c in ips else "" for c in columns) + " |")
    return "\n".join(lines)


def profile_findings(records) -> str:
    """bench/profile_step.py's newest record for each model profiled (the benchmark's, each recipe's) and CPU kind:
    images/s, the share of the matmul peak where the record measured it, where a training step's time goes, and the
    most any change that keeps the maths could gain (1 / the share of matrix products and convolutions)."""
    newest = {}
    for name, rec in sorted(records, key=lambda r: r[1].get("date", "")):
        if name.startswith("profile-") and "profiles" in rec:
            newest[(rec["config"].get("recipe"), rec["hardware"].get("cpu_native_bf16"))] = (name, rec)
    if not newest:
        return "_No profile record yet (`python bench/profile_step.py --threads 2`)._"
    named = ("matrix products", "convolutions", "compiled fused kernels", "LayerNorm / BatchNorm", "GELU",
             "casts and copies", "optimizer")
    blocks = []
    for name, rec in newest.values():
        cfg, profiles, metrics = rec["config"], rec["profiles"], rec["metrics"]
        m = cfg["model"]
        model = f"recipe `{cfg['recipe']}`" if cfg.get("recipe") else "the benchmark's model"
        peak = (f" Matmul peak measured in the same run: {metrics['matmul_peak_gflops']:.0f} GFLOP/s; "
                f"{metrics['gflop_per_training_image']:.3f} GFLOP per training image."
                if "matmul_peak_gflops" in metrics else "")
        lines = [f"Measured by `python bench/profile_step.py` ([{name}](results/{name})) on {hardware(rec)}, "
                 f"{cfg['precision']}, {model}: ViT dim {m['dim']}, depth {m['depth']}, heads {m['heads']}, MLP "
                 f"{m['mlp_dim']}, patch {m['patch_size']}, stem {m.get('stem', 'patch')}, batch {cfg['batch']}, "
                 f"{cfg['steps']} profiled steps.{peak}\n",
                 "| variant | images/s | % of matmul peak | " + " | ".join(named)
                 + " | the rest | at most this much faster with the same maths |",
                 "|---|---:|---:|" + "---:|" * (len(named) + 2)]
        for variant, p in profiles.items():
            share = p["share_by_kind"]
            rest = 1 - sum(share.get(k, 0.0) for k in named)
            of_peak = f"{100 * p['fraction_of_peak']:.0f} %" if "fraction_of_peak" in p else "not measured"
            bound = 1 / (share.get("matrix products", 0.0) + share.get("convolutions", 0.0))
            lines.append(f"| {variant} | {p['images_per_s']:.0f} | {of_peak} | "
                         + " | ".join(pct(share.get(k, 0.0)) for k in named) + f" | {pct(rest)} | {bound:.2f}x |")
        if "loader_ms_per_batch" in metrics:
            step_ms = 1e3 * cfg["batch"] / profiles["ours (fit default)"]["images_per_s"]
            lines.append(f"\nThe recipe's training loader, timed in the same run: "
                         f"{metrics['loader_ms_per_batch']:.1f} ms per batch beside a {step_ms:.1f} ms step "
                         f"({100 * metrics['loader_ms_per_batch'] / (metrics['loader_ms_per_batch'] + step_ms):.0f} % "
                         f"of fit's time per batch; fit draws batches in the training process on a 2-core CPU).")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def faithfulness_table(records) -> str:
    """The perturbation test of the explanation methods, from notebook records that hold one (MNIST, and
    CIFAR-10 where the record has it)."""
    lines = []
    for name, rec in records:
        cfg, m = rec["config"], rec["metrics"]
        for key, what, n_key, weights_key, extra in (
                ("faithfulness", "MNIST test digits", "n_faithful", "weights", True),
                ("faithfulness_cifar10", "CIFAR-10 test images", "n_faithful_cifar10", "cifar10_weights", False)):
            faith = m.get(key)
            if not faith or name.endswith("-smoke.json"):
                continue
            model = cfg.get(weights_key) or cfg.get("recipe")
            acc = f" (test accuracy {pct(m['test_acc'])})" if key == "faithfulness" else ""
            if key == "faithfulness" and "seconds_to_first_maps" in m:
                acc += (f"; its first heat maps appeared {m['seconds_to_first_maps']:.0f} s after the set-up cell "
                        f"({hardware(rec)})")
            lines += ([""] if lines else []) + [
                f"Measured by `VisualizeAttentionMap.ipynb` on {cfg.get(n_key, '?')} {what}, model {model}{acc}; "
                f"[{name}](results/{name}).\n",
                "| method | positive perturbation AUC (lower is better) | negative perturbation AUC (higher is "
                "better) |" + (" map mass on the strokes |" if extra else ""),
                "|---|---:|---:|" + ("---:|" if extra else "")]
            vs = m.get(f"{key}_vs_random", {})  # paired bootstrap over the same images, per method and measure

            def mark(method, measure, lower_better=False):
                r = vs.get(method, {}).get(measure)
                if r is None:
                    return ""
                better = (r["difference"] < 0) == lower_better
                return " (= random)" if not r["beyond_noise"] else "" if better else " (worse than random)"

            for method, f in sorted(faith.items(), key=lambda kv: kv[1]["positive_auc"]):
                lines.append(f"| {method} | {f['positive_auc']:.2f}{mark(method, 'positive_auc', True)} | "
                             f"{f['negative_auc']:.2f}{mark(method, 'negative_auc')} |"
                             + (f" {100 * f['stroke_mass']:.1f} %{mark(method, 'stroke_mass')} |" if extra else ""))
            if vs:
                lines.append("\n(= random): within noise of the random map, |difference| <= twice its standard error "
                             "in a paired bootstrap over the same images; unmarked: better than random beyond it.")
            for measure, lead in m.get(f"{key}_leaders", {}).items():
                what = {"positive_auc": "positive test", "negative_auc": "negative test",
                        "stroke_mass": "mass on the strokes"}[measure]
                scale, unit = (100, "points") if measure == "stroke_mass" else (1, "AUC points")
                gap = f"{scale * abs(lead['difference']):.2f} {unit}, twice its SE {scale * lead['two_standard_errors']:.2f}"
                lines.append(f"- {what}: {lead['first']} first, "
                             + (f"ahead of {lead['second']} ({gap})." if lead["beyond_noise"] else
                                f"{lead['second']} within noise of it ({gap})."))
    return "\n".join(lines) if lines else "_No faithfulness record yet._"


def inductive_bias_table(records) -> str:
    """scripts/inductive_bias_study.py's record: test accuracy per variant and training-set size (mean ± standard
    deviation over seeds), then what vitkit.study.summarize finds, each difference against twice its standard error."""
    from vitkit import study

    rec = dict(records).get("inductive-bias-study.json")
    if rec is None or not rec["metrics"].get("runs"):
        return "_No record of the data-size study yet (`python scripts/inductive_bias_study.py`)._"
    cfg, runs = rec["config"], rec["metrics"]["runs"]
    summ = study.summarize(runs)
    sizes = sorted(int(n) for n in summ["by_size"])
    variants = [v for v in cfg["variants"] if any(r["variant"] == v for r in runs)]
    ratio = {r["variant"]: r["parameters_vs_plain_vit"] for r in runs}
    m = cfg["model"]
    budgets = ", ".join(f"{n:,} images {cfg['tflop'][str(n)]:g} TFLOP" for n in sizes)
    lines = [f"Measured by `scripts/inductive_bias_study.py` ([inductive-bias-study.json](results/inductive-bias-study.json)): "
             f"recipe `{cfg['recipe']}`'s training settings, ViT dim {m['dim']}, depth {m['depth']}, heads {m['heads']}, "
             f"MLP {m['mlp_dim']}, patch {m['patch_size']}; class-balanced subsets (seed {cfg['subset_seed']}), "
             f"{cfg['val_size']:,} validation images; compute per run: {budgets}; on {hardware(rec)}; the runs' "
             f"wall times sum to {rec['wall_time_s'] / 3600:.1f} h. "
             f"{_recounted_share(rec, variants)}"
             f"Test accuracy, mean ± standard deviation over seeds (their number in brackets).\n",
             "| variant | prior | parameters vs the plain ViT | " + " | ".join(f"{n:,} images" for n in sizes) + " |",
             "|---|---|---:|" + "---:|" * len(sizes)]
    for v in variants:
        cells = []
        for n in sizes:
            p = summ["by_size"][str(n)].get(v)
            cells.append("" if p is None else f"{pct_spread(p)} ({p['n']})")
        lines.append(f"| `{v}` | {_PRIORS.get(v, '')} | {ratio[v]:.3f}x | " + " | ".join(cells) + " |")
    lines.append("")
    lines += study.conclusions(summ)
    return "\n".join(lines)


def _recounted_share(rec: dict, variants: list[str]) -> str:
    """Where the study's compute was re-counted (``flop_recount``): the share of its budget each variant's runs
    used, since the count that set the budgets left out attention on the fused CPU kernel, and whether at every size
    each ViT variant used more of it than the CNN."""
    if "flop_recount" not in rec:
        return ""
    runs = rec["metrics"]["runs"]
    share = lambda v, n=None: statistics.mean(r["train_tflop"] / r["tflop_budget"] for r in runs
                                               if r["variant"] == v and n in (None, r["size"]))
    vits = [v for v in variants if v != "cnn"]
    sizes = {r["size"] for r in runs if r["variant"] == "cnn"}
    more = bool(vits and sizes) and all(share(v, n) > share("cnn", n) for n in sizes for v in vits
                                        if any(r["variant"] == v and r["size"] == n for r in runs))
    return ("Re-counted with attention on the fused CPU kernel included (the count that set the budgets left it out; "
            "`flop_recount` in the record), each variant's runs used this share of their budget on average: "
            + ", ".join(f"`{v}` {100 * share(v):.1f} %" for v in variants)
            + (": at every size, every ViT variant trained on more compute than the CNN. " if more else ". "))


_PRIORS = {"vit": "none (linear patch embedding, learned positions)",
           "cct-stem": "CCT tokenizer (convolutions + max-pool)",
           "spt-lsa": "shifted patch tokenization + locality self-attention", "sincos": "fixed 2-D sin-cos positions",
           "cnn": "a small CNN instead of a ViT"}


# The compute-budget targets for a ViT of this kit's family on CIFAR-10: (training TFLOP, test accuracy).
TFLOP_TARGETS = ((160, 0.87), (320, 0.90), (1000, 0.935))


def _chosen_test(m: dict) -> float:
    """The test accuracy validation chose: with flip test-time augmentation (2 views) where it read higher on the
    validation split than the plain model, without it otherwise."""
    flip = m.get("val_acc_flip") is not None and m["val_acc_flip"] > m["best_val_acc"]
    return m["test_acc_flip"] if flip else m["test_acc"]


# The attempts at accuracy per training TFLOP, in the order they were made: (its records, one per seed; what changed;
# the aim of its budget as (TFLOP, test accuracy) or None).
TFLOP_ATTEMPTS = [
    (("cifar10-cpu-cpu60.json",), "`cifar10-cpu` (stride-2 conv stem, patch 4), 60-minute budget, fp32", None),
    (("explore-cifar10-cct-bs64.json",), "+ CCT tokenizer, batch 64, 10 epochs", None),
    (("cifar10-cpu-cct2-bs64-t160.json",), "CCT-2/3x2-like: 2 blocks, MLP ratio 1", (160, 0.80)),
    (("cifar10-cpu-cct-p8-bs64-t160.json", "cifar10-fast-t160-s1.json"), "**CCT tokenizer to a 4x4 grid (patch 8), 4 blocks**", (160, 0.80)),
    (("cifar10-fast-t320.json", "cifar10-fast-t320-s1.json"), "**the same, `cifar10-fast`, 320 TFLOP**", (320, 0.85)),
]


def _aim_verdict(plain: float, chosen: float, aim: float) -> str:
    return "**met**" if plain >= aim else "met with the flips" if chosen >= aim else "missed"


def _over_budget(recs: list[dict], tflop: float) -> str:
    """What a verdict must add where its runs' training compute, re-counted, went over the budget they aimed at:
    their budget was set by a count that left out attention on the fused CPU kernel (``flop_recount``)."""
    used = [r["metrics"].get("train_tflop", 0.0) for r in recs]
    if max(used) <= tflop * (1 + 1e-9):
        return ""
    why = " (set by a count that left out fused attention; `flop_recount` in the records)" if any(
        "flop_recount" in r for r in recs) else ""
    return (f"; but at {', '.join(f'{u:.0f}' for u in used)} TFLOP the runs went "
            f"{100 * (max(used) / tflop - 1):.1f} % over the budget{why}")


def tflop_attempts_table(records) -> str:
    """The attempts at accuracy per training TFLOP, each from its records (the mean over seeds where there are
    several; a blank: the record does not hold it), and whether the mean met its aim, with any seed that alone
    would have read otherwise."""
    from vitkit.stats import spread

    by = dict(records)
    rows = ["| attempt (records) | GFLOP per training image | epochs | training TFLOP | test acc | with flip TTA "
            "(validation's choice) | seeds | aim met |", "|---|---:|---:|---:|---:|---:|---|---|"]
    for names, label, aim in TFLOP_ATTEMPTS:
        recs = [(n, by[n]) for n in names if n in by]
        if not recs:
            continue
        ms = [r["metrics"] for _, r in recs]

        def each(key, form):  # one value where the seeds agree, else each seed's, in the seeds' order
            shown = [format(x[key], form) for x in ms] if all(key in x for x in ms) else [""]
            return shown[0] if len(set(shown)) == 1 else ", ".join(shown)
        gflop, epochs, tflop = each("gflop_per_image", ".3f"), each("epochs_run", "d"), each("train_tflop", ".0f")
        plain, chosen = spread([x["test_acc"] for x in ms]), spread([_chosen_test(x) for x in ms])
        flip = pct_spread(chosen) if all("test_acc_flip" in x for x in ms) else ""
        met = ""
        if aim is not None:
            verdict = _aim_verdict(plain["mean"], chosen["mean"], aim[1])
            alone = [f"seed {r.get('seed')} alone: {_aim_verdict(x['test_acc'], _chosen_test(x), aim[1])}"
                     for (_, r), x in zip(recs, ms) if _aim_verdict(x["test_acc"], _chosen_test(x), aim[1]) != verdict]
            read = plain if verdict == "**met**" else chosen  # the figure the verdict rests on
            close = len(ms) > 1 and abs(read["mean"] - aim[1]) < 2 * read["std"] / math.sqrt(len(ms))
            met = (f"{pct(aim[1])} within {aim[0]} TFLOP: {verdict}" + (" on the mean" if len(ms) > 1 else "")
                   + (", within noise of the aim" if close else "") + "".join(f"; {a}" for a in alone)
                   + _over_budget([r for _, r in recs], aim[0]))
        links = ", ".join(f"[{n[:-5]}](results/{n})" for n, _ in recs)
        seeds = ", ".join(str(r.get("seed")) for _, r in recs) + ("; one seed is a hint" if len(recs) == 1 else "")
        rows.append(f"| {label} ({links}) | {gflop} | {epochs} | {tflop} | {pct_spread(plain)} | {flip} | "
                    f"{seeds} | {met} |")
    return "\n".join(rows) if len(rows) > 2 else "_No record of these attempts._"


def tflop_targets_table(records) -> str:
    """Per target, the runs of the best model per TFLOP (`cifar10-fast`, or a record of exactly its settings) at that
    budget: test accuracy as mean over seeds, plain and as validation chose, and how far that is from the target."""
    from vitkit.stats import spread

    rows = ["| target | runs at that budget (seeds) | test acc, mean ± std | as validation chose (flip TTA or not) | "
            "short of the target by | records |", "|---|---|---:|---:|---:|---|"]
    for tflop, aim in TFLOP_TARGETS:
        runs = sorted(((n, r) for n, r in _accuracy_records(records) if named_recipe(r) == "cifar10-fast"
                       and r.get("config", {}).get("max_tflop") == tflop and "best_val_acc" in r["metrics"]),
                      key=lambda nr: nr[1].get("seed", 0))
        if not runs:
            rows.append(f"| {pct(aim)} within {tflop:,} TFLOP | none (not run: no recipe here reaches the lower "
                        f"targets yet) | | | | |")
            continue
        plain, chosen = ([f(r["metrics"]) for _, r in runs] for f in (lambda m: m["test_acc"], _chosen_test))
        seeds = ", ".join(str(r.get("seed")) for _, r in runs)
        note = f"{len(runs)} ({seeds})" + ("; one seed is a hint" if len(runs) == 1 else "")
        p, c = spread(plain), spread(chosen)
        links = ", ".join(f"[{n[:-5]}](results/{n})" for n, _ in runs)
        short = "met" if c["mean"] >= aim else f"{100 * (aim - c['mean']):.2f} points"
        rows.append(f"| {pct(aim)} within {tflop:,} TFLOP | {note} | {pct_spread(p)} | {pct_spread(c)} | "
                    f"{short} | {links} |")
    return "\n".join(rows)


def localization_table(records) -> str:
    """WeaklySupervisedLocalization.ipynb's full runs: classification accuracy and each map's localization scores."""
    lines = []
    for name, rec in records:
        m = rec["metrics"]
        if "localization" not in m:
            continue
        cfg = rec["config"]
        lines += [f"Measured by `WeaklySupervisedLocalization.ipynb` ([{name}](results/{name})) on {cfg['n_test']:,} "
                  f"cluttered-MNIST test canvases, on {hardware(rec)}, {rec['wall_time_s'] / 60:.0f} min in all: ViT "
                  f"(stem `{m['stem']}`, chosen on validation: "
                  f"{', '.join(f'`{stem}` {pct(acc)}' for stem, acc in m['stem_val_acc'].items())} after "
                  f"{cfg['stem_trial_tflop']:g} TFLOP each) {pct(m['vit_test_acc'])} test accuracy with "
                  f"{m['vit']['train_tflop']:.1f} TFLOP of training, small CNN {pct(m['cnn_test_acc'])} with "
                  f"{m['cnn']['train_tflop']:.1f} TFLOP; seed {rec['seed']}.\n",
                  "| map | model | pointing game | box accuracy (IoU >= 0.5) | threshold (chosen on validation) |",
                  "|---|---|---:|---:|---:|"]
        for method, s in sorted(m["localization"].items(), key=lambda kv: -kv[1]["pointing_game"]):
            model = "CNN" if "CNN" in method else "none" if "baseline" in method else "ViT"
            frac = f"{s['fraction']:.1f}" if s.get("fraction") is not None else ""
            lines.append(f"| {method} | {model} | **{pct(s['pointing_game'])}** | {pct(s['box_accuracy'])} | {frac} |")
    return "\n".join(lines) if lines else "_No full run of the notebook is recorded yet._"


LOCALIZATION_AIMS = {"vit_test_acc": 0.97, "pointing_game": 0.90, "lead_over_baselines": 0.30}  # docs/localization.md


def localization_findings(records) -> str:
    """What WeaklySupervisedLocalization.ipynb's record says against the page's aims, its ranking with the bootstrap
    verdicts (where the record has them), and scripts/check_stem_shift.py's receptive-field checks."""
    by_name = dict(records)
    rec = by_name.get("WeaklySupervisedLocalization-full.json")
    if rec is None:
        return "_No full run of the notebook is recorded yet._"
    m, loc = rec["metrics"], rec["metrics"]["localization"]
    maps = [k for k in loc if k not in ("centre box (baseline)", "random", "Grad-CAM (CNN)")]  # the ViT's maps
    best = max(maps, key=lambda k: loc[k]["pointing_game"])
    baseline = max(loc["centre box (baseline)"]["pointing_game"], loc["random"]["pointing_game"])
    aims = [(f"the ViT classifies {pct(m['vit_test_acc'])} of the test canvases", m["vit_test_acc"],
             LOCALIZATION_AIMS["vit_test_acc"]),
            (f"the ViT's best map ({best}) points inside the box on {pct(loc[best]['pointing_game'])}",
             loc[best]["pointing_game"], LOCALIZATION_AIMS["pointing_game"]),
            (f"it leads the better baseline ({pct(baseline)}) by {100 * (loc[best]['pointing_game'] - baseline):.1f} "
             f"points", loc[best]["pointing_game"] - baseline, LOCALIZATION_AIMS["lead_over_baselines"])]
    lines = ["| aim | measured | met |", "|---|---|---|"]
    targets = (f"ViT test accuracy at least {pct(aims[0][2])}", f"its best map's pointing game at least {pct(aims[1][2])}",
               f"a lead of at least {100 * aims[2][2]:.0f} points over the centre box and the random map")
    for (text, value, aim), target in zip(aims, targets):
        lines.append(f"| {target} | {text} | {'yes' if value >= aim else '**no**'} |")
    for measure, pairs in m.get("ranking", {}).items():
        steps = [pairs[0]["first"]]
        for p in pairs:
            steps.append((f"> ({100 * p['difference']:.2f} points, twice its SE {100 * p['two_standard_errors']:.2f})"
                          if p["beyond_noise"] else "~ (within noise)") + f" {p['second']}")
        lines.append(f"\n{measure.replace('_', ' ').capitalize()}, neighbours in the ranking compared by a paired "
                     f"bootstrap over the test canvases: {' '.join(steps)}.")
    for stem, name in (("conv", "stem-shift-check.json"), ("conv-centred", "stem-shift-check-conv-centred.json")):
        check = by_name.get(name)
        if check is None:
            continue
        c, off = check["metrics"], check["metrics"]["receptive_field_offset_px"]
        lines.append(f"\n`{stem}` stem, [{name}](results/{name}) (a ViT trained by an earlier run): its tokens' "
                     f"effective receptive fields are centred {off['rows']:+.2f} px (rows) and {off['columns']:+.2f} px "
                     f"(columns) from their patch centres; rollout points inside the box on "
                     f"{pct(c['rollout_pointing_game'])} of the canvases, and on "
                     f"{pct(c['rollout_pointing_game_at_receptive_field_centres'])} with each cell moved to its "
                     f"measured centre.")
    return "\n".join(lines)


# What the original project reported (its README: train / val / test, the best validation epoch's weights tested; its
# train accuracy measured in eval mode on those weights), and the faithful recipe that reproduces each run here.
# The original's results (jo1jun/Vision_Transformer), train / val / test: what its README reports and what the last
# version of each notebook prints in its stored outputs, where they differ, each with the recipe of ours that
# reproduces that run. MNIST: the README's numbers are the outputs of notebook commit 3175422 (StepLR); the last
# version, b1f43c7, runs the warmup-cosine schedule. CIFAR-10: the README's numbers match no recoverable version of
# the notebook; the last, f052341, runs what cifar10-original does. HF's ViT and the fine-tuning: one version each.
ORIGINAL = [
    ("MNIST, 10 epochs: the original's README (its notebook at 3175422, StepLR)", (0.97944, 0.97790, 0.9747),
     "mnist-original-steplr"),
    ("MNIST, 10 epochs: the notebook's last version (b1f43c7, warmup-cosine)", (0.98992, 0.98290, 0.98550),
     "mnist-original"),
    ("CIFAR-10, 30 epochs: the original's README (no stored output matches it)", (0.87943, 0.76000, 0.7472),
     "cifar10-original"),
    ("CIFAR-10, 30 epochs: the notebook's last version (f052341)", (0.92294, 0.76600, 0.76260), "cifar10-original"),
    ("CIFAR-10, HF's ViT, 30 epochs", (0.86459, 0.77400, 0.756), "hf-original"),
    ("CIFAR-10, ViT-B/16 fine-tuned, 10 epochs", (1.0, 0.966, 0.9684), "finetune-original"),
]
ORIGINAL_RECIPES = {recipe for _, _, recipe in ORIGINAL}

def _stretches(rec: dict) -> str:
    """Where a run ran, over all its stretches (a resumed run has one per resume), e.g. 'AMD EPYC (AVX512-BF16),
    fp32, 1-2 of 2 CPU threads, 6 stretches (5 resumes)'."""
    cfg, hw = rec["config"], rec["hardware"]
    parts = cfg.get("stretches") or [{"threads": _threads(rec),
                                      "precision": cfg.get("precision"), "native_bf16": hw.get("cpu_native_bf16")}]
    machines = ", ".join(sorted({s.get("machine", hw["cpu"]) for s in parts}))
    flags = {_BF16.get(s.get("native_bf16"), "") for s in parts}
    threads = sorted({s["threads"] for s in parts})
    text = (f"{machines}{flags.pop() if len(flags) == 1 else ''}, {'/'.join(sorted({s['precision'] for s in parts}))}, "
            f"{threads[0] if len(threads) == 1 else f'{threads[0]}-{threads[-1]}'} of {hw['cpu_count']} CPU threads")
    resumes = len(parts) - 1
    return text + (f", {len(parts)} stretches ({resumes} resume{'s' if resumes > 1 else ''})" if resumes else "")


def _complete_original_runs(records) -> dict[str, tuple[str, dict]]:
    """Per original recipe, its first run to the recipe's own end as the recipe is (no overrides), with the train
    accuracy measured in eval mode: the run its row of the table of original results shows."""
    complete = {}
    for name, rec in _accuracy_records(records):
        m, cfg = rec["metrics"], rec.get("config", {})
        recipe = cfg.get("recipe")
        own_length = RECIPES[recipe]["fit"]["epochs"] if recipe in RECIPES else None  # not a run shortened by --epochs
        if recipe in ORIGINAL_RECIPES and not cfg.get("overrides") and m.get("epochs_run") == own_length \
                and cfg.get("fit", {}).get("epochs") == own_length and "train_acc_eval" in m and recipe not in complete:
            complete[recipe] = (name, rec)
    return complete


def original_table(records) -> str:
    """One row per result the original reported: its train / val / test accuracy beside ours from the faithful
    recipe run to its end (train: eval mode on the tested model; the tested model: the best validation epoch's)."""
    rows = ["| result | original train / val / test | ours train / val / test | test: ours minus original | run | "
            "record |", "|---|---:|---:|---:|---|---|"]
    complete = _complete_original_runs(records)
    for what, theirs, recipe in ORIGINAL:
        original = " / ".join(pct(v) for v in theirs)
        if recipe not in complete:
            needs = "needs a GPU and the hub weights" if recipe == "finetune-original" else "no complete run yet"
            rows.append(f"| {what} | {original} | {needs} | | recipe `{recipe}` | |")
            continue
        name, rec = complete[recipe]
        m = rec["metrics"]
        ours = f"{pct(m['train_acc_eval'])} / {pct(m['best_val_acc'])} / **{pct(m['test_acc'])}**"
        gap = f"{100 * (m['test_acc'] - theirs[2]):+.2f} points"
        rows.append(f"| {what} | {original} | {ours} | {gap} | `{recipe}`, {rec['wall_time_s'] / 3600:.1f} h, "
                    f"{_stretches(rec)} | [{name}](results/{name}) |")
    if len(rows) == 2:
        return "_No complete run of an original recipe is recorded yet._"
    return "\n".join(rows) + "\n\n" + _original_noise(records)


def _original_noise(records) -> str:
    """What the gaps of the table of original results are read against: each side is one run; the original's two
    CIFAR-10 results; the faithful recipes' spread over seeds where the ablation records measure it."""
    import original_ablations as oa
    from vitkit import stats

    cifar = [acc[2] for _, acc, r in ORIGINAL if r == "cifar10-original"]
    faithful = sorted(((recipe, epochs, runs) for (recipe, epochs, row), runs
                       in oa.ablation_records(dict(records)).items() if row == "faithful" and len(runs) > 1),
                      key=lambda r: (r[0], r[1] or 0))
    # one machine: a change of machine or thread count drifts a run as a new seed would
    machines = [{_machine(r) for r in runs.values()} for _, _, runs in faithful]
    accs = oa.test_accuracies(dict(records))
    pooled = [_seed_noise(accs, recipe, epochs) for recipe, epochs, _ in faithful]
    measured = [f"`{recipe}` at {f'{epochs} epochs' if epochs else 'its own length'}, "
                f"± {100 * stats.spread([r['metrics']['test_acc'] for r in runs.values()])['std']:.2f} points over "
                f"{len(runs)} seeds" + (f", all on {next(iter(on))}" if len(on) == 1 else "")
                + (f" (pooled over all its ablation rows of that length, which the ablations are read against: "
                   f"± {100 * noise['pooled_std']:.2f}, {noise['df']} df)" if noise and noise["df"] > len(runs) - 1
                   else "")
                for (recipe, epochs, runs), on, noise in zip(faithful, machines, pooled)]
    own_length = any(epochs is None for _, epochs, _ in faithful)
    return ("Each number here, the original's and ours, is one run, so each gap is a hint. The original's two CIFAR-10 "
            f"results (its README's, and its notebook's last version, which may differ in code) differ by "
            f"{100 * (max(cifar) - min(cifar)):.2f} points on test. The faithful recipes' spread of test accuracy over "
            "seeds (the `faithful` rows of the ablation table in docs/results.md): "
            + ("; ".join(measured) if measured else "not measured yet")
            + ("" if own_length or not measured else "; not yet at a recipe's own length") + "."
            + (" Seeds run on one machine may understate the spread: another CPU or thread count drifts a run as "
               "another seed would." if any(len(on) == 1 for on in machines) else ""))


def _within_a_point_of_the_original(recipe: str, complete: dict[str, tuple[str, dict]]) -> str:
    """Why the ablations of ``recipe`` are not needed, when its faithful run to its end (``complete``, from
    :func:`_complete_original_runs`) lands within a point of every test accuracy the original reported for it; ""
    otherwise (no such run, or a gap over a point)."""
    if recipe not in complete:
        return ""
    ours = complete[recipe][1]["metrics"]["test_acc"]
    theirs = [acc[2] for _, acc, r in ORIGINAL if r == recipe]
    if any(abs(ours - t) > 0.01 for t in theirs):
        return ""
    return (f"the faithful run's {pct(ours)} lands within a point of the original's "
            f"{' and '.join(pct(t) for t in theirs)}")


def _machine(rec: dict) -> str:
    """Where a run trained, shortly: the CPU's maker and line (or the GPU) and its torch threads."""
    hw = rec["hardware"]
    if "gpu" in hw:
        return hw["gpu"]
    cpu = " ".join(hw["cpu"].replace("(R)", "").split()[:2])
    threads = _threads(rec)
    return cpu if threads is None else f"{cpu}, {threads} thread{'s' if threads != 1 else ''}"


def _seed_groups(accs: dict, recipe: str, epochs: int | None) -> list[list[float]]:
    """The test accuracies of every row of ``recipe`` at ``epochs``, a list per row: what the seed spread is pooled
    over."""
    return [list(v.values()) for (r, e, _), v in accs.items() if (r, e) == (recipe, epochs)]


_READINGS = {"unpaired": "the faithful runs have one seed: no spread to read it against",
             "hint": "one seed, a point or more away: a hint",
             "due": "one seed so far: under a point, so a second seed is due",
             "one-seed": "one seed, under a point: a hint (the driver's --seeds runs more)"}


def _row_reading(accs: dict, recipe: str, epochs: int | None, row: str) -> dict | None:
    """How an ablation row reads against the faithful runs of its recipe and length (``accs`` from
    ``original_ablations.test_accuracies``): its mean minus the faithful mean (``difference``) and its ``kind``:
    "beyond" or "within" twice the standard error (``two_se``, with ``df``: the seed spread pooled over the rows),
    "unpaired" (the faithful runs have one seed), "hint" (one seed, a point or more away), "due" (one seed under a
    point, a later one planned) or "one-seed" (under a point, none planned). None for the faithful row itself, a row
    not run, or no faithful run."""
    import original_ablations as oa
    from vitkit import stats

    got = accs.get((recipe, epochs, row), {})
    faithful = list(accs.get((recipe, epochs, "faithful"), {}).values())
    if row == "faithful" or not got or not faithful:
        return None
    vals = list(got.values())
    out = {"difference": sum(vals) / len(vals) - sum(faithful) / len(faithful)}
    if len(vals) >= 2 and len(faithful) >= 2:
        d = stats.pooled_difference(vals, faithful, _seed_groups(accs, recipe, epochs))
        return {**out, "kind": "beyond" if d["beyond_noise"] else "within", "two_se": d["two_standard_errors"],
                "df": d["df"]}
    if len(vals) >= 2:
        return {**out, "kind": "unpaired"}
    if oa.settling_gap(accs, recipe, row, epochs) is not None:
        return {**out, "kind": "hint"}
    return {**out, "kind": "due" if any(k > max(got) for k in oa.planned_seeds(epochs)) else "one-seed"}


def ablation_table(records) -> str:
    """scripts/original_ablations.py's runs: per faithful recipe and run length, the faithful runs (the noise) and
    each row with one difference switched back to ours, test accuracy per seed, and each row's mean minus the
    faithful mean against twice its standard error (where both have two seeds or more), from the seed-to-seed spread
    pooled over every row of that recipe and length (:func:`vitkit.stats.pooled_difference`)."""
    import original_ablations as oa
    from vitkit import stats

    by = dict(records)
    complete = _complete_original_runs(records)
    accs = oa.test_accuracies(by)
    runs = oa.ablation_records(by)
    lines = ["| recipe | row: switched back to ours | test acc per seed | mean ± std over seeds | row minus faithful |",
             "|---|---|---|---:|---:|"]
    for recipe, planned in oa.PLANNED_EPOCHS.items():
        found = {epochs for r, epochs, _ in accs if r == recipe}
        headline = by.get(f"{recipe}-full.json")
        close = _within_a_point_of_the_original(recipe, complete)
        if headline is None and not found:
            lines.append(f"| `{recipe}` | every row | waits for the faithful run to its end (`--tag full`): needed only "
                         "if it lands more than a point from the original's test accuracy | | |")
            continue
        for epochs in sorted(found | {planned}, key=lambda e: (e is not None, e or 0)):
            length = f"{epochs} epochs" if epochs else "its own length"
            unrun = 0  # rows not run, where the faithful run makes them unneeded
            headline_seed = ("faithful", int(headline["seed"])) if headline is not None and epochs is None else None
            for row, (what, _) in oa.ROWS.items():
                if oa.overrides(row, recipe) is None:
                    continue
                got = dict(sorted(accs.get((recipe, epochs, row), {}).items()))
                if not got:
                    if epochs == planned and close:
                        unrun += 1
                    elif epochs == planned:
                        costly = row in oa.COSTLY_ROWS
                        why = (" (the driver runs it only when named, `--rows " + row + "`): an fp32 run costs more "
                               "than two bf16 runs on a CPU with native bf16, beyond the CPU time this study "
                               "had, so precision stays an unmeasured difference" if costly else " yet")
                        lines.append(f"| `{recipe}`, {length} | `{row}`: {what} | not run{why} | | |")
                    continue
                vals = list(got.values())
                reading = _row_reading(accs, recipe, epochs, row)
                diff = ""
                if reading is not None and "two_se" in reading:
                    diff = (f"{100 * reading['difference']:+.2f} (2 SE {100 * reading['two_se']:.2f}, seed std "
                            f"pooled over the rows, {reading['df']} df: {reading['kind']} twice the SE)")
                elif reading is not None:
                    diff = f"{100 * reading['difference']:+.2f} ({_READINGS[reading['kind']]})"
                seeds = ", ".join(f"{pct(a)} (seed {k}{', the headline run' if (row, k) == headline_seed else ''}; "
                                  f"{_machine(runs[(recipe, epochs, row)][k])})" for k, a in got.items())
                lines.append(f"| `{recipe}`, {length} | `{row}`: {what} | {seeds} | {pct_spread(stats.spread(vals))} | "
                             f"{diff} |")
            if unrun:
                lines.append(f"| `{recipe}`, {length} | every row not run | not needed: {close} | | |")
    lines.append("| `cifar10-original` | `jpeg`: the PNG/pickle images instead of the JPEG copy | not measured (why: below "
                 "the table) | | |")
    return "\n".join(lines)


def _said(row: str, r: dict) -> str:
    """A row's difference from the faithful mean with its reading, as the findings name it."""
    how = f"{r['kind']} twice the SE" if "two_se" in r else _READINGS[r["kind"]]
    return f"`{row}` ({100 * r['difference']:+.2f}, {how})"


def _seed_noise(accs: dict, recipe: str, epochs: int | None) -> dict | None:
    """The seed-to-seed std of test accuracy pooled over every row of ``recipe`` at ``epochs`` (``pooled_std``,
    ``df``), from :func:`vitkit.stats.pooled_difference`; None where no row has two seeds."""
    from vitkit import stats

    groups = _seed_groups(accs, recipe, epochs)
    twice = next((g for g in groups if len(g) > 1), None)
    return None if twice is None else stats.pooled_difference(twice, twice, groups)  # a setup against itself


def ablation_findings(records) -> str:
    """What the ablation table found, per recipe and length with rows: the rows grouped by how they read; which
    could close the gap to the original (had the faithful recipe misread that choice) and which would widen it; the
    seed noise against the gap; what else differs from the original and which way moving it towards the original
    went; and whether anything measured explains the gap (the faithful run to its end). A direction is read only
    from a row beyond twice the SE or a hint (one seed, a point or more away)."""
    import original_ablations as oa
    from vitkit import stats

    by = dict(records)
    accs, runs = oa.test_accuracies(by), oa.ablation_records(by)
    complete = _complete_original_runs(records)
    groups = [("beyond", "Beyond twice the SE"), ("within", "Within twice the SE"),
              ("hint", "One seed, a point or more away (a hint each)"), ("due", "One seed so far, a second due"),
              ("one-seed", "One seed under a point (a hint each)"), ("unpaired", "Against one faithful seed")]
    order = list(oa.PLANNED_EPOCHS)
    out = []
    for recipe, epochs in sorted({(r, e) for r, e, row in accs if r in order and row != "faithful"},
                                 key=lambda k: (order.index(k[0]), k[1] is not None, k[1] or 0)):
        if recipe not in complete or _within_a_point_of_the_original(recipe, complete):
            continue
        length = f"{epochs} epochs" if epochs else "its own length"
        faithful = accs.get((recipe, epochs, "faithful"), {})
        if not faithful:
            out += [f"**`{recipe}`, rows at {length}**: no faithful run at this length yet, so nothing to read them "
                    "against.", ""]
            continue
        ours = complete[recipe][1]["metrics"]["test_acc"]
        gaps = [ours - acc[2] for _, acc, r in ORIGINAL if r == recipe]
        # the sign of a change that moves the result towards the original's numbers (0: they lie on both sides)
        towards = -1 if all(g > 0 for g in gaps) else 1 if all(g < 0 for g in gaps) else 0
        read = {row: _row_reading(accs, recipe, epochs, row) for row in oa.ROWS
                if row != "faithful" and oa.overrides(row, recipe) is not None}
        out.append(f"**`{recipe}`, rows at {length}.** The gap to explain, at the recipe's own length: "
                   f"{' and '.join(f'{100 * g:+.2f}' for g in gaps)} points (the faithful run to its end against "
                   "each of the original's results in the README's table).")
        back = [(row, r) for row, r in read.items() if r is not None and row not in oa.TOWARDS_ORIGINAL]
        for kind, title in groups:
            rows = [f"`{row}` ({100 * r['difference']:+.2f})" for row, r in back if r["kind"] == kind]
            if rows:
                out.append(f"- {title}: {', '.join(rows)}.")
        unrun = [row for row, r in read.items() if r is None and row not in oa.TOWARDS_ORIGINAL]
        if unrun:
            out.append(f"- Not run: {', '.join(f'`{row}`' for row in unrun)}.")
        told = lambda r: r["kind"] in ("beyond", "hint")  # a direction the seeds (or one seed's size) can tell
        closing = [_said(row, r) for row, r in back if told(r) and r["difference"] * towards > 0]
        widening = [_said(row, r) for row, r in back if told(r) and r["difference"] * towards < 0]
        if towards:
            out.append("- Could close the gap: only a row that moves the result towards the original's number, and "
                       "only if the faithful recipe misread that choice of the original's (each option's "
                       "implementation is tested; that the original made the choice rests on reading its "
                       f"notebooks): {', '.join(closing) if closing else 'none'}.")
            if widening:
                out.append(f"- Would widen the gap, switched back to ours: {', '.join(widening)}.")
        home = {_machine(rec) for rec in runs[(recipe, epochs, "faithful")].values()}
        elsewhere = [f"`{row}`" for row, r in back if {_machine(rec) for rec in runs[(recipe, epochs, row)].values()}
                     - home]
        if elsewhere:
            out.append(f"- Ran on another machine or thread count than the faithful runs ({', '.join(sorted(home))}), "
                       "which their spread may not cover: " + ("every row" if len(elsewhere) == len(back)
                                                               else ", ".join(elsewhere)) + ".")
        seeds, noise = list(faithful.values()), _seed_noise(accs, recipe, epochs)
        seed = (f"- The seed, and with it the validation draw: the faithful runs spread "
                f"{pct_spread(stats.spread(seeds))} over {len(seeds)} seed{'s' if len(seeds) > 1 else ''}")
        if noise is not None:
            two_singles = 2 * math.sqrt(2) * noise["pooled_std"]  # twice the std of a difference of two single runs
            seed += (f"; pooled over every row here ({noise['df']} df) the seed std is "
                     f"{100 * noise['pooled_std']:.2f} points, so twice the std of the difference of two single runs "
                     f"is {100 * two_singles:.2f} points, "
                     + ("under the gap by this lenient bar" if all(abs(g) > two_singles for g in gaps) else
                        "as large as the gap or more")
                     + " (the original's number and the faithful run to its end are one run each; the spread at the "
                     "recipe's own length is not measured).")
        else:
            seed += ": no row has two seeds, so the noise is not measured yet."
        out.append(seed)
        still, moved, measured = [], [], []
        for row in oa.TOWARDS_ORIGINAL:
            if row not in read:
                continue
            r = read[row]
            if r is None:
                still.append(f"`{row}`, not run")
                continue
            measured.append(f"`{row}`")
            way = ("whose effect is not told from the seed noise" if not told(r) else "that moves the result "
                   + ("towards" if r["difference"] * towards > 0 else "away from") + " its number")
            still.append(f"{_said(row, r)}: a step towards the original {way}")
            moved += [_said(row, r)] if told(r) and r["difference"] * towards > 0 else []
        if dataset_of(recipe) == "cifar10":
            still.append("the JPEG copy, not measured (why: below the table)")
        still.append("the library versions, not measurable here")
        out.append("- What else differs from the original: " + "; ".join(still) + ".")
        if towards == 0:
            verdict = "The original's results lie on both sides of the faithful run: no direction closes the gap."
        elif moved:
            verdict = (f"A step towards the original moves the result towards its number: {', '.join(moved)}, "
                       f"measured at {length}, against the gap at the recipe's own length.")
        elif measured:
            verdict = (f"Of these, only {' and '.join(measured)} {'was' if len(measured) == 1 else 'were'} measured, "
                       f"and {'it does not move' if len(measured) == 1 else 'none of them moves'} the result towards "
                       "the original's number beyond the seed noise: the gap stays unexplained by these rows.")
        else:
            verdict = "None of these was measured: the gap stays unexplained by these rows."
        out += [f"- {verdict}", ""]
    return "\n".join(out).strip() or "_No ablation rows yet against a faithful run more than a point from the original._"


def seeds_table(records) -> str:
    """scripts/compare_hf_seeds.py's record: ours and HF's ViT from scratch, seed by seed, the means and standard
    deviations, and HF minus ours, paired by seed, against twice its standard error."""
    rec = dict(records).get("ours-vs-hf-seeds.json")
    if rec is None or "test_acc" not in rec["metrics"].get("summary", {}):
        return "_No record of two or more seeds per model yet (`python scripts/compare_hf_seeds.py`)._"
    cfg, runs, summ = rec["config"], rec["metrics"]["runs"], rec["metrics"]["summary"]
    by = {(r["model"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    lines = [f"Measured by `scripts/compare_hf_seeds.py` ([ours-vs-hf-seeds.json](results/ours-vs-hf-seeds.json)): "
             f"recipe `{cfg['recipe']}` with its schedule compressed into {cfg['fit']['epochs']} epochs, "
             f"{len(seeds)} seeds, per seed the same split and batch order for both models; on {hardware(rec)}.\n",
             "| seed | ours test | HF test | ours best val | HF best val |", "|---:|---:|---:|---:|---:|"]
    cell = lambda model, seed, key: pct(by[(model, seed)][key]) if (model, seed) in by else ""
    for seed in seeds:
        lines.append(f"| {seed} | {cell('ours', seed, 'test_acc')} | {cell('hf', seed, 'test_acc')} | "
                     f"{cell('ours', seed, 'best_val_acc')} | {cell('hf', seed, 'best_val_acc')} |")
    mean = lambda metric, model: pct_spread(summ[metric][model]) if metric in summ else ""
    lines.append(f"| mean ± std | {mean('test_acc', 'ours')} | {mean('test_acc', 'hf')} | "
                 f"{mean('best_val_acc', 'ours')} | {mean('best_val_acc', 'hf')} |")
    t = summ["test_acc"]
    verdict = "beyond" if t["beyond_noise"] else "within"
    lines.append(f"\nHF minus ours on test, paired by seed: {100 * t['difference']:+.2f} points, twice its standard error "
                 f"{100 * t['two_standard_errors']:.2f}: **{verdict} noise**; HF ahead in {t['hf_ahead']} of "
                 f"{len(t['seeds'])} seeds (with this few seeds the standard error is itself rough: a hint, not a "
                 f"settled result).")
    return "\n".join(lines)


def screen_table(records) -> str:
    """Every screening record (scripts/screen_ideas.py): per idea its settings, best validation accuracy over the
    seeds and its difference from the baseline with twice its standard error, kept only when ahead by more."""
    out = []
    for name, rec in records:
        if not name.startswith("screen-ideas-"):
            continue
        m, cfg = rec["metrics"], rec["config"]
        ideas, against = m["summary"]["ideas"], m["summary"]["against_baseline"]
        seeds = sorted({r["seed"] for r in m["runs"]})
        out.append(f"Screening at {cfg['tflop']:g} TFLOP per run on `{cfg['recipe']}`, best validation accuracy "
                   f"over seeds {', '.join(map(str, seeds))} ([{name[:-5]}](results/{name}); {hardware(rec)}):\n")
        out += ["| idea | changes | best val, mean ± std (seeds) | minus baseline | twice its SE | verdict |",
                "|---|---|---:|---:|---:|---|"]
        order = sorted(ideas, key=lambda i: (i != "baseline", -against.get(i, {}).get("difference", 0.0)))
        for idea in order:
            sp, d = ideas[idea], against.get(idea)
            changes = ", ".join(f"{k}={v}" for part in cfg["ideas"].get(idea, {}).values() for k, v in part.items())
            if d is None:
                diff = se2 = ""
                verdict = "the reference" if idea == "baseline" else "fewer than two seeds"
            else:
                diff, se2 = f"{100 * d['difference']:+.2f}", f"{100 * d['two_standard_errors']:.2f}"
                verdict = "**kept**" if d["kept"] else ("worse beyond noise" if d["beyond_noise"] else "within noise")
            out.append(f"| `{idea}` | {changes or '(the recipe)'} | {pct_spread(sp)} ({sp['n']}) | {diff} | "
                       f"{se2} | {verdict} |")
        for idea, parts in cfg["ideas"].items():
            if idea not in ideas:
                changes = ", ".join(f"{k}={v}" for part in parts.values() for k, v in part.items())
                out.append(f"| `{idea}` | {changes} | not run yet | | | |")
        out.append("")
    return "\n".join(out).strip() or "_No screening record yet (`python scripts/screen_ideas.py`)._"


def _recipe_settings(recipe: str) -> dict[str, object]:
    """Every setting a recipe trains with, ``section.key`` -> value: the recipe's own entries over the defaults of
    ViTConfig, of the dataset's loader and of FitConfig (so that a setting left at its default still compares)."""
    import dataclasses
    import inspect

    import vit_helpers as vh
    from vitkit import data
    from vitkit.config import FitConfig

    r = RECIPES[recipe]
    loader = data.mnist_loaders if r["model"]["in_channels"] == 1 else data.cifar10_loaders
    defaults = {
        "model": {f.name: f.default for f in dataclasses.fields(vh.ViTConfig) if f.default is not dataclasses.MISSING},
        "data": {k: p.default for k, p in inspect.signature(loader).parameters.items()
                 if p.default is not inspect.Parameter.empty and k in ("batch_size", "val_size", "balanced_val",
                                                                        "augment", "mean", "std", "invert")},
        "fit": {f.name: f.default for f in dataclasses.fields(FitConfig) if f.default is not dataclasses.MISSING},
    }
    out = {}
    for section, base in defaults.items():
        for key, value in {**base, **r.get(section, {})}.items():
            out[f"{section}.{key}"] = tuple(value) if isinstance(value, (list, tuple)) else value
    return out


def recipe_differences(ours: str, theirs: str, ablations: dict[str, str] | None = None) -> str:
    """A table of every setting in which recipe ``ours`` differs from recipe ``theirs``; with ``ablations`` (setting
    -> the row of scripts/original_ablations.py that switches it back), a last column naming that row."""
    a, b = _recipe_settings(ours), _recipe_settings(theirs)
    fmt = lambda v: "(default)" if v is None else f"`{v}`"
    extra = ablations is not None
    rows = [f"| setting | `{ours}` | `{theirs}` |" + (" ablation row |" if extra else ""), "|---|---|---|" + "---|" * extra]
    for k in sorted(a.keys() | b.keys()):
        if a.get(k) != b.get(k):
            row = (f" `{ablations[k]}` |" if k in ablations else " none |") if extra else ""
            rows.append(f"| `{k}` | {fmt(a.get(k))} | {fmt(b.get(k))} |" + row)
    return "\n".join(rows)


def ablation_rows(recipe: str) -> dict[str, str]:
    """Setting -> the row of scripts/original_ablations.py that switches it back to ours, for ``recipe``."""
    import original_ablations as oa

    return {s.split("=")[0]: row for row in oa.ROWS for s in (oa.overrides(row, recipe) or [])}


# page -> the marked sections it holds, each rendered by one function
PAGES = {
    "README.md": {"headline": headline_table, "original": original_table, "localization": localization_table,
                  "weights": weights_table,
                  "seed-vs-original": lambda records: recipe_differences("cifar10-seed", "cifar10-original",
                                                                         ablation_rows("cifar10-original"))},
    "docs/results.md": {"results": results_table, "hf-seeds": seeds_table, "tflop-attempts": tflop_attempts_table,
                        "tflop-targets": tflop_targets_table,
                        "screen-ideas": screen_table, "original-ablations": ablation_table,
                        "original-ablations-findings": ablation_findings},
    "docs/speed.md": {"speed": speed_table, "profile": profile_findings, "fit-speed": fit_speed_table,
                      "dropout": dropout_table},
    "docs/explaining.md": {"faithfulness": faithfulness_table},
    "docs/inductive-bias.md": {"inductive-bias": inductive_bias_table},
    "docs/localization.md": {"localization": localization_table, "localization-findings": localization_findings},
}


def render(text: str, records, sections: dict, page: str = "README.md") -> str:
    """``text`` with each marked section replaced by its table; links to results/ made relative to ``page``."""
    up = "../" * page.count("/")
    for marker, make in sections.items():
        start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
        if start not in text or end not in text:
            raise SystemExit(f"{page} lacks the {start} ... {end} markers")
        body = make(records).replace("](results/", f"]({up}results/")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{body}\n{end}{tail}"
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--root", default=str(ROOT), help="folder holding README.md and docs/")
    ap.add_argument("--results", default=str(ROOT / "results"))
    args = ap.parse_args()
    try:
        records = load_records(Path(args.results))
    except RecordError as e:
        print(f"results_table: {e}", file=sys.stderr)
        return 2
    stale = []
    for page, sections in PAGES.items():
        path = Path(args.root) / page
        text = path.read_text()
        new = render(text, records, sections, page)
        if new != text:
            stale.append(page)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}: run python scripts/results_table.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
