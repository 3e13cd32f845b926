#!/usr/bin/env python3
"""Draws the pictures of the causal layouts in docs/ring-schedule.md.

    scripts/doc-figures.py [--seq-len S] [--ranks N] [--out DIR] [--print]

Writes DIR/layout-tokens.svg (which rank holds which token, for contiguous, striped and zigzag)
and DIR/layout-work-<layout>.svg (the causal ring schedule of each layout: for every ring step
and rank, the block of (query, key) pairs the rank computes, with its visible pairs filled, and
each rank's total). Defaults: S = 16, N = 4, DIR = docs/images. --print prints the visible
pairs per (step, rank) instead, in the format of the check against core's RingSchedule (see
docs/ring-schedule.md).

The layouts and the schedule are worked out here from their definitions (the same as core's
layout.hpp and schedule.hpp): rank r holds L_r = floor((r+1)S/N) - floor(rS/N) tokens; zigzag
cuts the sequence into the front chunks of floor(L_r/2) tokens in rank order, then the back
chunks of ceil(L_r/2) in reverse rank order; at step s rank r holds the K/V block of rank
(r - s) mod N; a query at position i sees the keys at positions <= i. Python 3 standard library
only; every file is written to a temporary name and renamed into place.
"""

import argparse
import os
import sys
import tempfile

LAYOUTS = ["contiguous", "striped", "zigzag"]
COLORS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000"]  # Okabe-Ito
MASKED = "#e9e9e9"
FONT = 'font-family="Helvetica, Arial, sans-serif" font-size="12"'

# ---- the layouts and the schedule ---------------------------------------------------------------


def shard_lengths(seq, ranks):
    return [(r + 1) * seq // ranks - r * seq // ranks for r in range(ranks)]


def positions(layout, seq, ranks):
    """Global positions held by each rank, in local-buffer order."""
    lengths = shard_lengths(seq, ranks)
    if layout == "contiguous":
        starts = [r * seq // ranks for r in range(ranks)]
        return [list(range(starts[r], starts[r] + lengths[r])) for r in range(ranks)]
    if layout == "striped":
        return [list(range(r, seq, ranks)) for r in range(ranks)]
    if layout == "zigzag":
        front = [n // 2 for n in lengths]
        back = [n - n // 2 for n in lengths]
        held, pos = [[] for _ in range(ranks)], 0
        for r in range(ranks):
            held[r] += range(pos, pos + front[r])
            pos += front[r]
        for r in reversed(range(ranks)):
            held[r] += range(pos, pos + back[r])
            pos += back[r]
        return held
    raise ValueError(layout)


def check(seq, ranks):
    if ranks < 1 or seq < 2 * ranks:
        sys.exit(f"doc-figures: need N >= 1 and S >= 2N (zigzag has 2N chunks); got S={seq}, N={ranks}")


def owner(rank, step, ranks):
    return (rank - step) % ranks


def work(layout, seq, ranks):
    """work[s][r] = (owner, mask, visible): mask[i][j] is True when query row i of rank r sees
    key row j of the block rank r holds at step s (both in local-buffer order)."""
    held = positions(layout, seq, ranks)
    grid = []
    for s in range(ranks):
        row = []
        for r in range(ranks):
            o = owner(r, s, ranks)
            mask = [[k <= q for k in held[o]] for q in held[r]]
            row.append((o, mask, sum(map(sum, mask))))
        grid.append(row)
    return grid


def kind(mask):
    visible = sum(map(sum, mask))
    total = len(mask) * len(mask[0])
    return "full" if visible == total else "empty" if visible == 0 else "partial"


# ---- files and SVG ------------------------------------------------------------------------------


def write_atomic(path, text):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def text(x, y, s, anchor="start", size=None, weight=None, fill=None):
    extra = ""
    if size:
        extra += f' font-size="{size}"'
    if weight:
        extra += f' font-weight="{weight}"'
    if fill:
        extra += f' fill="{fill}"'
    s = str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f'<text x="{x:g}" y="{y:g}" text-anchor="{anchor}"{extra}>{s}</text>'


def rect(x, y, w, h, fill, stroke="none", extra=""):
    return f'<rect x="{x:g}" y="{y:g}" width="{w:g}" height="{h:g}" fill="{fill}" stroke="{stroke}"{extra}/>'


def document(width, height, parts):
    return "\n".join([f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                      f'viewBox="0 0 {width} {height}" {FONT}>',
                      rect(0, 0, width, height, "white"), *parts, "</svg>", ""])


def color(rank):
    return COLORS[rank % len(COLORS)]


def tokens_svg(seq, ranks):
    """Which rank holds which token, one row of S boxes per layout."""
    box = min(36, 640 // seq)
    left, top, row_h = 104, 58, 92
    width = left + seq * box + 24
    height = top + row_h * len(LAYOUTS) + 40
    p = [text(width / 2, 24, f"Which rank holds which token: S = {seq}, N = {ranks}",
              "middle", 15, "bold"),
         text(width / 2, 42, "box = one token at its global position; colour = the rank that "
              "holds it", "middle", 12, fill="#444")]
    for li, layout in enumerate(LAYOUTS):
        held = positions(layout, seq, ranks)
        rank_of = {pos: r for r in range(ranks) for pos in held[r]}
        y = top + li * row_h
        p.append(text(left - 10, y + box / 2 + 5, layout, "end", 13, "bold"))
        for pos in range(seq):
            x = left + pos * box
            p.append(rect(x, y, box, box, color(rank_of[pos]), "white", ' stroke-width="2"'))
            p.append(text(x + box / 2, y + box / 2 + 4, pos, "middle", 11, fill="white"))
        if layout == "zigzag":  # the 2N chunk boundaries
            bounds, pos = [], 0
            lengths = shard_lengths(seq, ranks)
            for n in [n // 2 for n in lengths] + [n - n // 2 for n in reversed(lengths)]:
                pos += n
                bounds.append(pos)
            for b in bounds[:-1]:
                x = left + b * box
                p.append(f'<line x1="{x:g}" y1="{y - 5:g}" x2="{x:g}" y2="{y + box + 5:g}" '
                         'stroke="#222" stroke-width="1.5"/>')
        # Each rank's positions in the order its local buffer stores them.
        step = seq * box / ranks
        for r in range(ranks):
            p.append(text(left + r * step, y + box + 20, f"rank {r}: " + " ".join(map(str, held[r])),
                          size=11, fill=color(r)))
    y = height - 18
    for r in range(ranks):
        x = left + r * 90
        p.append(rect(x, y - 11, 14, 14, color(r)))
        p.append(text(x + 20, y, f"rank {r}"))
    return document(width, height, p)


def work_svg(layout, seq, ranks):
    """The causal ring schedule of one layout: rows are steps, columns are ranks."""
    grid = work(layout, seq, ranks)
    held = positions(layout, seq, ranks)
    rows_max = max(len(h) for h in held)
    cell = max(6, min(14, 84 // rows_max))  # pixels per (query, key) pair
    mat = rows_max * cell
    col_w = max(mat + 36, 112)
    row_h = mat + 34
    left, top = 70, 78
    right_w = 130
    width = max(left + ranks * col_w + right_w, 760)
    left = (width - ranks * col_w - right_w) // 2 + 20
    height = top + ranks * row_h + 118
    full = rows_max * rows_max
    total = seq * (seq + 1) // 2
    p = [text(width / 2, 24, f"Causal ring schedule, {layout}: S = {seq}, N = {ranks}",
              "middle", 15, "bold"),
         text(width / 2, 42, "each block: rows = the rank's queries, columns = the keys of the "
              "block it holds (local order); filled = visible pair", "middle", 11, fill="#444")]
    for r in range(ranks):
        p.append(text(left + r * col_w + col_w / 2, top - 14, f"rank {r}", "middle", 12, "bold"))
    p.append(text(left + ranks * col_w + right_w / 2, top - 14, "step: slowest rank", "middle", 12, "bold"))
    critical = 0
    for s in range(ranks):
        y0 = top + s * row_h
        p.append(text(left - 10, y0 + mat / 2 + 4, f"step {s}", "end", 12, "bold"))
        for r in range(ranks):
            o, mask, visible = grid[s][r]
            x0 = left + r * col_w + (col_w - mat) / 2
            k = kind(mask)
            for i, mrow in enumerate(mask):
                for j, seen in enumerate(mrow):
                    p.append(rect(x0 + j * cell, y0 + i * cell, cell, cell,
                                  color(o) if seen else MASKED, "white", ' stroke-width="0.5"'))
            p.append(rect(x0 - 0.5, y0 - 0.5, len(mask[0]) * cell + 1, len(mask) * cell + 1,
                          "none", "#222" if k != "empty" else "#aaa",
                          ' stroke-width="1"' + (' stroke-dasharray="3,2"' if k == "empty" else "")))
            p.append(text(x0 + mat / 2, y0 + mat + 14,
                          f"{visible}/{len(mask) * len(mask[0])} {k}", "middle", 10,
                          fill="#222" if k != "empty" else "#888"))
        slowest = max(grid[s][r][2] for r in range(ranks))
        critical += slowest
        p.append(text(left + ranks * col_w + right_w / 2, y0 + mat / 2 + 4,
                      f"{slowest}/{full} = {100 * slowest / full:.3g}%", "middle", 12))
    # Totals per rank: a bar scaled to the busiest possible rank (every step full).
    y = top + ranks * row_h + 6
    p.append(text(left - 10, y + 12, "total", "end", 12, "bold"))
    for r in range(ranks):
        tot = sum(grid[s][r][2] for s in range(ranks))
        x0 = left + r * col_w + 8
        bar = col_w - 16
        p.append(rect(x0, y, bar, 14, MASKED))
        p.append(rect(x0, y, bar * tot / (full * ranks), 14, "#555"))
        p.append(text(x0 + bar / 2, y + 30, f"{tot} pairs", "middle", 11))
    p.append(text(left + ranks * col_w + right_w / 2, y + 12, f"{critical} pairs", "middle", 12))
    p.append(text(left + ranks * col_w + right_w / 2, y + 30, "(critical path)", "middle", 11,
                  fill="#444"))
    p.append(text(width / 2, height - 34,
                  f"{total} visible pairs in all, {total / ranks:g} per rank. A step lasts as long as "
                  f"its slowest rank, so the layer takes {critical} pair-times", "middle", 11, fill="#222"))
    p.append(text(width / 2, height - 20,
                  f"(the sum of the right column) against {total / ranks:g} if perfectly balanced. "
                  "Block colour: the rank the K/V block started on.", "middle", 11, fill="#222"))
    return document(width, height, p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "docs", "images"))
    ap.add_argument("--print", action="store_true", help="print visible pairs per (step, rank)")
    a = ap.parse_args()
    check(a.seq_len, a.ranks)
    if a.print:
        for layout in LAYOUTS:
            for r, held in enumerate(positions(layout, a.seq_len, a.ranks)):
                print(f"{layout} rank {r} positions " + " ".join(map(str, held)))
            for s, row in enumerate(work(layout, a.seq_len, a.ranks)):
                print(f"{layout} step {s} visible " + " ".join(str(v) for _, _, v in row))
        return
    os.makedirs(a.out, exist_ok=True)
    files = {"layout-tokens.svg": tokens_svg(a.seq_len, a.ranks)}
    for layout in LAYOUTS:
        files[f"layout-work-{layout}.svg"] = work_svg(layout, a.seq_len, a.ranks)
    for name, svg in files.items():
        write_atomic(os.path.join(a.out, name), svg)
        print(f"doc-figures: wrote {os.path.join(os.path.normpath(a.out), name)}")


if __name__ == "__main__":
    main()
