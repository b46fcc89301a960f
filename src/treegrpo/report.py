"""``treegrpo report RUN``: one PNG of the run's curves and an HTML page with every picture.

Reads ``RUN/metrics.jsonl`` and ``RUN/eval.jsonl`` and writes ``RUN/report.png`` (reward per
component against iterations, cumulative NFE, seconds per iteration, held-out rewards) and
``RUN/report.html`` (that figure, the newest tree picture, the before / after sample grids).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from treegrpo.errors import ConfigError


def read_jsonl(file: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file (empty when absent)."""
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` where present and not null."""
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in points], [float(p[1]) for p in points]


def _cumulative(values: list[float]) -> list[float]:
    total, out = 0.0, []
    for value in values:
        total += value
        out.append(total)
    return out


def plot_curves(metrics: list[dict[str, Any]], evals: list[dict[str, Any]], file: Path) -> None:
    """Reward components, NFE and seconds against iterations, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reward_keys = sorted(k for k in metrics[0] if k.startswith("reward/") and k.endswith("_mean")) if metrics else []
    eval_series = held_out_series(evals)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0][0]
    for key in reward_keys or ["reward_mean"]:
        ax.plot(*_series(metrics, key), marker=".", label=key.removeprefix("reward/").removesuffix("_mean"))
    ax.set(title="training reward (mean over leaves)", xlabel="RL iteration", ylabel="mean reward (the reward's own scale)")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    for key, label, more_steps in eval_series:
        steps, values = _series(evals, key)
        errors = [r.get(f"{key}_se") or 0.0 for r in evals if r.get(key) is not None]
        ax.errorbar(steps, values, yerr=errors if len(errors) == len(values) else None, marker="o", capsize=2,
                    label=label, linestyle="--" if more_steps else "-", mfc="none" if more_steps else None)
    ax.set(title="held-out reward (ODE samples, +- standard error)", xlabel="RL iteration",
           ylabel="mean reward (the reward's own scale)")
    if eval_series:
        ax.legend(fontsize=7)
    ax = axes[1][0]
    for key in ("rollout_nfe", "training_nfe"):
        steps, values = _series(metrics, key)
        ax.plot(steps, _cumulative(values), marker=".", label=key)
    ax.set(title="cumulative model evaluations (NFE)", xlabel="RL iteration", ylabel="NFE (model forward passes)")
    ax.legend(fontsize=7)
    ax = axes[1][1]
    ax.plot(*_series(metrics, "seconds"), marker=".", label="seconds / iteration")
    ax.set(title="wall time", xlabel="RL iteration", ylabel="seconds per iteration (s)")
    fig.tight_layout()
    fig.savefig(file, dpi=100)
    plt.close(fig)


def _image_tag(run: Path, file: Path | None, caption: str) -> str:
    """An <img> with a caption, or a note that the picture is missing."""
    if file is None:
        return f"<p><em>{html.escape(caption)}: not available</em></p>"
    return (
        f'<figure><img src="{html.escape(str(file.relative_to(run)))}" style="max-width:100%">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def step_pictures(folder: Path) -> list[Path]:
    """The raw ``step-NNNNNN.png`` pictures of a folder, oldest first (captioned copies left out)."""
    return sorted(p for p in folder.glob("step-*.png") if p.stem[5:].isdigit()) if folder.is_dir() else []


def _readable(file: Path | None) -> Path | None:
    """The captioned copy of a sample grid when there is one (prompts and rewards under each image)."""
    if file is None:
        return None
    captioned = file.with_name(f"{file.stem}-captioned.png")
    return captioned if captioned.is_file() else file


def _newest(folder: Path) -> Path | None:
    files = step_pictures(folder)
    return files[-1] if files else None


def _oldest(folder: Path) -> Path | None:
    files = step_pictures(folder)
    return files[0] if files else None


def held_out_series(evals: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """``(key, label, more_steps)`` of each held-out curve worth drawing: every reward and judge, the
    weighted total only when it is the only one, a reward that is also a judge once (as the judge),
    and the ``eval.more_steps`` check (``eval/steps<N>/...``, first and last evaluation) flagged."""
    keys = sorted({k for r in evals for k in r if k.startswith("eval/") and not k.endswith("_se")})
    series = []
    for key in keys:
        name, prefix, suffix = key.removeprefix("eval/"), "eval/", ""
        if name.startswith("steps") and "/" in name:
            steps, name = name.split("/", 1)
            prefix, suffix = f"eval/{steps}/", f" ({steps.removeprefix('steps')} steps)"
        siblings = [k.removeprefix(prefix) for k in keys if k.startswith(prefix)]
        if name == "score" and any(s not in ("score", "judge_score") for s in siblings):
            continue  # the weighted total of components drawn one by one
        if name == "judge_score" and any(s.startswith("judge/") for s in siblings):
            continue
        if "/" not in name and f"judge/{name}" in siblings:
            continue  # the same values as its judge line
        label = f"judge {name.removeprefix('judge/')}" if name.startswith("judge/") else name
        series.append((key, label + suffix, bool(suffix)))
    return series


def _cell(value: Any) -> str:
    """One table cell: floats with 4 significant digits, anything else as text."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"<td>{html.escape(text)}</td>"


def evaluation_table(evals: list[dict[str, Any]]) -> str:
    """eval.jsonl as an HTML table: one row per evaluation, one column per metric (step first)."""
    if not evals:
        return "<p><em>no evaluations recorded</em></p>"
    columns = ["step"] + sorted({key for record in evals for key in record if key != "step"})
    head = "".join(f"<th>{html.escape(column.removeprefix('eval/'))}</th>" for column in columns)
    rows = "".join("<tr>" + "".join(_cell(record.get(column, "")) for column in columns) + "</tr>" for record in evals)
    return f'<table class="evals" border="1" cellpadding="4" style="border-collapse:collapse"><tr>{head}</tr>{rows}</table>'


def write_html(run: Path, metrics: list[dict[str, Any]], evals: list[dict[str, Any]], figure: Path) -> Path:
    """The report page (relative links to the run's pictures)."""
    last = metrics[-1] if metrics else {}
    summary = "".join(f"<tr><td>{html.escape(k)}</td>{_cell(v)}</tr>" for k, v in last.items())  # one rounding everywhere
    evals_table = evaluation_table(evals)
    samples = run / "samples"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>treegrpo report: {html.escape(run.name)}</title></head>
<body style="font-family:sans-serif;max-width:1100px;margin:auto">
<h1>treegrpo run {html.escape(str(run))}</h1>
{_image_tag(run, figure, "reward curves, NFE and seconds per iteration")}
<h2>Before / after</h2>
{_image_tag(run, _readable(_oldest(samples)), "held-out samples, first evaluation (prompt and reward under each)")}
{_image_tag(run, _readable(_newest(samples)), "held-out samples, last evaluation (prompt and reward under each)")}
<h2>One tree</h2>
{_image_tag(run, _newest(run / "trees"), "decoded image at every node of tree 0 of the latest rollout")}
<h2>Last iteration</h2><table>{summary}</table>
<h2>Evaluations</h2>{evals_table}
</body></html>"""
    file = run / "report.html"
    file.write_text(page, encoding="utf-8")
    return file


def make_report(run: str | Path) -> tuple[Path, Path]:
    """Write RUN/report.png and RUN/report.html; returns their paths."""
    folder = Path(run)
    metrics = read_jsonl(folder / "metrics.jsonl")
    if not metrics:
        raise ConfigError(f"{folder} has no metrics.jsonl records; pass the folder of a run that trained at least one iteration")
    evals = read_jsonl(folder / "eval.jsonl")
    figure = folder / "report.png"
    plot_curves(metrics, evals, figure)
    return figure, write_html(folder, metrics, evals, figure)
