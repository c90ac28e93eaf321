"""The evaluation report: PNG plots drawn with Pillow (no matplotlib) and a Markdown summary."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gan_service.core.imaging import tile_grid

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (23, 190, 207)]
CLASSES_PNG, NEIGHBOURS_PNG, TRAINING_PNG, COVERAGE_PNG = ("eval-classes.png", "eval-neighbours.png",
                                                           "eval-training.png", "eval-coverage.png")
REPORT_MD = "report.md"


def _font():
    from PIL import ImageFont
    return ImageFont.load_default()


def _scale(img: np.ndarray, factor: int) -> np.ndarray:
    return img.repeat(factor, 0).repeat(factor, 1)


# ---------------------------------------------------------------- image plots

def class_grid(images: np.ndarray, groups: np.ndarray, class_names: list[str], path: Path, per_class: int = 10,
               caption: str = "") -> None:
    """One row per class: up to ``per_class`` images whose group (predicted or requested class) is that class."""
    from PIL import Image, ImageDraw

    h, w, _ = images.shape[1:]
    rows = []
    for c in range(len(class_names)):
        picked = images[groups == c][:per_class]
        row = np.zeros((per_class, h, w, 1), np.uint8)
        row[: len(picked)] = picked
        rows.append(row)
    grid = tile_grid(np.concatenate(rows), ncol=per_class, pad=2, fill=40)[..., 0]
    grid = _scale(grid, 2)
    label_w, top = 150, 22 if caption else 4
    canvas = Image.new("L", (grid.shape[1] + label_w, grid.shape[0] + top), 255)
    canvas.paste(Image.fromarray(grid), (label_w, top))
    draw = ImageDraw.Draw(canvas)
    if caption:
        draw.text((4, 4), caption, fill=0, font=_font())
    step = grid.shape[0] / len(class_names)
    for c, name in enumerate(class_names):
        n = int((groups == c).sum())
        draw.text((4, top + int(step * c + step / 2) - 6), f"{c} {name} ({n})", fill=0, font=_font())
    canvas.save(path)


def neighbour_grid(queries: np.ndarray, neighbours: np.ndarray, distances: np.ndarray, path: Path,
                   caption: str = "") -> None:
    """Each row: a generated image, a gap, then its nearest training images (pixel L2), with distances."""
    from PIL import Image, ImageDraw

    q, k = neighbours.shape[:2]
    h, w, _ = queries.shape[1:]
    blank = np.full((1, h, w, 1), 255, np.uint8)
    rows = [np.concatenate([queries[i:i + 1], blank, neighbours[i]]) for i in range(q)]
    grid = _scale(tile_grid(np.concatenate(rows), ncol=k + 2, pad=2, fill=255)[..., 0], 2)
    top, right = 22, 110
    canvas = Image.new("L", (grid.shape[1] + right, grid.shape[0] + top), 255)
    canvas.paste(Image.fromarray(grid), (0, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), caption or "generated | nearest training images (pixel L2)", fill=0, font=_font())
    step = grid.shape[0] / q
    for i in range(q):
        draw.text((grid.shape[1] + 4, top + int(step * i + step / 2) - 6), f"d1 = {distances[i, 0]:.2f}", fill=0,
                  font=_font())
    canvas.save(path)


# ---------------------------------------------------------------- charts

def _nice(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def line_chart(draw, box: tuple[int, int, int, int], series: dict[str, tuple[list, list]], title: str,
               log_y: bool = False) -> None:
    """Draw series {name: (xs, ys)} into box (x0, y0, x1, y1) of an RGB ImageDraw, with axes and a legend."""
    x0, y0, x1, y1 = box
    font = _font()
    draw.text((x0 + 4, y0), title, fill=(0, 0, 0), font=font)
    px0, py0, px1, py1 = x0 + 50, y0 + 16, x1 - 8, y1 - 18
    draw.rectangle((px0, py0, px1, py1), outline=(0, 0, 0))
    pts = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys) if y is not None and math.isfinite(y)
           and (not log_y or y > 0)]
    if not pts:
        draw.text((px0 + 8, py0 + 8), "no data", fill=(120, 120, 120), font=font)
        return
    tf = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    xmin, xmax = min(p[0] for p in pts), max(p[0] for p in pts)
    ymin, ymax = min(tf(p[1]) for p in pts), max(tf(p[1]) for p in pts)
    if xmax == xmin:
        xmax = xmin + 1
    if ymax == ymin:
        ymax = ymin + 1
    def to_px(x, y):
        return (px0 + (x - xmin) / (xmax - xmin) * (px1 - px0), py1 - (tf(y) - ymin) / (ymax - ymin) * (py1 - py0))
    for i, (name, (xs, ys)) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        line = [to_px(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y) and (not log_y or y > 0)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for p in line if len(line) <= 30 else []:
            draw.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=colour)
        draw.text((px0 + 6, py0 + 4 + 12 * i), name, fill=colour, font=font)
    untf = (lambda v: 10 ** v) if log_y else (lambda v: v)
    draw.text((x0 + 2, py0 - 2), _nice(untf(ymax)), fill=(0, 0, 0), font=font)
    draw.text((x0 + 2, py1 - 10), _nice(untf(ymin)), fill=(0, 0, 0), font=font)
    draw.text((px0, py1 + 4), _nice(xmin), fill=(0, 0, 0), font=font)
    draw.text((px1 - 40, py1 + 4), _nice(xmax) + " steps" if xmax >= 1 else _nice(xmax), fill=(0, 0, 0), font=font)


def training_plot(rows: list[dict], path: Path, caption: str) -> bool:
    """Losses, D outputs and the cheap pixel FD over steps from a run's stats.jsonl; False when empty."""
    from PIL import Image, ImageDraw

    def series(key):
        pts = sorted((r["step"], r[key]) for r in rows if key in r and "step" in r)
        return [p[0] for p in pts], [p[1] for p in pts]

    if not any("loss_g" in r or "pixel_fd" in r for r in rows):
        return False
    img = Image.new("RGB", (1200, 330), "white")
    draw = ImageDraw.Draw(img)
    draw.text((6, 4), caption, fill=(0, 0, 0), font=_font())
    line_chart(draw, (0, 24, 400, 330), {"loss_d": series("loss_d"), "loss_g": series("loss_g")}, "losses")
    line_chart(draw, (400, 24, 800, 330), {"D(x)": series("d_real"), "D(G(z))": series("d_fake")},
               "discriminator outputs")
    line_chart(draw, (800, 24, 1200, 330), {"pixel FD": series("pixel_fd")},
               "cheap pixel FD over steps (training log)", log_y=True)
    img.save(path)
    return True


def coverage_plot(model_hist: list[float], floor_hist: list[float], class_names: list[str], path: Path,
                  caption: str) -> None:
    """Bars of the predicted-class shares of the samples and of the real training images, uniform line."""
    from PIL import Image, ImageDraw

    k = len(class_names)
    width, height, left, bottom, top = 720, 320, 40, 60, 28
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    draw.text((6, 4), caption, fill=(0, 0, 0), font=font)
    vmax = max(max(model_hist), max(floor_hist), 0.2)
    plot_h = height - bottom - top
    slot = (width - left - 10) / k
    for c in range(k):
        for j, (hist, colour) in enumerate(((model_hist, COLOURS[0]), (floor_hist, (170, 170, 170)))):
            x = left + c * slot + 4 + j * (slot - 8) / 2
            h = hist[c] / vmax * plot_h
            draw.rectangle((x, top + plot_h - h, x + (slot - 8) / 2 - 1, top + plot_h), fill=colour)
        draw.text((left + c * slot + 2, top + plot_h + 4), class_names[c][:10], fill=(0, 0, 0), font=font)
    uy = top + plot_h - (1 / k) / vmax * plot_h
    draw.line((left, uy, width - 10, uy), fill=COLOURS[1], width=1)
    draw.text((6, uy - 6), f"{1 / k:.2f}", fill=COLOURS[1], font=font)
    draw.text((left, height - 22), "blue: samples, grey: real training images (floor), red line: uniform",
              fill=(0, 0, 0), font=font)
    img.save(path)


# ---------------------------------------------------------------- Markdown

def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def metric_rows(metrics: dict) -> list[tuple[str, str, str, str]]:
    """(metric, samples, floor, note) rows shared by the Markdown report and docs."""
    m, f = metrics["metrics"], metrics["floor"]

    def pair(get):
        try:
            a = get(m)
        except (KeyError, TypeError):
            a = None
        try:
            b = get(f)
        except (KeyError, TypeError):
            b = None
        return a, b

    rows = []
    for name, get, note, digits in [
        ("Frechet distance (classifier features)", lambda d: d["fd"], "lower is better", 4),
        ("KID x 1e3 (mean)", lambda d: d["kid"]["mean"] * 1e3, "lower is better", 3),
        ("KID x 1e3 (std over subsets)", lambda d: d["kid"]["std"] * 1e3, "", 2),
        ("precision (k=3)", lambda d: d["precision_recall"]["precision"], "higher is better", 3),
        ("recall (k=3)", lambda d: d["precision_recall"]["recall"], "higher is better", 3),
        ("class KL to uniform (nats)", lambda d: d["coverage"]["kl_uniform"], "0 = balanced, 2.303 = one class", 3),
        ("smallest class share", lambda d: d["coverage"]["min_share"], "uniform = 0.1", 3),
        ("per-class accuracy of requested label", lambda d: d["per_class_accuracy"]["mean"], "conditional only", 3),
        ("Parzen log-likelihood (nats)", lambda d: d["parzen"]["log_likelihood"], "higher is better", 5),
        ("Parzen standard error", lambda d: d["parzen"]["std_error"], "", 3),
        ("Parzen sigma", lambda d: d["parzen"]["sigma"], "chosen on held-out train images", 3),
        ("median distance to nearest training image", lambda d: d["memorisation"]["median_nn_distance"],
         "pixels/255; much below the floor = copies", 3),
        ("standard FID (Inception-v3)", lambda d: d["fid_inception"], "only with --inception-weights", 4),
    ]:
        a, b = pair(get)
        if a is None and b is None:
            continue
        rows.append((name, _fmt(a, digits), _fmt(b, digits), note))
    return rows


VIEW_TITLES = {"classifier": "classifier (models/eval)", "robust": "robust classifier (models/eval-robust)",
               "pixels_pca": "pixels, 64 principal components"}


def view_rows(metrics: dict) -> list[tuple[str, ...]]:
    """(view, FD, FD floor, KIDx1e3, floor, precision, floor, recall, floor) per view, formatted."""
    rows = []
    for name, m in metrics["metrics"].get("views", {}).items():
        f = metrics["floor"].get("views", {}).get(name, {})
        cells = [VIEW_TITLES.get(name, name)]
        for get, digits in ((lambda d: d["fd"], 4), (lambda d: d["kid"]["mean"] * 1e3, 3),
                            (lambda d: d["precision_recall"]["precision"], 3),
                            (lambda d: d["precision_recall"]["recall"], 3)):
            for d in (m, f):
                try:
                    cells.append(_fmt(get(d), digits))
                except (KeyError, TypeError):
                    cells.append("-")
        rows.append(tuple(cells))
    return rows


def fd_terms_table(metrics: dict) -> list[str]:
    """Markdown lines: what the FD terms mean, then one row per view (none when metrics.json predates the terms)."""
    rows = fd_term_rows(metrics)
    if not rows:
        return []
    return ["", "Where each FD comes from: the mean term (the average sample is off) and the covariance term (the "
            "spread differs); the variety ratio is the total variance of the samples' features over the test "
            "images' (below 1: less variety than real data).", "",
            "| view | mean term | covariance term | variety ratio | floor |", "| --- | ---: | ---: | ---: | ---: |",
            *("| " + " | ".join(r) + " |" for r in rows)]


def fd_term_rows(metrics: dict) -> list[tuple[str, ...]]:
    """(view, mean term, covariance term, variety ratio, floor's variety ratio) per view, formatted."""
    rows = []
    for name, m in metrics["metrics"].get("views", {}).items():
        terms = m.get("fd_terms")
        if not terms:
            continue
        floor = metrics["floor"].get("views", {}).get(name, {}).get("fd_terms", {})
        rows.append((VIEW_TITLES.get(name, name), _fmt(terms["mean_term"]), _fmt(terms["cov_term"]),
                     _fmt(terms["variety_ratio"], 3), _fmt(floor.get("variety_ratio"), 3)))
    return rows


def summary_text(metrics: dict) -> str:
    """A few lines for the terminal: where the report is, and every view's numbers beside the floor."""
    src = metrics["source"]
    lines = [f"{src.get('model') or src.get('path') or src.get('tag')}: {metrics['n']} samples vs "
             f"{metrics['reference']}",
             f"{'view':<40} {'FD':>9} {'floor':>8} {'KIDx1e3':>9} {'floor':>8} {'prec':>6} {'floor':>6} "
             f"{'recall':>6} {'floor':>6}"]
    lines += [f"{r[0]:<40} {r[1]:>9} {r[2]:>8} {r[3]:>9} {r[4]:>8} {r[5]:>6} {r[6]:>6} {r[7]:>6} {r[8]:>6}"
              for r in view_rows(metrics)]
    cov = metrics["metrics"].get("coverage")
    if cov:
        lines.append(f"class KL to uniform {cov['kl_uniform']:.3f} (floor {metrics['floor']['coverage']['kl_uniform']:.3f}), "
                     f"smallest class share {cov['min_share']:.3f}")
    if "report" in metrics:
        lines.append(f"report: {metrics['report']}")
    return "\n".join(lines)


def write_markdown(metrics: dict, out: Path, plots: dict[str, str]) -> Path:
    src = metrics["source"]
    lines = [f"# Evaluation: {src.get('model') or src.get('path') or src.get('tag')}", "",
             f"- source: {src['kind']} `{src.get('path') or src.get('tag')}`"
             + (f", seed {src['seed']}, labels {src.get('labels')}" if src.get("seed") is not None else ""),
             f"- samples: {metrics['n']} (requested {metrics['n_requested']}); reference: {metrics['reference']}",
             f"- floor: {metrics['floor_description']}",
             f"- feature space: {metrics['classifier']['features']} of the project's classifier "
             f"(`{metrics['classifier']['path']}`, test accuracy {metrics['classifier']['test_accuracy']})",
             f"- command: `{metrics['command']}`", "",
             "| metric | samples | real-data floor | note |", "| --- | ---: | ---: | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in metric_rows(metrics)]
    if metrics["metrics"].get("views"):
        lines += ["", "## Every view", "",
                  "Each distribution metric in each independent feature space, beside its real-data floor.", "",
                  "| view | FD | floor | KID x 1e3 | floor | precision | floor | recall | floor |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += ["| " + " | ".join(r) + " |" for r in view_rows(metrics)]
        lines += fd_terms_table(metrics)
    cov = metrics["metrics"]["coverage"]
    if cov["missing_classes"]:
        lines += ["", f"Classes never produced (by the classifier): {', '.join(cov['missing_classes'])}."]
    pca = metrics["metrics"].get("per_class_accuracy")
    if pca:
        lines += ["", "Per-class accuracy of the requested label: "
                  + ", ".join(f"{k} {_fmt(v, 3)}" for k, v in pca["per_class"].items()) + "."]
    for title, key in (("Samples per class", CLASSES_PNG), ("Class coverage", COVERAGE_PNG),
                       ("Nearest training neighbours (memorisation check)", NEIGHBOURS_PNG),
                       ("Training curves", TRAINING_PNG)):
        if key in plots:
            lines += ["", f"## {title}", "", f"![{title}]({plots[key]})"]
    lines += ["", f"Evaluation took {metrics['timing']['total_s']:.0f} s.", ""]
    path = out / REPORT_MD
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
