"""``OUT/curation.html``: one self-contained page (thumbnails inlined as base64 PNGs) in the look of
``report.html``: duplicate groups side by side, the top outliers, the selection and the label issues."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from crlf.reports.report import CSS, _table

GALLERY_CSS = """
.gallery{display:flex;flex-wrap:wrap;gap:.6em}.tile{width:104px;font-size:.75em;color:#444;word-break:break-all}
.tile img{width:96px;height:96px;image-rendering:pixelated;border:2px solid #eee;display:block}
.tile.keep img{border-color:#2a8a3a}.group{border:1px solid #ddd;border-radius:8px;padding:.4em;margin:.4em 0}
"""
SECTIONS = ["summary", "duplicates", "outliers", "selection", "label-issues", "skipped"]


def thumbnail(image: np.ndarray, side: int = 96) -> str:
    """uint8 ``(3, H, W)`` -> a base64 PNG data URI, enlarged without blurring."""
    from crlf.serve.search import to_pil

    buffer = io.BytesIO()
    to_pil(image, side).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def tile(image: np.ndarray, caption: str, keep: bool = False) -> str:
    cls = "tile keep" if keep else "tile"
    return (f'<div class="{cls}"><img src="{thumbnail(image)}" alt="{html.escape(caption)}">'
            f"{html.escape(caption)}</div>")


def render(title: str, summary: list[tuple[str, str]], images, files: list[str], dup_groups: list[list[tuple]],
           outliers: list[tuple[int, float]], selection: list[int] | None, issues: list[tuple] | None,
           skipped: list[tuple[str, str]], notes: list[str]) -> str:
    """The page. ``dup_groups``: per group ``[(row, keep, similarity)]``; ``outliers``: ``(row, score)``;
    ``issues``: ``(row, given, suggested, confidence)``; ``images[row]`` is a ``(3, S, S)`` uint8 image."""
    parts = [f"<h1>CRLF curation: {html.escape(title)}</h1>"]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    parts.append('<h2 id="summary">Summary</h2><div class="cards">' + "".join(
        f'<div class="card"><div class="v">{html.escape(v)}</div><div class="k">{html.escape(k)}</div></div>'
        for k, v in summary) + "</div>")
    groups = "".join('<div class="group gallery">' + "".join(
        tile(images[row], f"{'kept' if keep else f'{sim:.3f}'} {files[row]}", keep) for row, keep, sim in group)
        + "</div>" for group in dup_groups)
    parts.append('<h2 id="duplicates">Duplicate groups</h2><p>Green: the image kept (the most typical of its '
                 "group); the others show their cosine similarity to it. Full list: duplicates.csv.</p>"
                 + (groups or "<p>No duplicates found.</p>"))
    parts.append('<h2 id="outliers">Most unusual images</h2><p>Highest outlier score first (outliers.csv has '
                 'every image).</p><div class="gallery">'
                 + "".join(tile(images[row], f"{score:.1f} {files[row]}") for row, score in outliers) + "</div>")
    if selection is not None:
        parts.append('<h2 id="selection">What to label first</h2><p>In order (selection.csv).</p>'
                     '<div class="gallery">'
                     + "".join(tile(images[row], f"#{r} {files[row]}") for r, row in enumerate(selection, 1))
                     + "</div>")
    else:
        parts.append('<h2 id="selection">What to label first</h2><p>Not asked: pass --select N.</p>')
    if issues is not None:
        parts.append('<h2 id="label-issues">Label issues</h2><p>Given label → suggested label (out-of-fold '
                     'probability). Full list: label_issues.csv.</p><div class="gallery">' + "".join(
                         tile(images[row], f"{given} → {suggested} {conf:.2f} {files[row]}")
                         for row, given, suggested, conf in issues) + "</div>")
    else:
        parts.append('<h2 id="label-issues">Label issues</h2><p>The data has no labels (class folders or '
                     "--labels CSV).</p>")
    parts.append('<h2 id="skipped">Skipped files</h2>' + (
        _table(skipped, ["file", "reason"]) if skipped else "<p>Every image was decoded.</p>"))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>CRLF curation: {html.escape(title)}</title><style>{CSS}{GALLERY_CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")
