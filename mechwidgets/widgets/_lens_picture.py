"""The logit-lens widget's static picture (for places without a widget manager)."""

from __future__ import annotations

from html import escape

from ..analysis.lens import LensView
from ._svg import _label, diverging_rgb, sequential_rgb


def lens_svg(view: LensView, prompt: str, token_strs: dict[int, str], *, max_cols: int = 48) -> str:
    """The lens grid (top token per layer and position, coloured by its probability) and the
    largest DLA terms, as one SVG document (``token_strs``: the top tokens' ids to strings). Long
    prompts show their last ``max_cols`` positions (at most those whose lens is computed)."""
    lens = view.lens
    n_rows, n_pos = lens.top_ids.shape[:2]
    first = max(0, n_pos - max_cols, lens.computed_from)  # positions whose lens is computed
    cols = list(range(first, n_pos))
    cw, ch, left, top = 46, 18, 70, 96
    grid_w = left + len(cols) * cw + 10
    bars = view.dla.top(12) if view.dla is not None else []
    bar_x = grid_w + 20
    width = bar_x + (260 if bars else 0)
    height = max(top + n_rows * ch + 30, 60 + 16 * len(bars))
    title = f"Logit lens: top token per layer (rows) and position (columns), colour = its probability; {prompt}"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="9">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="4" y="14" font-size="12">{_label(title, 160)}</text>',
    ]
    if first:
        parts.append(f'<text x="4" y="30" fill="#57606a">(last {len(cols)} of {n_pos} positions)</text>')
    for j, pos in enumerate(cols):
        x, y = left + j * cw + cw // 2, top - 4
        parts.append(f'<text transform="translate({x},{y}) rotate(-45)">{_label(lens.str_tokens[pos], 10)}</text>')
    for i in range(n_rows):
        y = top + (n_rows - 1 - i) * ch  # the final layer on top
        parts.append(f'<text x="{left - 4}" y="{y + 12}" text-anchor="end">{escape(lens.layers[i])}</text>')
        for j, pos in enumerate(cols):
            p = float(lens.top_probs[i, pos, 0])
            tok = int(lens.top_ids[i, pos, 0])
            parts.append(
                f'<rect x="{left + j * cw}" y="{y}" width="{cw - 1}" height="{ch - 1}" fill="{sequential_rgb(p)}"/>'
            )
            text = _label(token_strs.get(tok, str(tok)).replace(" ", "·"), 7)
            colour = "white" if p > 0.6 else "black"
            parts.append(f'<text x="{left + j * cw + 2}" y="{y + 12}" fill="{colour}">{text}</text>')
    if bars:
        scale = max(abs(v) for _, v in bars) or 1.0
        dla = view.dla
        assert dla is not None
        what = f"logit({dla.answer_str}) - logit({dla.wrong_answer_str})" if dla.wrong_answer is not None else f"logit({dla.answer_str})"
        parts.append(f'<text x="{bar_x}" y="{top - 30}" font-size="11">DLA to {_label(what, 40)}: largest parts</text>')
        for k, (name, v) in enumerate(bars):
            y = top - 16 + k * 16
            w = 50 * abs(v) / scale
            centre = bar_x + 122  # positive parts to the right of the axis, negative to the left
            x0 = centre if v >= 0 else centre - w
            parts.append(f'<text x="{bar_x + 64}" y="{y + 10}" text-anchor="end">{escape(name)}</text>')
            parts.append(f'<rect x="{x0:.1f}" y="{y}" width="{w:.1f}" height="12" fill="{diverging_rgb(v / scale)}"/>')
            parts.append(f'<line x1="{centre}" x2="{centre}" y1="{y}" y2="{y + 14}" stroke="#8c959f"/>')
            parts.append(f'<text x="{bar_x + 180}" y="{y + 10}">{v:+.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


__all__ = ["lens_svg"]
