"""OpenClipArt 0.18 (Debian ``openclipart-svg``) as an optional extra pre-training source (``--with-clipart``).

Captions come from each SVG's RDF metadata (``<cc:Work>``: ``dc:title``, ``dc:subject`` keywords). The text is noisy
(author names, collection names, generic "card"/"gramastar" titles), so the filter of ``docs/DATA.md`` is applied:
drop the ``shapes`` and ``special`` categories (1.6k stars, jigsaw pieces, gradients) and every title used more than
3 times, which leaves about 2,800 items with specific titles.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .common import ImageItem

SVG_DIR = "usr/share/openclipart/svg"
EXCLUDED_CATEGORIES = ("shapes", "special")
MAX_TITLE_USES = 3
_WORK = re.compile(r"<cc:Work.*?</cc:Work>", re.S)
_TITLE = re.compile(r"<dc:title>([^<]*)")
_KEYWORD = re.compile(r"<rdf:li>([^<]*)")
_BY_PREFIX = re.compile(r"^\s*clip\s*art by [^-]+-\s*", re.I)  # "Clipart by Nicu Buculei - rooster" → "rooster"
_JUNK_KEYWORD = re.compile(r"^(hash(\(0x[0-9a-f]+\))?|0x[0-9a-f]+|\d+)$", re.I)


@dataclass(frozen=True)
class Clip:
    """One SVG with its cleaned metadata."""

    path: Path
    category: str
    title: str
    keywords: tuple[str, ...]


def clean_title(raw: str) -> str:
    """Unescape, drop a "Clipart by <author> - " prefix, turn ``_`` into spaces and collapse white space."""
    t = _BY_PREFIX.sub("", html.unescape(raw))
    return " ".join(t.replace("_", " ").split())


def clean_keywords(raw: list[str], title: str) -> tuple[str, ...]:
    """Keywords without empties, ``hash(0x…)`` artefacts and numbers; ``_`` → space; no duplicates."""
    out = []
    for k in raw:
        k = " ".join(html.unescape(k).replace("_", " ").split()).lower()
        if k and not _JUNK_KEYWORD.match(k) and k != title.lower():
            out.append(k)
    return tuple(dict.fromkeys(out))


def parse_svg(path: Path, svg_root: Path) -> Clip:
    """Read the ``<cc:Work>`` metadata of one SVG (title and keywords may be empty)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    work = _WORK.search(text)
    block = work.group(0) if work else ""
    title = _TITLE.search(block)
    clean = clean_title(title.group(1)) if title else ""
    rel = path.relative_to(svg_root)
    return Clip(path, "/".join(rel.parts[:-1]), clean, clean_keywords(_KEYWORD.findall(block), clean))


def scan(svg_root: Path) -> tuple[list[Clip], dict[str, int]]:
    """All real SVG files (the package's symlinks are duplicates of other files and are skipped) and the filter.

    Returns:
        (kept clips sorted by path, counts: files, symlinks, excluded_category, no_title, repeated_title, kept).
    """
    clips, links = [], 0
    for dirpath, _, files in os.walk(svg_root):
        for f in sorted(files):
            p = Path(dirpath) / f
            if not f.endswith(".svg"):
                continue
            if p.is_symlink():
                links += 1
                continue
            clips.append(parse_svg(p, svg_root))
    uses = Counter(c.title.lower() for c in clips)
    stats = Counter()
    kept = []
    for c in sorted(clips, key=lambda c: str(c.path)):
        if c.category.split("/")[0] in EXCLUDED_CATEGORIES:
            stats["excluded_category"] += 1
        elif sum(ch.isalpha() for ch in c.title) < 3:
            stats["no_title"] += 1
        elif uses[c.title.lower()] > MAX_TITLE_USES:
            stats["repeated_title"] += 1
        else:
            kept.append(c)
    return kept, {"files": len(clips), "symlinks": links, **stats, "kept": len(kept)}


def pretrain_items(svg_root: Path) -> tuple[list[ImageItem], dict[str, int]]:
    """Pre-training items: caption = cleaned title; ``json`` keeps keywords and the category path."""
    clips, stats = scan(svg_root)
    items = []
    for i, c in enumerate(clips):
        info = {
            "source": "openclipart",
            "style": "clipart",
            "title": c.title,
            "keywords": list(c.keywords),
            "category": c.category.replace("_", " "),
            "file": str(c.path.relative_to(svg_root)),
        }
        items.append(
            ImageItem(
                f"clipart_{i:05d}",
                str(c.path),
                "clipart",
                (("txt", c.title), ("json", json.dumps(info, ensure_ascii=False))),
                trim=True,
            )
        )
    return items, stats
