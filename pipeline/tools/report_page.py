"""The HTML report's page, assembled from what the stages wrote (pure: inputs in, text out).

Every value is escaped; numbers carry `data-` attributes (data-split, data-class,
data-metric, data-count) so a test, or a person's script, can read them from the DOM. The
Content-Security-Policy forbids every request but data: images: the page cannot reach a
network even by mistake.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.storage.masks import voc_palette
from pipeline.tools.charts import Series, line_chart
from pipeline.tools.thumbnails import Problem, Thumbnail, by_file, files_to_draw

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#fafafa;line-height:1.4}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
nav{position:sticky;top:0;background:#263238;padding:8px 24px;z-index:1}
nav a{color:#eceff1;margin-right:18px;text-decoration:none;font-size:14px}
h1{font-size:24px;margin:12px 0 4px}h2{border-bottom:2px solid #cfd8dc;padding-bottom:4px;
margin-top:36px}h3{margin:20px 0 8px}
table{border-collapse:collapse;margin:8px 0 16px;background:#fff;font-size:13px}
th,td{border:1px solid #d5dbdf;padding:4px 8px;vertical-align:top}
th{background:#eceff1;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{background:#fff;border:1px solid #d5dbdf;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:22px}.card span{font-size:12px;color:#607d8b}
.sev-error{color:#fff;background:#c62828;border-radius:3px;padding:0 5px;font-size:12px}
.sev-warning{color:#222;background:#ffb300;border-radius:3px;padding:0 5px;font-size:12px}
.notice{background:#fff8e1;border-left:4px solid #ffb300;padding:6px 10px;margin:8px 0}
.bad{background:#ffebee}.muted{color:#78909c;font-size:12px}
.swatch{display:inline-block;width:10px;height:10px;border:1px solid #555;margin-right:5px}
.bar{position:relative;width:140px;height:10px;background:#eceff1;display:inline-block}
.bar span{position:absolute;left:0;top:0;bottom:0;background:#42a5f5}
.bar i{position:absolute;top:-3px;bottom:-3px;width:2px;background:#c62828}
figure{display:inline-block;margin:6px 10px 10px 0;vertical-align:top}
figcaption{font-size:12px;color:#455a64}img{max-width:100%}
td.heat{text-align:right;min-width:44px}
code{background:#eceff1;padding:0 3px;border-radius:3px;font-size:12px}
.params{columns:3 280px;font-size:13px}.params div{break-inside:avoid;padding:1px 0}
.params b{font-weight:600;color:#37474f}
"""


@dataclass(frozen=True)
class Picture:
    name: str
    mime: str
    data: bytes
    caption: str

    def img(self, alt: str, width: int | None = None) -> str:
        size = f' width="{width}"' if width else ""
        src = f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"
        return f'<img src="{src}" alt="{_e(alt)}"{size}>'


@dataclass(frozen=True)
class Review:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    overlays: tuple[Picture | None, ...]
    total: int  # rows in review.csv
    problem: str  # non-empty: why the file could not be read


@dataclass(frozen=True)
class ReportInputs:
    classes: tuple[str, ...]
    data: Mapping[str, Any]  # data.json
    problems: tuple[Problem, ...]  # validation.json
    thumbnails: Mapping[str, Thumbnail]  # file -> picture of its problems
    split: Mapping[str, Any]  # split.json
    plan: Mapping[str, Any]  # plan.json
    curves: Mapping[str, tuple[tuple[float, float], ...]]  # DVCLive name -> (step, value)
    metrics: Mapping[str, Any]  # metrics.json
    confusion: Mapping[str, tuple[tuple[int, ...], ...]]  # eval set -> gt x pred counts
    overlays: tuple[Picture, ...]  # the worst val images
    review: Review | None
    settings: tuple[tuple[str, str], ...]  # params that mattered
    missing: tuple[str, ...] = ()  # inputs absent or unreadable
    max_issues: int = 500
    review_dir: str = "reports/review"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def _int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "–"


def _pct(value: Any, digits: int = 1) -> str:
    return "–" if _num(value) == "–" else f"{100 * value:.{digits}f} %"


def class_colours(n: int) -> list[str]:
    """The masks' VOC colours of the first n classes (as the overlays show them)."""
    p = voc_palette()
    return [f"#{p[3 * k]:02x}{p[3 * k + 1]:02x}{p[3 * k + 2]:02x}" for k in range(n)]


def _swatch(colour: str) -> str:
    return f'<span class="swatch" style="background:{colour}"></span>'


def _notice(text: str) -> str:
    return f'<p class="notice">{_e(text)}</p>'


def render(r: ReportInputs) -> str:
    """The whole page."""
    colours = class_colours(len(r.classes))
    body = [_summary(r), _data(r, colours), _split(r, colours), _training(r, colours),
            _evaluation(r, colours), _review(r), _provenance(r)]
    nav = "".join(f'<a href="#{k}">{k.capitalize()}</a>' for k in
                  ("data", "split", "training", "evaluation", "review", "provenance"))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'  # no favicon request
            f"<title>segpipe report</title><style>{_CSS}</style></head><body>"
            f"<nav>{nav}</nav><main>" + "\n".join(body) + "</main></body></html>\n")


def _summary(r: ReportInputs) -> str:
    files = r.data.get("files") or {}
    cards = [(_num(r.metrics.get("miou")), "val mIoU", 'data-split="val" data-metric="miou"')]
    bench = r.metrics.get("benchmark")
    if isinstance(bench, dict):
        cards.append((_num(bench.get("miou")), "benchmark mIoU",
                      'data-split="benchmark" data-metric="miou"'))
    cards += [(_int(files.get(k)), f"files {k}", f'data-count="{k}"')
              for k in ("seen", "converted", "rejected", "warnings")]
    html_cards = "".join(f'<div class="card"><b {attrs}>{_e(v)}</b><span>{_e(label)}</span>'
                         "</div>" for v, label, attrs in cards)
    missing = "".join(_notice(m) for m in r.missing)
    return (f"<h1>segpipe report</h1><p class=\"muted\">Data version "
            f"<code>{_e(r.metrics.get('data_fingerprint', '–'))}</code> · classes "
            f"{_e(', '.join(r.classes))}</p><div class=\"cards\">{html_cards}</div>{missing}")


# ---------------------------------------------------------------- data


def _data(r: ReportInputs, colours: Sequence[str]) -> str:
    files = r.data.get("files") or {}
    out = ['<h2 id="data">Data</h2>', "<table><tr><th>files seen</th><th>converted</th>"
           "<th>rejected (errors)</th><th>with warnings</th></tr><tr>"
           + "".join(f'<td class="n" data-count="{k}">{_int(files.get(k))}</td>'
                     for k in ("seen", "converted", "rejected", "warnings")) + "</tr></table>"]
    per_class = r.data.get("classes") or {}
    fp = (r.data.get("fingerprint") or {}).get("classes") or {}
    out.append("<h3>Classes</h3><table><tr><th>class</th><th>images</th><th>pixel share</th>"
               "<th>objects</th><th>median object area (px)</th><th>median thickness (px)</th>"
               "</tr>")
    for k, name in enumerate(r.classes):
        c, f = per_class.get(name) or {}, fp.get(name) or {}
        out.append(f'<tr data-class="{_e(name)}"><td>{_swatch(colours[k])}{_e(name)}</td>'
                   f'<td class="n" data-count="images">{_int(c.get("images"))}</td>'
                   f'<td class="n">{_pct(c.get("pixel_share"), 2)}</td>'
                   f'<td class="n">{_int(f.get("objects"))}</td>'
                   f'<td class="n">{_num(f.get("area"), 0)}</td>'
                   f'<td class="n">{_num(f.get("thickness"), 1)}</td></tr>')
    out.append("</table>")
    return "\n".join([*out, _problems(r)])


def _problems(r: ReportInputs) -> str:
    """Every validation problem, grouped by file, with the file's thumbnail."""
    if not r.problems:
        return "<h3>Validation problems</h3><p>None: every file converted cleanly.</p>"
    grouped = by_file(r.problems)
    errors = sum(1 for p in r.problems if p.severity == "error")
    order = files_to_draw(r.problems, len(grouped))  # files with an error first, then by name
    out = [f"<h3>Validation problems</h3><p>{len(r.problems)} problems in {len(grouped)} files "
           f"({errors} errors: those files are left out). The offending shape is outlined in "
           "red (error) or orange (warning); a frame marks a problem of the whole file.</p>",
           '<table class="problems"><tr><th>picture</th><th>file</th><th>problems</th></tr>']
    shown = 0
    for file in order:
        if shown >= r.max_issues:
            break
        thumb = r.thumbnails.get(file)
        if thumb is not None and thumb.jpeg is not None:
            cell = Picture(file, "image/jpeg", thumb.jpeg, file).img(f"problems of {file}")
        else:
            cell = f'<span class="muted">{_e(thumb.note if thumb else "not drawn")}</span>'
        items = []
        for p in grouped[file][:max(0, r.max_issues - shown)]:
            where = f" shape {p.shape}" if p.shape is not None else ""
            items.append(f'<li><span class="sev-{_e(p.severity)}">{_e(p.severity)}</span> '
                         f"<code>{_e(p.check)}</code>{_e(where)}: "
                         f'<span class="message">{_e(p.message)}</span></li>')
            shown += 1
        out.append(f'<tr data-file="{_e(file)}"><td>{cell}</td><td>{_e(file)}</td>'
                   f'<td><ul>{"".join(items)}</ul></td></tr>')
    out.append("</table>")
    if shown < len(r.problems):
        out.append(_notice(f"{len(r.problems) - shown} more problems are not listed here "
                           "(report.max_issues); all are in validation.md"))
    return "\n".join(out)


# ---------------------------------------------------------------- split


def _split(r: ReportInputs, colours: Sequence[str]) -> str:
    out = ['<h2 id="split">Split</h2>']
    if not r.split:
        return "\n".join([*out, _notice("split.json not found: run `segpipe split`")])
    sizes = r.split.get("splits") or {}
    out.append("<table><tr><th>split</th><th>images</th><th>groups</th></tr>" + "".join(
        f'<tr><td>{_e(s)}</td><td class="n" data-count="{_e(s)}">{_int(v.get("images"))}</td>'
        f'<td class="n">{_int(v.get("groups"))}</td></tr>'
        for s, v in sizes.items() if isinstance(v, dict)) + "</table>")
    out.append(f"<p>Target: {_pct(r.split.get('val_fraction'))} of each class's images in val, "
               f"within ±{_pct(r.split.get('tolerance'))} (or a class's largest group).</p>")
    out.append("<table><tr><th>class</th><th>train</th><th>val</th><th>benchmark</th>"
               "<th>val share of images</th><th></th><th>target</th><th>deviation</th>"
               "<th>allowed</th><th>val share of pixels</th></tr>")
    for k, name in enumerate(r.classes):
        c = (r.split.get("classes") or {}).get(name)
        if not isinstance(c, dict):
            continue
        images, share = c.get("images") or {}, (c.get("image_share") or {}).get("val")
        dev, allowed = c.get("deviation"), c.get("allowed")
        bad = _num(dev) != "–" and _num(allowed) != "–" and abs(dev) > allowed + 1e-12
        bar = (f'<span class="bar"><span style="width:{100 * share:.1f}%"></span>'
               f'<i style="left:{100 * (c.get("target") or 0):.1f}%"></i></span>'
               if _num(share) != "–" else "")
        marked = ' class="bad"' if bad else ""
        out.append(f'<tr data-class="{_e(name)}"{marked}>'
                   f"<td>{_swatch(colours[k])}{_e(name)}</td>"
                   + "".join(f'<td class="n">{_int(images.get(s))}</td>'
                             for s in ("train", "val", "benchmark"))
                   + f'<td class="n">{_pct(share)}</td><td>{bar}</td>'
                   f'<td class="n">{_pct(c.get("target"))}</td><td class="n">{_pct(dev)}</td>'
                   f'<td class="n">±{_pct(allowed)}</td>'
                   f'<td class="n">{_pct((c.get("pixel_share") or {}).get("val"))}</td></tr>')
    out.append("</table>")
    out += [_notice(str(w)) for w in r.split.get("warnings") or []]
    return "\n".join(out)


# ---------------------------------------------------------------- training


def _training(r: ReportInputs, colours: Sequence[str]) -> str:
    out = ['<h2 id="training">Training</h2>']
    plan = r.plan.get("plan") if isinstance(r.plan.get("plan"), dict) else None
    if plan is None:
        out.append(_notice("plan.json not found: run `segpipe train`"))
    else:
        device = (f"On <b>{_e(r.plan.get('device', '?'))}</b>, "
                  f"{'bf16 autocast' if r.plan.get('amp') else 'fp32'}"
                  f"{', channels_last' if r.plan.get('channels_last') else ''}.")
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_plain(v))}</td></tr>"
                       for k, v in plan.items() if k != "reasons")
        reasons = "".join(f"<li>{_e(x)}</li>" for x in plan.get("reasons") or [])
        out.append(f"<p>{device} The plan, derived from the dataset fingerprint:</p>"
                   f'<table class="plan">{rows}</table><ul>{reasons}</ul>')
    loss = r.curves.get("train/loss", ())
    lr = r.curves.get("train/lr", ())
    val = [Series("mIoU", r.curves.get("val/miou", ()), "#888888", 3.5)]
    val += [Series(c, r.curves[f"val/iou/{c}"], colours[k])
            for k, c in enumerate(r.classes) if f"val/iou/{c}" in r.curves]
    if not loss and len(val) == 1 and not val[0].points:
        return "\n".join([*out, _notice("no training curves found (reports/train)")])
    out.append(line_chart([Series("loss", loss, "#4e79a7", 2.0)], title="Training loss",
                          x_label="step", y_label="loss", log_y=True, width=560))
    out.append(line_chart([Series("lr", lr, "#59a14f", 2.0)], title="Learning rate",
                          x_label="step", y_label="lr", width=560))
    out.append(line_chart(val, title="Val mIoU and IoU per class while training",
                          x_label="step", y_label="IoU", width=900, height=300))
    return "\n".join(out)


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ---------------------------------------------------------------- evaluation


def _evaluation(r: ReportInputs, colours: Sequence[str]) -> str:
    out = ['<h2 id="evaluation">Evaluation</h2>']
    if not r.metrics:
        return "\n".join([*out, _notice("metrics.json not found: run `segpipe evaluate`")])
    sections = [("val", r.metrics)]
    if isinstance(r.metrics.get("benchmark"), dict):
        sections.append(("benchmark", r.metrics["benchmark"]))
    for name, m in sections:
        out.append(f"<h3>{_e(name)}: mIoU <span data-split=\"{name}\" data-metric=\"miou\">"
                   f"{_num(m.get('miou'))}</span></h3><p>mIoU without background "
                   f"{_num(m.get('miou_fg'))} · aAcc {_num(m.get('aacc'))} · "
                   f"{_int(m.get('n_images'))} images · eval set "
                   f"<code>{_e(m.get('eval_fingerprint', '–'))}</code></p>")
        out.append(_metrics_table(name, m, r.classes, colours))
        if name in r.confusion:
            out.append(_heatmap(name, r.confusion[name], r.classes))
    out.append("<h3>Worst val images</h3><p>By the image's own mIoU; each shows image | "
               "ground truth | prediction.</p>")
    if not r.overlays:
        out.append(_notice("no overlays found (evaluate.worst_k is 0, or evaluate has not run)"))
    out += [f"<figure>{p.img(p.caption)}<figcaption>{_e(p.caption)}</figcaption></figure>"
            for p in r.overlays]
    return "\n".join(out)


def _metrics_table(split: str, m: Mapping[str, Any], classes: Sequence[str],
                   colours: Sequence[str]) -> str:
    keys = ("iou", "dice", "precision", "recall")
    rows = [f'<table class="metrics" data-split="{_e(split)}"><tr><th>class</th><th>IoU</th>'
            "<th>Dice</th><th>precision</th><th>recall</th><th>support (px)</th></tr>"]
    for k, name in enumerate(classes):
        cells = "".join(f'<td class="n" data-metric="{key}">'
                        f"{_num((m.get(key) or {}).get(name))}</td>" for key in keys)
        support = (m.get("support") or {}).get(name)
        rows.append(f'<tr data-class="{_e(name)}"><td>{_swatch(colours[k])}{_e(name)}</td>'
                    f'{cells}<td class="n" data-metric="support">{_int(support)}</td></tr>')
    rows.append("</table><p class=\"muted\">– = undefined: the class is absent from the ground "
                "truth (recall), never predicted (precision), or both (IoU, Dice; left out of "
                "the mIoU).</p>")
    return "\n".join(rows)


def _heatmap(split: str, matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """The confusion matrix, each cell shaded by its share of the ground-truth row."""
    if len(classes) > 40:
        return _notice(f"{len(classes)} classes: the confusion matrix is in confusion.csv")
    head = "".join(f"<th>{_e(c)}</th>" for c in classes)
    rows = [f'<p>Confusion ({_e(split)}): share of each ground-truth row\'s pixels; rows = '
            f'ground truth, columns = prediction.</p><table class="confusion" '
            f'data-split="{_e(split)}"><tr><th>gt \\ pred</th>{head}</tr>']
    for gt, row in zip(classes, matrix, strict=True):
        total = sum(row)
        cells = []
        for pred, count in zip(classes, row, strict=True):
            share = count / total if total else 0.0
            # white -> blue by the square root of the share, so that a confusion of 1-2 % is
            # visible next to a 98 % diagonal; the text turns white where the cell is dark
            depth = math.sqrt(share)
            level = round(255 - 200 * depth)
            colour = f"rgb({level},{level + round(35 * depth)},255)" if share else "#fff"
            text = "#fff" if depth > 0.7 else "#222"
            cells.append(f'<td class="n heat" style="background:{colour};color:{text}" '
                         f'title="{count:,} px" data-gt="{_e(gt)}" data-pred="{_e(pred)}">'
                         f"{_num(100 * share, 1) if total else '–'}</td>")
        rows.append(f"<tr><th>{_e(gt)}</th>{''.join(cells)}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


# ---------------------------------------------------------------- review and provenance


def _review(r: ReportInputs) -> str:
    out = ['<h2 id="review">Label review</h2>']
    q = r.review
    if q is None:
        return "\n".join([*out, _notice(f"No label-review queue: {r.review_dir}/review.csv not "
                                        "found (the review stage writes it).")])
    if q.problem:
        return "\n".join([*out, _notice(q.problem)])
    out.append(f"<p>The annotations most likely wrong, first: {len(q.rows)} of {q.total}.</p>")
    head = "".join(f"<th>{_e(c)}</th>" for c in ("rank", *q.columns, "overlay"))
    out.append(f'<table class="review"><tr>{head}</tr>')
    for k, (row, picture) in enumerate(zip(q.rows, q.overlays, strict=True), start=1):
        cells = "".join(f"<td>{_e(v)}</td>" for v in row)
        img = picture.img(picture.caption, 320) if picture else '<span class="muted">–</span>'
        out.append(f'<tr><td class="n">{k}</td>{cells}<td>{img}</td></tr>')
    out.append("</table>")
    return "\n".join(out)


def _provenance(r: ReportInputs) -> str:
    m = r.metrics
    bench = m.get("benchmark") if isinstance(m.get("benchmark"), dict) else {}
    rows = [("data version (manifest + splits)", m.get("data_fingerprint", "–")),
            ("val eval set", m.get("eval_fingerprint", "–"))]
    if bench:
        rows.append(("benchmark eval set", bench.get("eval_fingerprint", "–")))
    fingerprint = r.data.get("fingerprint") or {}
    if fingerprint:
        low, mid, high = (fingerprint.get("long_side") or [None] * 3)[:3]
        rows.append(("dataset fingerprint", f"{_int(fingerprint.get('images'))} images, long "
                     f"side {_num(low, 0)} / {_num(mid, 0)} / {_num(high, 0)} px (10th / 50th / "
                     "90th percentile)"))
    table = "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in rows)
    params = "".join(f"<div><b>{_e(k)}</b> {_e(v)}</div>" for k, v in r.settings)
    return (f'<h2 id="provenance">Provenance</h2><table>{table}</table>'
            f'<h3>Params that mattered</h3><div class="params">{params}</div>')
