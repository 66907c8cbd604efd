"""report.md and the PNG plots of a gap evaluation (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubedistill.report import Cascade, Economics, Report, Routing, SignalSweep

MODEL_TITLES = {"teacher": "teacher (fp32)", "student": "student (fp32)", "student_quantized": "student (quantized)"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# One look per signal (colour, line, marker), drawn widest first, so that where two curves coincide both show.
SIGNAL_STYLES = {"max-probability": ("#1f77b4", "-", "o", 3.0), "margin": ("#ff7f0e", "--", "s", 2.0),
                 "entropy": ("#2ca02c", ":", "^", 1.6),
                 # a generated answer's signals
                 "token-quantile": ("#1f77b4", "-", "o", 3.0), "min-token-probability": ("#ff7f0e", "--", "s", 2.0),
                 "mean-logprob": ("#2ca02c", ":", "^", 1.6)}
OTHER_STYLE = ("#7f7f7f", "-.", "d", 1.2)


def frontier_window(curves: dict[str, list[tuple[float, float]]], marks: list[tuple[float, float]],
                    ) -> tuple[tuple[float, float], tuple[float, float]]:
    """The (x, y) limits that show where routing curves differ: x from 0 to a little past the escalation rate
    at which the last curve settles at its final accuracy (everything escalated: the teacher's), y around the
    accuracies in that span and the `marks` (teacher, target, recommended points).

    curves: signal → [(escalation rate, cascade accuracy)], both 0-1, in any order. Pure, for tests.
    """
    settled = 0.0
    for points in curves.values():
        pts = sorted(points)
        final = pts[-1][1]
        moving = [x for x, y in pts if abs(y - final) > 1e-9]
        if moving:  # the first point after the last one off the final value
            settled = max(settled, min((x for x, _ in pts if x > max(moving)), default=1.0))
    x_hi = max([settled, *(x for x, _ in marks)])
    x_hi = min(1.0, max(0.05, x_hi * 1.08 + 0.01))
    shown = [y for points in curves.values() for x, y in points if x <= x_hi] + [y for _, y in marks]
    lo, hi = min(shown), max(shown)
    pad = max(0.002, (hi - lo) * 0.08)
    return (-0.01 * x_hi, x_hi), (lo - pad, min(1.0 + pad, hi + pad))


def served_routing(report: Report) -> tuple[Routing | None, str]:
    """The frontier whose threshold is served (export.export), and what its quality is: a causal LM's generated
    answers' (e.g. ROUGE-L against the references), else the class predictions' accuracy."""
    if report.generation_routing is not None:
        return report.generation_routing, "quality"
    return report.routing, "accuracy"


def plot_frontier(report: Report, path: Path) -> Path | None:
    routing, quality = served_routing(report)
    if routing is None:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    signals = routing.signals or {
        routing.signal: SignalSweep(recommended_threshold=None, escalation_rate=None, accuracy=None,
                                    frontier=routing.frontier)
    }
    curves = {name: [(p.escalation_rate, p.accuracy) for p in sweep.frontier] for name, sweep in signals.items()}
    marks: list[tuple[float, float]] = []
    teacher_acc = routing.teacher_accuracy
    if teacher_acc is not None:
        marks += [(0.0, teacher_acc), (0.0, teacher_acc * routing.target)]
    for sweep in signals.values():
        if sweep.escalation_rate is not None and sweep.accuracy is not None:
            marks.append((sweep.escalation_rate, sweep.accuracy))
    for z, (name, points) in enumerate(sorted(curves.items(), key=lambda c: -SIGNAL_STYLES.get(c[0], OTHER_STYLE)[3])):
        color, line, marker, width = SIGNAL_STYLES.get(name, OTHER_STYLE)
        pts = sorted(points)
        ax.plot([x for x, _ in pts], [y for _, y in pts], color=color, ls=line, lw=width, marker=marker, ms=3,
                label=name, zorder=2 + z, drawstyle="steps-post")
        sweep = signals[name]
        if name != routing.signal and sweep.escalation_rate is not None:
            ax.scatter([sweep.escalation_rate], [sweep.accuracy], s=45, facecolors="none", edgecolors=color,
                       marker=marker, linewidths=1.5, zorder=8)
    if teacher_acc is not None:
        ax.axhline(teacher_acc, color="black", ls="--", lw=0.8, label=f"teacher ({teacher_acc:.4f})")
        ax.axhline(teacher_acc * routing.target, color="black", ls=":", lw=0.8,
                   label=f"target ({routing.target:.0%} of teacher)")
    rec = routing.recommended
    if rec:
        ax.scatter([rec.escalation_rate], [rec.accuracy], color="red", zorder=9, s=40,
                   label=f"recommended, {routing.signal} ≥ {rec.threshold:.3f}: {rec.escalation_rate:.1%} escalated")
    (x_lo, x_hi), (y_lo, y_hi) = frontier_window(curves, marks)
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.set_xlabel("share escalated to the teacher" + ("" if x_hi >= 1.0 else f" (beyond: the teacher's {quality})"))
    ax.set_ylabel(f"cascade {quality} (vs {routing.reference or 'gold labels'})")
    ax.set_title("Routing frontier (hollow marks: the other signals' recommendations)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_training(history: list[dict[str, Any]] | None, path: Path) -> Path | None:
    if not history:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [h.get("step", i) for i, h in enumerate(history)]
    for key in ("train_loss", "soft_loss", "hard_loss"):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            ax.plot(steps, values, label=key, marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    handles, names = ax.get_legend_handles_labels()
    eval_key = next((k for k in ("eval_accuracy", "eval_perplexity") if any(k in h for h in history)), None)
    if eval_key:
        ax2 = ax.twinx()
        ax2.plot(steps, [h.get(eval_key) for h in history], color="black", ls="--", marker="o", label=eval_key)
        ax2.set_ylabel(eval_key)
        more, more_names = ax2.get_legend_handles_labels()
        handles, names = handles + more, names + more_names
    ax.legend(handles, names, loc="center right", fontsize=7)
    ax.set_title("Training")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def quality_limits(values: list[float], lines: list[float]) -> tuple[float, float]:
    """y limits for the quality panel: around the models' values and the reference `lines` (teacher, gate), so
    that differences of a point or two show instead of three bars reaching 0.97 on a 0-1 axis. Pure, for tests."""
    shown = [*values, *lines]
    lo, hi = min(shown), max(shown)
    pad = max((hi - lo) * 0.25, abs(hi) * 0.005, 1e-3)
    return lo - pad, hi + pad


def plot_comparison(report: Report, path: Path) -> Path:
    plt = _pyplot()
    metric = report.primary_metric
    models = [(MODEL_TITLES[n], getattr(report, n)) for n in MODEL_TITLES]
    # a remote endpoint teacher has no size or latency (and perhaps no metric): drawn as 0
    panels = [
        ("size (MB)", [(m.size_bytes or 0) / 1e6 for _, m in models]),
        ("latency p50, batch 1 (ms)", [m.latency_ms.p50 if m.latency_ms else 0.0 for _, m in models]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    colors = ["#4c72b0", "#dd8452", "#55a868"]
    for ax, (title, values) in zip(axes, panels, strict=False):
        bars = ax.bar([t for t, _ in models], values, color=colors)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=15)
    _quality_panel(axes[2], report, metric, models, colors)
    fig.suptitle(f"speedup {_fmt(report.speedup, 3)}×, compression {_fmt(report.compression, 3)}×, "
                 f"retention {_fmt(report.retention)}", fontsize=10)
    return _save(fig, path)


def _quality_panel(ax: Any, report: Report, metric: str, models: list[tuple[str, Any]], colors: list[str]) -> None:
    """The primary metric as dots on an axis zoomed to the differences (bars would need an axis from 0), with
    the teacher's value and the gate's bar as lines."""
    found = [(title, m.metrics.get(metric)) for title, m in models]
    known = [(i, title, v) for i, (title, v) in enumerate(found) if v is not None]
    lines: list[tuple[float, str, str]] = []
    teacher = report.teacher.metrics.get(metric)
    if teacher is not None and report.gate.min_retention is not None:
        bar = teacher / report.gate.min_retention if metric == "perplexity" else teacher * report.gate.min_retention
        lines.append((bar, ":", f"gate ({report.gate.min_retention:g} retention)"))
    if teacher is not None:
        lines.append((teacher, "--", "teacher"))
    for value, style, label in lines:
        ax.axhline(value, color="black", ls=style, lw=0.8, label=label)
    for i, _, value in known:
        ax.plot([i], [value], marker="o", ms=9, color=colors[i], ls="none")
        ax.annotate(f"{value:.4f}", (i, value), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7)
    ax.set_xticks(range(len(models)), [t for t, _ in models])
    ax.set_xlim(-0.5, len(models) - 0.5)
    if known:
        ax.set_ylim(*quality_limits([v for _, _, v in known], [v for v, _, _ in lines]))
    ax.set_title(f"{metric} (axis zoomed to the differences)", fontsize=9)
    ax.tick_params(axis="x", labelsize=7, rotation=15)
    ax.grid(axis="y", alpha=0.3)
    if lines:
        ax.legend(fontsize=7, loc="lower left")


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_cost_quality(report: Report, path: Path) -> Path | None:
    """Cost per 1M requests against cascade quality along the frontier (evaluation.economics), with the
    student alone (no escalation), the teacher alone and the recommended point."""
    econ = report.economics
    if econ is None or not econ.frontier:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    pts = sorted(econ.frontier, key=lambda p: p.cost_per_million_requests)
    ax.plot([p.cost_per_million_requests for p in pts], [p.accuracy for p in pts], color="#1f77b4", marker="o",
            ms=3, lw=1.5, label="cascade (frontier thresholds)")
    teacher = econ.teacher_per_million_requests.value
    routing = report.generation_routing or report.routing
    if teacher is not None and routing is not None and routing.teacher_accuracy is not None:
        ax.scatter([teacher], [routing.teacher_accuracy], color="black", marker="s", zorder=5,
                   label=f"teacher only ({teacher:.4g})")
    student = econ.student_per_million_requests.value
    if student is not None and routing is not None and routing.student_accuracy is not None:
        ax.scatter([student], [routing.student_accuracy], color="#55a868", marker="^", zorder=5,
                   label=f"student only ({student:.4g})")
    rec, cascade = (routing.recommended if routing else None), econ.cascade_per_million_requests.value
    if rec is not None and cascade is not None:
        ax.scatter([cascade], [rec.accuracy], color="red", s=45, zorder=6,
                   label=f"recommended: {rec.escalation_rate:.1%} escalated ({cascade:.4g})")
    ax.set_xscale("log")
    ax.set_xlabel(f"cost ({econ.currency} per 1M requests, log scale)")
    ax.set_ylabel(f"quality (vs {routing.reference if routing and routing.reference else 'gold labels'})")
    ratio = econ.cost_ratio.value
    ax.set_title("Cost against quality" + (f": cost ratio {ratio:.3g}x" if ratio is not None else ""), fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def plots(report: Report, history: list[dict[str, Any]] | None, folder: Path) -> dict[str, Path]:
    out = {
        "frontier": plot_frontier(report, folder / "routing_frontier.png"),
        "cost": plot_cost_quality(report, folder / "cost_quality.png"),
        "training": plot_training(history, folder / "training_curves.png"),
        "comparison": plot_comparison(report, folder / "comparison.png"),
    }
    return {k: v for k, v in out.items() if v is not None}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown(report: Report, plot_paths: dict[str, Path]) -> str:
    """A human summary: the decision first, then the table, the routing, the plots."""
    metric = report.primary_metric
    gate = report.gate
    if not gate.passed and gate.capture_passed is False:
        verdict = f"**gate not met**: {report.gate_failure()}"
    elif gate.min_retention is None:
        verdict = "no gate configured" if gate.capture_passed is None else "**gate passed**"
    elif report.retention is None:
        verdict = f"**gate not met**: retention unknown (evaluation.gate.minRetention {gate.min_retention})"
    elif gate.passed:
        verdict = f"**gate passed**: retention {report.retention:.4f} ≥ {gate.min_retention}"
    else:
        verdict = (f"**gate not met**: retention {report.retention:.4f} < {gate.min_retention} "
                   f"(short by {report.shortfall():.4f})")
    lines = [
        f"# Distillation report ({report.task})",
        "",
        f"Model version `{report.model_version}`; {verdict}.",
        _speedup_line(report)
        + f"compression {_fmt(report.compression)}× (teacher size / quantized student size), agreement with the "
        f"teacher {_fmt(report.agreement)}.",
        "",
    ]
    if report.teacher_note:
        who = f"the endpoint {report.teacher.endpoint}" if report.teacher.endpoint else report.teacher.model
        lines += [f"Teacher: {who}; {report.teacher_note}.", ""]
    if report.ensemble is not None:
        lines += ["| teacher | method | weight | accuracy | agreement with the combination |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {m.model} | {m.method} | {m.weight:.4f} | {_fmt(m.metrics.get('accuracy'))} | "
                  f"{_fmt(m.metrics.get('agreement'))} |" for m in report.ensemble.members]
        lines += [f"| combination ({report.ensemble.combination}) | | 1 | "
                  f"{_fmt(report.ensemble.metrics.get('accuracy'))} | 1 |", ""]
    if report.cross_tokenizer is not None:
        lines += [f"Cross-tokenizer ({report.cross_tokenizer.method}): {report.cross_tokenizer.note}.", ""]
    generation = report.teacher_generation
    if generation is not None:
        versus = (f"{_fmt(generation.accuracy)} accuracy against gold, majority class "
                  f"{_fmt(generation.majority_baseline)}" if generation.accuracy is not None else "no gold labels")
        lines += [f"Teacher generation: {generation.rows} rows, {generation.method}"
                  f"{', calibrated' if generation.calibrated else ''}; {versus}; "
                  f"{generation.unmatched_answers} answers matched no label"
                  + ("; hard-label distillation (no logprobs from the teacher)" if generation.hard_labels else "")
                  + (f"; cost {generation.cost:.4f}" if generation.cost is not None else "") + ".", ""]
    if report.labelled is False and report.task == "sequence-classification":
        lines += ["The eval split has no gold labels: quality is agreement with the teacher only.", ""]
    metric_keys = sorted({k for n in MODEL_TITLES for k in getattr(report, n).metrics})
    lines += [
        "| model | params | size (MB) | " + " | ".join(metric_keys)
        + " | p50 b1 (ms) | p95 b1 (ms) | p50 b32 (ms) | items/s b32 |",
        "|---|---:|---:|" + "---:|" * len(metric_keys) + "---:|---:|---:|---:|",
    ]
    for name, title in MODEL_TITLES.items():
        m = getattr(report, name)
        if m.latency_ms is None:  # latency not listed, or a remote endpoint teacher: no timing
            size = "–" if m.size_bytes is None else f"{m.size_bytes / 1e6:.2f}"
            lines.append(f"| {title} | {'–' if m.params is None else f'{m.params:,}'} | {size} | "
                         + " | ".join(_fmt(m.metrics.get(k)) for k in metric_keys) + " | – | – | – | – |")
            continue
        lines.append(
            f"| {title} | {m.params:,} | {(m.size_bytes or 0) / 1e6:.2f} | "
            + " | ".join(_fmt(m.metrics.get(k)) for k in metric_keys)
            + f" | {m.latency_ms.p50:.2f} | {m.latency_ms.p95:.2f} | "
            f"{_fmt(m.latency_ms_batch32.p50 if m.latency_ms_batch32 else None)} | "
            f"{_fmt((m.throughput or {}).get('batch32'), 5)} |"
        )
    settings = report.latency_settings
    timed = report.student_quantized.latency_ms is not None
    rows = report.perplexity_rows if report.perplexity_rows is not None else report.eval_samples
    lines += ["", (f"Latency: {settings.runtime if settings else 'onnxruntime'}, "
                   f"{settings.threads if settings else None} intra-op threads. " if timed else
                   "Latency: not measured (`latency` is not in evaluation.metrics). ")
              + f"{report.eval_samples} eval examples. "
              f"Retention is the quantized student's {metric} over the teacher's"
              + (" (inverse ratio for perplexity)." if metric == "perplexity" else ".")
              + (f" Perplexity is over the reference answers' tokens, each given its held-out prompt ({rows} of "
                 f"{report.eval_samples} rows: those whose whole reference fits in task.maxLength after the prompt, "
                 "in every model's tokens)." if report.perplexity_scope == "answers" else ""), ""]
    lines += _generation_lines(report)
    served, quality = served_routing(report)
    if served is not None:
        r = served
        rec = r.recommended
        lines += ["## Routing", ""]
        if r is report.generation_routing:
            lines += [f"On the generated answers; quality: {r.reference}.", ""]
        if rec:
            lines.append(
                f"Recommended threshold on `{r.signal}`: **{rec.threshold:.4f}** — escalates "
                f"{rec.escalation_rate:.1%} of requests, cascade {quality} {rec.accuracy:.4f} "
                f"(target {r.target:.0%} of the teacher's {_fmt(r.teacher_accuracy)}; the student alone "
                f"{_fmt(r.student_accuracy)})."
                + (" At this point every request goes to the teacher: on this signal the student meets the "
                   "target on no share of the requests (see the other signals below, or evaluation.routingTarget)."
                   if rec.escalation_rate >= 1.0 else "")
            )
        if r.signals:
            lines += ["", f"| signal | threshold | escalated | cascade {quality} |", "|---|---:|---:|---:|"]
            for name, s in r.signals.items():
                rate = s.escalation_rate
                lines.append(f"| {name} | {_fmt(s.recommended_threshold)} | "
                             f"{'–' if rate is None else f'{rate:.1%}'} | {_fmt(s.accuracy)} |")
        lines.append("")
    if report.routing_note and served is None:
        lines += [f"Routing: {report.routing_note}.", ""]
    if report.cascade is not None:
        lines += cascade_markdown(report.cascade)
    if report.economics is not None:
        lines += economics_markdown(report.economics)
    if report.capture is not None:
        c = report.capture
        share = "" if c.train_share is None else f"; captured rows were {c.train_share:.1%} of the training rows"
        lines += ["## Captured traffic", "",
                  f"On {c.rows} held-out captured requests ({c.uri}), agreement with the teacher's answers: the "
                  f"serving student ({', '.join(c.served_versions) or 'unknown version'}) {c.served_agreement:.4f}, "
                  f"the new student {c.new_agreement:.4f} ({c.gain:+.4f}; dataset.capture.minGain "
                  f"{'not set' if c.min_gain is None else f'{c.min_gain:g}'}){share}.", ""]
    if plot_paths:
        lines += ["## Plots", ""] + [f"![{name}]({path.as_posix()})" for name, path in plot_paths.items()] + [""]
    return "\n".join(lines)


def _one_line(text: str | None) -> str:
    """An answer inside a markdown list item: its line breaks shown as ⏎, so the list stays one item."""
    return " ⏎ ".join(part.strip() for part in (text or "").splitlines() if part.strip())


def _speedup_line(report: Report) -> str:
    """The header's speedup: batch-1 latency when measured, else a causal LM's generation tokens/s."""
    if report.speedup is not None or report.generation is None or report.generation.speedup is None:
        return f"Speedup {_fmt(report.speedup)}× (batch 1, teacher p50 / quantized student p50), "
    return f"Speedup {report.generation.speedup:.2f}× (generation, quantized student tokens/s / teacher's), "


def _generation_lines(report: Report) -> list[str]:
    """How the generation metrics were measured: settings, each model's tokens/s, a few answers side by side."""
    found = report.generation
    if found is None:
        return []
    speed = ", ".join(f"{MODEL_TITLES.get(n, n)} {v:.1f}" for n, v in found.tokens_per_second.items())
    lines = ["## Generation", "",
             f"{found.prompts} held-out prompts, {found.decoding}, at most {found.max_new_tokens} tokens, scored "
             f"against {found.reference} ({found.runtime} builds: "
             + ", ".join(f"{MODEL_TITLES.get(n, n)} {p}" for n, p in found.precision.items()) + "). "
             f"Tokens/s, one prompt at a time: {speed}"
             + (f"; the quantized student {found.speedup:.2f}× the teacher." if found.speedup is not None else "."),
             ""]
    for example in found.examples:
        lines += [f"- reference: {_one_line(example.reference) or '–'}"]
        lines += [f"  - {MODEL_TITLES.get(n, n)}: {_one_line(text)}" for n, text in example.answers.items()]
    return [*lines, ""]


def cascade_markdown(cascade: Cascade) -> list[str]:
    """evaluation.tiers: each model of the cascade alone, then the thresholds recommended for all together."""
    unit = "ms (p50, batch 1)" if cascade.cost_basis == "latency" else "parameters"
    rec = cascade.recommended
    lines = ["## Tiered cascade", "",
             f"Cost of a request: the share reaching each model × its unit cost ({cascade.cost_basis}: {unit}).", "",
             "| model | params | unit cost | accuracy alone | threshold | reaches | answers |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m in cascade.models:
        t = rec.thresholds.get(m.name) if rec else None
        reach = rec.reach.get(m.name) if rec else None
        answered = rec.answered.get(m.name) if rec else None
        lines.append(f"| {m.name} | {_fmt(m.params)} | {m.unit_cost:.4g} | {m.accuracy:.4f} | "
                     f"{'–' if t is None else f'{t:.4f}'} | {'–' if reach is None else f'{reach:.1%}'} | "
                     f"{'–' if answered is None else f'{answered:.1%}'} |")
    lines.append("")
    if rec is None:
        lines.append(f"No setting keeps {cascade.target:.0%} of the teacher's accuracy "
                     f"({cascade.teacher_accuracy:.4f}): no thresholds recommended.")
    else:
        lines.append(f"Recommended (`{cascade.signal}`): cascade accuracy {rec.accuracy:.4f} (target "
                     f"{cascade.target:.0%} of the teacher's {cascade.teacher_accuracy:.4f}) at "
                     f"{rec.relative_cost:.1%} of the teacher-only cost.")
    return [*lines, ""]


def economics_markdown(econ: Economics) -> list[str]:
    """The economics section: each figure with the spec's inputs and the job's measurements it used."""
    rows = [("teacher only", econ.teacher_per_million_requests), ("student only", econ.student_per_million_requests),
            ("cascade (recommended threshold)", econ.cascade_per_million_requests), ("cost ratio", econ.cost_ratio),
            ("monthly saving", econ.monthly_saving), ("job cost", econ.job_cost), ("payback", econ.payback_days)]
    lines = ["## Economics", "", "| figure | value | unit | from the spec | measured |", "|---|---:|---|---|---|"]
    for title, figure in rows:
        value = _fmt(figure.value, 5) if figure.value is not None else f"– (set {', '.join(figure.missing)})"
        lines.append(f"| {title} | {value} | {figure.unit} | {', '.join(figure.inputs) or '–'} | "
                     f"{', '.join(figure.measured) or '–'} |")
    measured = ", ".join(f"{k} {_fmt(v, 5)}" for k, v in econ.measured.items())
    lines += ["", f"Measured: {measured}; throughput at {econ.throughput_batch or '–'}, "
              f"{econ.days_per_month:.4g} days per month."]
    lines += [f"Note: {note}." for note in econ.notes]
    return [*lines, ""]
