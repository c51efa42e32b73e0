"""The table that ``evcf bench`` prints: one row per model, then the run's conditions."""

from __future__ import annotations

from typing import Any

__all__ = ["fmt", "format_table", "columns"]


def fmt(value: float | None, unit: str = "") -> str:
    """3 significant digits, no exponent for the magnitudes a bench sees."""
    if value is None:
        return "-"
    return f"{value:,.0f}{unit}" if value >= 100 else f"{value:.3g}{unit}"


def format_table(result: dict[str, Any]) -> str:
    """The printed summary: one row per model, then the run's conditions, preprocessing and memory."""
    rows = []
    for name, m in result["models"].items():
        per_epoch = m.get("steps_per_epoch") or 0
        spread = m.get("step_spread_s")
        iqr = (spread["q1"] * per_epoch, spread["q3"] * per_epoch) if spread else None
        if m.get("sweep_spread_s"):  # WMF: an epoch is one ALS sweep
            iqr = (m["sweep_spread_s"]["q1"], m["sweep_spread_s"]["q3"])
        note = m.get("note", "")
        if m.get("grid_s_extrapolated") is not None:
            note += f"; ~grid of {m['grid_points']} points {fmt(m['grid_s_extrapolated'])} s"
        rows.append([
            name, m.get("batch_size", "-"), fmt(m.get("epoch_s")), f"{fmt(iqr[0])}-{fmt(iqr[1])}" if iqr else "-",
            f"~{fmt(m['fit_s_extrapolated'])}" if m.get("fit_s_extrapolated") is not None else fmt(m.get("fit_s")),
            fmt(m.get("users_per_s")), fmt(m.get("pipelined_epoch_s")), fmt(m.get("pipelined_steps_per_s")),
            fmt(m.get("reference_epoch_s")), fmt(m.get("reference_x_floor"), "x"), fmt(m.get("speedup"), "x"),
            fmt(m["step_flops"] / 1e9) if m.get("step_flops") else "-", fmt(m.get("gemm_gflops")),
            fmt(m.get("floor_epoch_s")),
            fmt(m.get("x_floor"), "x"), fmt(m["step_bytes"] / 1e9) if m.get("step_bytes") else "-",
            fmt(m.get("traffic_floor_epoch_s")), fmt(m.get("x_traffic_floor"), "x"),
            fmt(m.get("pipelined_x_traffic_floor"), "x"), fmt(m.get("eval_s")), fmt(m.get("peak_rss_mib")), fmt(m.get("peak_cuda_mib")), note,
        ])
    headers = ["model", "batch", "s / epoch", "IQR", "fit (s)", "users / s", "pipelined s / epoch", "steps / s",
               "reference s / epoch", "reference x floor", "speed-up",
               "GFLOP / step", "GEMM GFLOP/s", "floor s / epoch", "x floor", "GB / step", "traffic floor s / epoch",
               "x traffic floor", "pipelined x traffic floor", f"eval {result.get('eval_users') or 0:,} users (s)",
               "peak RSS (MiB)", "peak CUDA (MiB)", "note"]
    shape, gemm = result["shape"], result["gemm"]
    precisions = [result["precision"]] if result.get("precision") else (
        sorted({m["precision"] for m in result["models"].values() if m.get("precision")}) or ["-"])
    lines = [
        f"shape {shape['name']}: {shape['users']:,} users x {shape['items']:,} items, {shape['nnz']:,} clicks; "
        f"device {result['device']} ({result['machine']['summary']}), {'/'.join(precisions)}, "
        f"{result['threads']} threads; recipes: {result['recipes']}",
        f"median of {result['steps']} steps ({result['reference_steps']} reference) after {result['warmup_steps']} "
        f"warm-up, the two paths interleaved, times an epoch's steps; IQR: the quartiles of the steps, in s / epoch; "
        f"GEMM {fmt(gemm['gflops'])} GFLOP/s at the start ({gemm['dtype']}, {gemm['size']}^2); floor = FLOPs / "
        f"GEMM rate, the rate measured around the model's own bench (column GEMM GFLOP/s)"
        + (f"; traffic floor = bytes moved by a step's operations, unfused (GB / step), / copy rate "
           f"{fmt(result['bandwidth']['gbs'])} GB/s" if result.get("bandwidth") else ""),
    ]
    if any(m.get("fit_s_extrapolated") is not None for m in result["models"].values()):
        lines.append("~: extrapolated from what was timed (formulas in the JSON; CDAE's steps as above, without a "
                     "reference); ~grid: the model's own search, a fit and an evaluation per point "
                     "(evcf/bench/baselines.py)")
    # only the columns that some model fills (the VAE-only ones are empty for the other models)
    keep = [i for i in range(len(headers)) if i in (0, len(headers) - 1) or any(row[i] != "-" for row in rows)]
    if result.get("pipelined_steps"):
        lines.append(f"pipelined: {result['pipelined_steps']} steps queued in rounds, one synchronisation per round "
                     "(median round), times an epoch's steps; steps / s of the same")
    lines.append(columns([[row[i] for i in keep] for row in rows], [headers[i] for i in keep]))
    pre = result.get("preprocess")
    if pre:
        lines.append(f"preprocessing {pre['rows']:,} ratings rows ({fmt(pre['csv_mib'])} MiB csv) to the split: "
                     f"{fmt(pre['preprocess_s'])} s (read {fmt(pre['read_s'])}, binarize+filter "
                     f"{fmt(pre['filter_s'])}, split {fmt(pre['split_s'])}, write {fmt(pre['write_split_s'])}), "
                     f"peak RSS {fmt(pre['peak_rss_mib'])} MiB")
    else:
        lines.append(f"preprocessing: {result.get('preprocess_note', 'skipped')}")
    lines.append(f"peak RSS: training {fmt(result['train_peak_rss_mib'])} MiB (worst model, ours alone), "
                 f"whole bench {fmt(result['peak_rss_mib'])} MiB; load average "
                 f"{result['load_average_start']} -> {result['load_average_end']}")
    return "\n".join(lines)


def columns(rows: list[list[str]], headers: list[str], left: int = 1) -> str:
    """A plain text table: the first ``left`` columns and the last left-aligned, the others
    right-aligned, two spaces between columns, a rule of dashes under the headers."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    last = len(widths) - 1

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i < left or i == last else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])
