"""``cosalign report``: results across runs and seeds, with paired intervals and plots.

Reads run folders (``config.yaml`` and ``metrics.jsonl``, as ``cosalign train`` writes them, on
any machine: no checkpoint and no GPU needed), groups them by method (named from the loss
weights, plus any ``--by`` config keys) and by seed, and writes:

- ``report.md`` / ``report.csv``: per-class IoU and mIoU of every class subset the runs report,
  mean ± std over seeds (sample std), the number of seeds, and each group's gain over the
  baseline paired by seed: mean of d_s = group_s - baseline_s over the shared seeds s, with the
  95% interval mean ± t(0.975, n-1) sd(d) / sqrt(n) (Student's t; none below 2 pairs);
- ``miou.png`` (headline mIoU vs iteration) and ``train.png`` (each loss term and alignment
  diagnostic vs iteration), the mean over seeds with a min-max band.

It refuses, naming the folder: folders that are not runs, unfinished runs (no evaluation at the
last iteration), runs evaluated on other splits, input sizes or class subsets than the rest, and
runs whose reported checkpoint was chosen after seeing later evaluations (evaluations logged
beyond the reported iteration: the run went on and was cut back). Labels are scored at their
full resolution whatever the network's input size (``data.val.size``; docs/METHOD.md section
5), so with ``mixed_input=True`` (``--mixed-input-sizes``) runs of other input sizes are
compared on the same pixels, the input size then part of each method (e.g. a half-resolution
baseline against HRDA); the report names each group's input size.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cosalign.config import Config, ConfigError, class_set_of, flatten, from_dict, to_dict
from cosalign.engine.logger import read_metrics
from cosalign.methods import METHODS, method_name
from cosalign.outputs import writable_dir, write_text

# config keys that do not change what a run measures (paths differ between machines)
IGNORED = ("train.seed", "train.device", "train.log_every", "train.eval_every",
           "train.checkpoint_every", "train.keep_checkpoints", "data.workers", "data.cache")
PREMISE = {"nn_accuracy": "NN class acc. (%)", "s_same": "S same class",
           "s_diff": "S other class"}  # the premise diagnostics at the final evaluation
PLOTTED = ("seg", "cos", "ent", "adv", "selected", "pair_cos", "eff_rank", "s_q50")


class ReportError(ConfigError):
    """A run folder cannot be reported (or not together with the others); names the folder."""


@dataclass
class Run:
    path: Path
    cfg: Config
    group: str
    final: dict  # the evaluation at the last iteration: miou {subset: %}, iou {class: %}
    evals: list[dict] = field(default_factory=list)
    train: list[dict] = field(default_factory=list)

    @property
    def seed(self) -> int:
        return self.cfg.train.seed


def _comparable(flat: dict) -> dict:
    """Config entries that matter for comparing runs (file paths reduced to their names)."""
    out = {}
    for key, value in flat.items():
        if key in IGNORED or key.endswith((".root", ".weights")):
            continue
        out[key] = Path(value).name if key.endswith("list_file") and value else value
    return out


def evaluation_key(cfg: Config) -> dict:
    """What a run was evaluated on: it must be the same for every run of a report."""
    v = cfg.data.val
    return {"data.val.dataset": v.dataset, "data.val.split": v.split,
            "data.val.list_file": Path(v.list_file).name if v.list_file else None,
            "data.val.size": list(v.size) if v.size else None,
            "data.class_set": cfg.data.class_set, "data.classes": cfg.data.classes,
            "data.extra_classes": list(cfg.data.extra_classes)}


def load_run(path: str | Path, by: tuple[str, ...] = ()) -> Run:
    path = Path(path)
    cfg_file, metrics = path / "config.yaml", path / "metrics.jsonl"
    if not cfg_file.is_file() or not metrics.is_file():
        raise ReportError(f"{path}: not a run folder (expected config.yaml and metrics.jsonl, "
                          "as cosalign train writes them)")
    try:
        cfg = from_dict(yaml.safe_load(cfg_file.read_text()))
    except (ConfigError, yaml.YAMLError, AttributeError) as e:
        raise ReportError(f"{cfg_file}: not a cosalign config ({e})") from None
    # one record per iteration and kind, the last: runs resumed before resumes dropped the
    # lines after their checkpoint hold some iterations twice
    rows = list({(r["iter"], r["kind"]): r for r in read_metrics(path)}.values())
    evals = [r for r in rows if r["kind"] == "eval"]
    last = cfg.train.iters
    final = [r for r in evals if r["iter"] == last]
    if not final:
        done = max((r["iter"] for r in rows), default=0)
        raise ReportError(f"{path}: unfinished run (logged up to iteration {done} of {last}, "
                          f"no evaluation at {last})")
    later = sorted({r["iter"] for r in evals if r["iter"] > last})
    if later:
        raise ReportError(f"{path}: the run reports iteration {last} but logged evaluations at "
                          f"{later}: the reported checkpoint was chosen after seeing them (on "
                          "the evaluation set); report the last checkpoint of a run")
    flat = {**_comparable(flatten(to_dict(cfg))), "run": path.name}
    missing = [k for k in by if k not in flat]
    if missing:
        raise ReportError(f"--by {missing[0]}: not a config key of {path} (e.g. align.tau, or "
                          "run: the folder's name)")
    group = method_name(cfg) + "".join(f" [{k}={flat[k]}]" for k in by)
    return Run(path, cfg, group, final[-1], evals, [r for r in rows if r["kind"] == "train"])


def check_together(runs: list[Run], mixed_input: bool = False) -> list[str]:
    """Refuse runs evaluated differently from the first (with ``mixed_input``, a different
    network input size is allowed: the labels are scored at full resolution either way);
    return warnings about groups whose runs differ in a config key other than the seed (name
    it with --by to split them)."""
    ref = evaluation_key(runs[0].cfg)
    for run in runs[1:]:
        key = evaluation_key(run.cfg)
        diff = {k: (ref[k], key[k]) for k in ref if ref[k] != key[k]
                and not (mixed_input and k == "data.val.size")}
        if diff:
            k, (a, b) = next(iter(diff.items()))
            hint = (" (labels are scored at full resolution either way: --mixed-input-sizes "
                    "compares them, the input size then part of each method)"
                    if k == "data.val.size" else "")
            raise ReportError(f"{run.path}: evaluated with {k}={b!r}, but {runs[0].path} with "
                              f"{k}={a!r}; a report compares runs evaluated the same way{hint}")
    warnings = []
    for group in dict.fromkeys(r.group for r in runs):
        members = [r for r in runs if r.group == group]
        seeds = [r.seed for r in members]
        if len(set(seeds)) < len(seeds):
            dup = sorted({s for s in seeds if seeds.count(s) > 1})
            raise ReportError(f"{members[0].path}: group '{group}' has several runs with seed "
                              f"{dup[0]}; give each seed one run, or split the group with --by")
        flats = [_comparable(flatten(to_dict(r.cfg))) for r in members]
        differ = sorted(k for k in flats[0] if len({str(f.get(k)) for f in flats}) > 1)
        if differ:
            warnings.append(f"runs of '{group}' differ in {', '.join(differ)} (split them "
                            f"with --by {differ[0]})")
    return warnings


def t_quantile(p: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, df))


def paired_gain(values: dict[int, float], base: dict[int, float]) -> dict:
    """Gain over the baseline paired by seed: mean, 95% half-width (None below 2 pairs)."""
    seeds = sorted(set(values) & set(base))
    d = [values[s] - base[s] for s in seeds]
    if not d:
        return {"n": 0, "mean": math.nan, "half": None}
    half = None
    if len(d) >= 2:
        half = t_quantile(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return {"n": len(d), "mean": statistics.mean(d), "half": half}


def _mean_std(vals: list[float]) -> tuple[float, float]:
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan


def _fmt(mean: float, std: float, digits: int = 1) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def build(runs: list[Run], baseline: str) -> tuple[list[dict], str]:
    """One row per (group, class subset) with every number of the tables; the baseline used
    (the group named ``baseline``, or none)."""
    order = list(METHODS)
    groups = sorted(dict.fromkeys(r.group for r in runs), key=lambda g: (
        g != baseline, order.index(g.split(" ")[0]) if g.split(" ")[0] in order else 99, g))
    if baseline not in groups:
        baseline = ""
    subsets = [runs[0].cfg.data.classes, *runs[0].cfg.data.extra_classes]
    class_set = class_set_of(runs[0].cfg)
    base = {r.seed: r for r in runs if r.group == baseline}
    rows = []
    for subset in subsets:
        for group in groups:
            members = sorted((r for r in runs if r.group == group), key=lambda r: r.seed)
            row = {"group": group, "subset": subset, "seeds": [r.seed for r in members],
                   "classes": [class_set.names[c] for c in class_set.subset(subset)]}
            for name in row["classes"]:
                row[name] = _mean_std([r.final["iou"].get(name, math.nan) for r in members])
            row["miou"] = _mean_std([r.final["miou"][subset] for r in members])
            row["premise"] = {k: _mean_std([r.final.get("premise", {}).get(k, math.nan)
                                            for r in members]) for k in PREMISE}
            if baseline and group != baseline:
                row["gain"] = paired_gain({r.seed: r.final["miou"][subset] for r in members},
                                          {s: r.final["miou"][subset] for s, r in base.items()})
            rows.append(row)
    return rows, baseline


def markdown(rows: list[dict], baseline: str, warnings: list[str]) -> str:
    out = []
    for subset in dict.fromkeys(r["subset"] for r in rows):
        subset_rows = [r for r in rows if r["subset"] == subset]
        classes = subset_rows[0]["classes"]
        gain = (f"gain over {baseline}, paired by seed (95% CI)" if baseline
                else "gain (no baseline)")
        subset_rows = [r for r in rows if r["subset"] == subset]
        premise = [k for k in PREMISE if any(not math.isnan(r["premise"][k][0])
                                              for r in subset_rows)]
        head = ["method", *classes, f"mIoU ({subset})", "seeds", gain,
                *(PREMISE[k] for k in premise)]
        lines = [f"### {subset}: IoU (%), mean ± std over seeds", "",
                 "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for r in (r for r in rows if r["subset"] == subset):
            g = r.get("gain")
            if g is None:
                cell = "-"
            elif g["half"] is None:
                cell = f"{g['mean']:+.2f} (fewer than 2 pairs: no interval)" if g["n"] else \
                    "no shared seed"
            else:
                cell = (f"{g['mean']:+.2f} [{g['mean'] - g['half']:+.2f}, "
                        f"{g['mean'] + g['half']:+.2f}] (n={g['n']})")
            cells = [_fmt(*r[c]) for c in classes]
            seeds = ", ".join(map(str, r["seeds"]))
            extra = "".join(f" {_fmt(*r['premise'][k], digits=1 if k == 'nn_accuracy' else 3)} |"
                            for k in premise)
            lines.append(f"| {r['group']} | " + " | ".join(cells) +
                         f" | **{_fmt(*r['miou'])}** | {len(r['seeds'])} ({seeds}) | {cell} |"
                         + extra)
        out.append("\n".join(lines))
    if warnings:
        out.append("\n".join(f"warning: {w}" for w in warnings))
    return "\n\n".join(out) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    """report.csv, whole or not at all."""
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["method", "subset", "metric", "mean", "std", "seeds", "gain_mean",
                "gain_ci95_low", "gain_ci95_high", "pairs"])
    for r in rows:
        g = r.get("gain") or {"n": 0, "mean": math.nan, "half": None}
        lo = hi = ""
        if g["half"] is not None:
            lo, hi = g["mean"] - g["half"], g["mean"] + g["half"]
        seeds = " ".join(map(str, r["seeds"]))
        for c in r["classes"]:
            w.writerow([r["group"], r["subset"], c, *r[c], seeds, "", "", "", ""])
        w.writerow([r["group"], r["subset"], "miou", *r["miou"], seeds,
                    g["mean"] if g["n"] else "", lo, hi, g["n"]])
        for k in PREMISE:
            if not math.isnan(r["premise"][k][0]):
                w.writerow([r["group"], r["subset"], k, *r["premise"][k], seeds, "", "", "",
                            ""])
    write_text(path, f.getvalue())


def _curves(runs: list[Run], rows_of, key) -> dict[str, list[tuple[list[int], list[float]]]]:
    """Per group, each run's (iterations, values) of ``key`` in ``rows_of(run)``."""
    out: dict[str, list] = {}
    for r in runs:
        pts = [(row["iter"], key(row)) for row in rows_of(r) if key(row) is not None]
        if pts:
            out.setdefault(r.group, []).append(([p[0] for p in pts], [p[1] for p in pts]))
    return out


def report(paths: list[str | Path], out_dir: str | Path, baseline: str = "source_only",
           by: tuple[str, ...] = (), mixed_input: bool = False) -> str:
    """Load, check, tabulate and plot; returns the Markdown that report.md holds."""
    from cosalign.viz import curves_figure

    out = writable_dir(out_dir, "--out folder")
    runs = [load_run(p, by) for p in expand(paths)]
    warnings = check_together(runs, mixed_input)
    rows, baseline = build(runs, baseline)
    headline = runs[0].cfg.data.classes
    key = evaluation_key(runs[0].cfg)
    sizes = {r.group: evaluation_key(r.cfg)["data.val.size"] for r in runs}
    if len({str(v) for v in sizes.values()}) > 1:
        key["data.val.size"] = "per group (" + "; ".join(f"{g}: {v}" for g, v in sizes.items()) \
            + "), labels scored at full resolution"
    text = (f"# Results of {len(runs)} runs\n\nEvaluation: "
            f"{', '.join(f'{k}={v}' for k, v in key.items())}; the "
            "evaluation at each run's last iteration.\n\n" + markdown(rows, baseline, warnings))
    write_text(out / "report.md", text)
    write_csv(rows, out / "report.csv")
    curves_figure({f"mIoU ({headline})": _curves(
        runs, lambda r: r.evals, lambda row: row["miou"].get(headline))}, out / "miou.png")
    panels = {k: _curves(runs, lambda r: r.train, lambda row, k=k: row.get(k)) for k in PLOTTED}
    curves_figure({k: v for k, v in panels.items() if v}, out / "train.png")
    return text


def expand(paths: list[str | Path]) -> list[Path]:
    """Run folders as given; a folder that is not a run stands for the runs under it."""
    out = []
    for p in map(Path, paths):
        if (p / "config.yaml").is_file() or not p.is_dir():
            out.append(p)
            continue
        found = sorted(c.parent for c in p.rglob("config.yaml"))
        if not found:
            raise ReportError(f"{p}: no run folder (config.yaml) in it")
        out += found
    if not out:
        raise ReportError("no run folders given")
    return out
