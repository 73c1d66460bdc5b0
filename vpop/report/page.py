"""One self-contained HTML page: inline CSS, figures as base64 PNG data URIs, no scripts.

    page = Page("vpop report")
    page.heading("Simulation", level=2)
    page.paragraph("Some text.")
    page.figure(fig, "What the figure shows.")
    page.table(df, "What the table shows.")
    html = page.render()

Every text is HTML-escaped. The only links are in-page anchors (the table of
contents); the only images are `data:image/png;base64,...`, so the file opens
offline and can be mailed or archived as it is.
"""

from __future__ import annotations

import base64
import html
import io
import re

import pandas as pd

DPI = 90

CSS = """
:root { --ink: #1d232a; --muted: #5b6670; --rule: #d9dee3; --accent: #2c5d8a; --bg: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 28px 64px; background: #fff; min-height: 100vh;
       box-shadow: 0 0 0 1px var(--rule); }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 21px; margin: 40px 0 8px; padding-top: 10px; border-top: 2px solid var(--rule); }
h3 { font-size: 17px; margin: 28px 0 6px; }
p { margin: 6px 0 10px; }
.meta { color: var(--muted); font-size: 13px; margin-bottom: 14px; }
nav.toc { background: var(--bg); border: 1px solid var(--rule); border-radius: 6px; padding: 10px 18px;
          margin: 14px 0 8px; font-size: 14px; }
nav.toc ol { margin: 4px 0; padding-left: 22px; }
nav.toc > ol { columns: 2; column-gap: 28px; }
nav.toc > ol > li { break-inside: avoid; }
nav.toc ol ol { padding-left: 18px; font-size: 13px; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
figure { margin: 12px 0 20px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; border: 1px solid var(--rule); }
figcaption, .caption { color: var(--muted); font-size: 13px; margin-top: 6px; }
.tablewrap .caption { margin: 4px 0 0; max-width: 940px; }
.tablewrap { margin: 8px 0 18px; max-width: 100%; }
/* tables fit their column: cells wrap at spaces ("1,234 (12%)" over two lines) rather than scroll or clip */
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; max-width: 100%; }
th, td { border-bottom: 1px solid var(--rule); padding: 3px 8px; text-align: left; white-space: normal;
         overflow-wrap: break-word; }
td.wrap { overflow-wrap: anywhere; }  /* file lists and paths: break anywhere rather than widen the table */
th { background: var(--bg); font-weight: 600; white-space: normal; vertical-align: bottom; }
td.num, th.num { text-align: right; }
td.wrap, th.wrap { white-space: normal; }
.note { border-left: 4px solid #c9a227; background: #fbf6e3; padding: 6px 12px; margin: 10px 0; font-size: 14px; }
.warning { border-left-color: #c0392b; background: #fbeaea; }
details { margin: 8px 0 14px; }
summary { cursor: pointer; color: var(--accent); }
pre { background: #f3f4f6; border: 1px solid var(--rule); padding: 10px; white-space: pre-wrap;
      overflow-wrap: anywhere; font-size: 12.5px;
      line-height: 1.35; max-height: 480px; overflow-y: auto; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; font-size: 14px; margin: 8px 0; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; overflow-wrap: anywhere; }
@media print {
  body { background: #fff; font-size: 12px; }
  main { box-shadow: none; max-width: none; padding: 0; }
  details { display: block; }
  table { font-size: 10.5px; }
  th, td { padding: 2px 5px; }
  pre { white-space: pre-wrap; max-height: none; overflow: visible; }
  figure, .tablewrap { break-inside: avoid; }
}
"""


def png_bytes(fig, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes (Agg canvas), then closed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


class Page:
    """An HTML page built block by block; `render()` adds the head and a table of contents."""

    def __init__(self, title: str, meta: str = ""):
        self.title = title
        self.meta = meta
        self.blocks: list[str] = []
        self.toc: list[tuple[int, str, str]] = []  # (level, anchor, title)
        self._ids: set[str] = set()
        self.n_figures = 0
        self._toc_at: int | None = None  # index in blocks where the contents go (default: first)

    # --- blocks -------------------------------------------------------------------

    def heading(self, text: str, level: int = 2, toc: bool = True) -> str:
        anchor = _slug(text, self._ids)
        if toc:
            self.toc.append((level, anchor, text))
        self.blocks.append(f'<h{level} id="{anchor}">{html.escape(text)}</h{level}>')
        return anchor

    def toc_here(self) -> None:
        """Put the table of contents here (blocks added before it come first: the answer before the index)."""
        self._toc_at = len(self.blocks)

    def paragraph(self, text: str, css: str | None = None) -> None:
        cls = f' class="{css}"' if css else ""
        self.blocks.append(f"<p{cls}>{html.escape(text)}</p>")

    def note(self, text: str, warning: bool = False) -> None:
        self.blocks.append(f'<div class="note{" warning" if warning else ""}">{html.escape(text)}</div>')

    def bullets(self, items: list[str]) -> None:
        self.blocks.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def key_values(self, pairs: list[tuple[str, str]]) -> None:
        body = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in pairs)
        self.blocks.append(f'<dl class="kv">{body}</dl>')

    def figure(self, fig, caption: str, alt: str | None = None) -> None:
        data = base64.b64encode(png_bytes(fig)).decode("ascii")
        self.n_figures += 1
        alt = html.escape(alt or caption.split(".")[0], quote=True)
        self.blocks.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def table(self, df: pd.DataFrame, caption: str = "", wrap: tuple[str, ...] = ()) -> None:
        """A table of already formatted values (shown with str()); numeric columns are right-aligned.

        `wrap`: columns whose cells may wrap (long text); the others stay on one line.
        """
        cells = [[_cell(v) for v in col] for col in (df[c] for c in df.columns)]
        classes = []
        for c, values in zip(df.columns, cells):
            kinds = ["num"] if _numeric(values) else []
            kinds += ["wrap"] if c in wrap else []
            classes.append(f' class="{" ".join(kinds)}"' if kinds else "")
        head = "".join(f"<th{k}>{html.escape(str(c))}</th>" for c, k in zip(df.columns, classes))
        rows = []
        for i in range(len(df)):
            rows.append("<tr>" + "".join(f"<td{k}>{html.escape(col[i])}</td>" for col, k in zip(cells, classes))
                        + "</tr>")
        cap = f'<p class="caption">{html.escape(caption)}</p>' if caption else ""
        self.blocks.append(f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead>'
                           f"<tbody>{''.join(rows)}</tbody></table>{cap}</div>")

    def preformatted(self, text: str, summary: str, open_: bool = False) -> None:
        """Text in a <details> box (opens without scripts)."""
        self.blocks.append(f"<details{' open' if open_ else ''}><summary>{html.escape(summary)}</summary>"
                           f"<pre>{html.escape(text)}</pre></details>")

    # --- the page -------------------------------------------------------------------

    def _toc_html(self) -> str:
        groups: list[tuple[tuple[str, str], list[tuple[str, str]]]] = []
        for lv, anchor, text in self.toc:
            if lv <= 2 or not groups:
                groups.append(((anchor, text), []))
            elif lv == 3:
                groups[-1][1].append((anchor, text))
        link = lambda a, t: f'<a href="#{a}">{html.escape(t)}</a>'  # noqa: E731
        items = []
        for (anchor, text), subs in groups:
            sub = "<ol>" + "".join(f"<li>{link(a, t)}</li>" for a, t in subs) + "</ol>" if subs else ""
            items.append(f"<li>{link(anchor, text)}{sub}</li>")
        return '<nav class="toc"><strong>Contents</strong><ol>' + "".join(items) + "</ol></nav>"

    def render(self) -> str:
        meta = f'<div class="meta">{html.escape(self.meta)}</div>' if self.meta else ""
        at = self._toc_at or 0
        blocks = self.blocks[:at] + [self._toc_html()] + self.blocks[at:]
        return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                f"<title>{html.escape(self.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
                f"<h1>{html.escape(self.title)}</h1>\n{meta}\n"
                + "\n".join(blocks) + "\n</main>\n</body>\n</html>\n")


_NUMBER = re.compile(r"^\s*[+\-−]?[\d.,∞]")


def _numeric(values: list[str]) -> bool:
    shown = [v for v in values if v not in ("", "–")]
    return bool(shown) and sum(bool(_NUMBER.match(v)) for v in shown) >= 0.8 * len(shown)


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    return str(v)
