"""The report as one self-contained HTML page: the Markdown report (``hwq.study.markdown``)
rendered, with every figure embedded as a base64 PNG beside its caption. Nothing is fetched
when it opens (no scripts, fonts, style sheets or images from elsewhere), so it reads offline
and can be mailed as one file.

The renderer knows the Markdown the report writes and nothing more: headings, paragraphs,
bullet lists, pipe tables (``\\|`` inside a cell), ``<details>``/``<summary>`` lines, inline
code, links, and images. A figure (``![alt](fig.png)``, or a list item ``- [fig.png](fig.png): caption``)
becomes a ``<figure>`` with the PNG inline and its caption.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from hwq.errors import FileFormatError
from hwq.study.figures import caption

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; }
th { background: #f3f3f3; }
code { background: #f5f5f5; padding: 0 0.2rem; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9rem; color: #444; max-width: 60rem; }
"""

IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")
FIGURE_ITEM = re.compile(r"^- \[([^\]]+)\]\(([^)]+\.png)\)(?:: (.*))?$")
LINK = re.compile(r"\[([^\]]+)\]\(([^)]+)\)")
CODE = re.compile(r"`([^`]+)`")


def inline(text: str) -> str:
    """Escape ``text`` and render inline code and links (code spans are left as they are)."""
    parts = CODE.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{html.escape(part)}</code>")
        else:
            escaped = html.escape(part, quote=False)
            out.append(LINK.sub(lambda m: f'<a href="{html.escape(m[2])}">{m[1]}</a>', escaped))
    return "".join(out)


def table_cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
    return [c.strip().replace("\\|", "|") for c in cells]


def figure(path: str, folder: Path, text: str | None = None) -> str:
    """A ``<figure>`` with the PNG at ``folder/path`` inline (base64) and its caption."""
    file = folder / path
    try:
        data = file.read_bytes()
    except OSError:
        raise FileFormatError(f"{file}: the report's figure is missing") from None
    encoded = base64.b64encode(data).decode("ascii")
    name = html.escape(Path(path).name)
    return (f'<figure id="{html.escape(Path(path).stem)}"><img alt="{name}" '
            f'src="data:image/png;base64,{encoded}">'
            f"<figcaption><b>{name}</b>: {inline(text or caption(Path(path)))}</figcaption></figure>")


def render(markdown_text: str, folder: Path, title: str = "hwq report") -> str:
    """The Markdown report as an HTML page with the figures under ``folder`` embedded."""
    body: list[str] = []
    para: list[str] = []
    items: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if para:
            body.append("<p>" + " ".join(inline(p) for p in para) + "</p>")
            para.clear()
        if items:
            body.append("<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
            items.clear()
        if rows:
            head, *rest = rows
            body.append("<table><thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr></thead>"
                        "<tbody>" + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>"
                                            for r in rest) + "</tbody></table>")
            rows.clear()

    for line in markdown_text.splitlines():
        stripped = line.strip()
        if not stripped:
            flush()
        elif stripped.startswith("#"):
            flush()
            level = len(stripped) - len(stripped.lstrip("#"))
            body.append(f"<h{level}>{inline(stripped[level:].strip())}</h{level}>")
        elif stripped.startswith("<details>") or stripped.startswith("</details>"):
            flush()
            body.append(stripped)  # the report's own fold markers (fixed text)
        elif stripped.startswith("|"):
            if not re.fullmatch(r"\|(-+\|)+", stripped):
                rows.append(table_cells(stripped))
        elif m := IMAGE.match(stripped):
            flush()
            body.append(figure(m[2], folder))
        elif m := FIGURE_ITEM.match(stripped):
            flush()
            body.append(figure(m[2], folder, m[3]))
        elif stripped.startswith("- "):
            items.append(inline(stripped[2:]))
        else:
            para.append(stripped)
    flush()
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
