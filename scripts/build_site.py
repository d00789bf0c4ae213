#!/usr/bin/env python
"""`make site`: the course as a website, built from the notebooks' stored outputs into ``site/``.

    python scripts/build_site.py            # build site/ (about a minute on 2 cores)
    python scripts/build_site.py --check    # build, then fail on any broken internal link or image

Sphinx with MyST-NB renders every notebook in teaching order with its stored (full-mode,
tested) outputs; nothing is executed. The sources are staged in ``build/site_src/``:

* ``index.md`` — what the course is, and the course map: the same table as the README's,
  rendered by ``scripts/update_readme.py`` from the same reports;
* ``setup.md`` — the README's sections on installing, testing, GPUs and data;
* ``instructor_guide.md`` — ``docs/instructor_guide.md``;
* ``notebooks/NN_*.ipynb`` — copies of the notebooks, each opened by a link to download the
  original ``.ipynb`` and run it.

Sphinx runs with warnings as errors: a broken cross-reference, an image it cannot read or a page
missing from the navigation fails the build. Then every ``href``/``src`` of every page is
checked against the files of the site, and each figure gets the alt text its notebook stored
(the figure's title).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import update_readme  # noqa: E402

SRC = REPO / "build" / "site_src"
OUT = REPO / "site"
SETUP_SECTIONS = ("Quickstart", "GPU or no GPU", "Fast mode and full mode", "Layout", "Data", "Licence")


def notebooks() -> list[Path]:
    return sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def readme_sections() -> dict[str, str]:
    """The README's ``## `` sections by heading (the intro under the title is ``""``)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    body = text.split("\n", 1)[1]
    parts = re.split(r"^## (.+)$", body, flags=re.M)
    sections = {"": parts[0].strip()}
    for heading, content in zip(parts[1::2], parts[2::2], strict=True):
        sections[heading.strip()] = content.strip()
    return sections


def _site_links(markdown: str) -> str:
    """README links point into the repository; on the site, notebooks are pages and files are
    downloads (anything else outside the site becomes plain text)."""
    def fix(match: re.Match[str]) -> str:
        label, target = match.group(1), match.group(2)
        if target.startswith(("http://", "https://", "#", "mailto:")):
            return match.group(0)
        if target.startswith("notebooks/") and target.endswith(".ipynb"):
            return f"[{label}]({target})"
        if target.endswith((".md", ".ipynb")) and (SRC / target).exists():
            return f"[{label}]({target})"
        return label  # a file of the repository (CONTRIBUTING.md, reports/...): named, not linked
    return re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", fix, markdown)


def course_map() -> str:
    """The README's table, rendered from the same reports by the same function."""
    return update_readme.course_map()


def stage() -> None:
    shutil.rmtree(SRC, ignore_errors=True)
    (SRC / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / "docs" / "site" / "conf.py", SRC / "conf.py")
    for path in notebooks():
        nb = json.loads(path.read_text(encoding="utf-8"))
        download = {
            "cell_type": "markdown",
            "id": "download-this-notebook",
            "metadata": {},
            "source": [f"{{download}}`Download {path.name} <{path.name}>` and run it with `make lab` "
                       "(see [Setup](../setup.md)); what you read here are its stored full-mode outputs.\n"],
        }
        # after the title cell, so the notebook's first heading stays the page title
        nb["cells"] = nb["cells"][:1] + [download] + nb["cells"][1:]
        # Progress bars are Jupyter widgets; rendering them live would load widget JavaScript
        # from a CDN. The site shows their final text instead, and works offline.
        nb["metadata"].pop("widgets", None)
        for cell in nb["cells"]:
            for output in cell.get("outputs", []):
                output.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
        (SRC / "notebooks" / path.name).write_text(json.dumps(nb, ensure_ascii=False), encoding="utf-8")
    sections = readme_sections()
    toc = "\n".join(f"notebooks/{p.stem}" for p in notebooks())
    index = (
        "# Attention Mechanisms, from Scratch to Scale\n\n"
        f"{_site_links(sections[''])}\n\n"
        "## Course map\n\n"
        f"{_site_links(sections.get('Course map', '').split('<!-- course-map:start -->')[0].strip())}\n\n"
        "<!-- course-map:start -->\n"
        f"{_site_links(course_map())}\n"
        "<!-- course-map:end -->\n\n"
        "Start with [Setup](setup.md), then notebook 00.\n\n"
        "```{toctree}\n:caption: Start here\n:maxdepth: 1\n\nsetup\ninstructor_guide\n```\n\n"
        "```{toctree}\n:caption: The notebooks\n:maxdepth: 1\n\n" + toc + "\n```\n"
    )
    (SRC / "index.md").write_text(index, encoding="utf-8")
    setup = "# Setup\n\n" + "\n\n".join(f"## {h}\n\n{_site_links(sections[h])}" for h in SETUP_SECTIONS if h in sections)
    (SRC / "setup.md").write_text(setup + "\n", encoding="utf-8")
    guide = (REPO / "docs" / "instructor_guide.md").read_text(encoding="utf-8")
    guide = re.sub(r"\]\(\.\./notebooks/", "](notebooks/", guide)
    (SRC / "instructor_guide.md").write_text(_site_links(guide), encoding="utf-8")


def build(jobs: str = "2") -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", "-j", jobs,
           "-d", str(REPO / "build" / "site_doctrees"), str(SRC), str(OUT)]
    result = subprocess.run(cmd, cwd=REPO)
    if result.returncode:
        raise SystemExit(f"the site build failed (warnings are errors): see the messages above; command: {' '.join(cmd)}")


def figure_alt_texts() -> dict[str, str]:
    """sha256 of each stored PNG -> its alt text: the figure's title stored with the output, or
    the notebook and the cell it comes from. MyST-NB names each image file by this hash."""
    alts: dict[str, str] = {}
    for path in notebooks():
        nb = json.loads(path.read_text(encoding="utf-8"))
        title = "".join(nb["cells"][0]["source"]).splitlines()[0].lstrip("# ")
        figure = 0
        for cell in nb["cells"]:
            for output in cell.get("outputs", []):
                data = output.get("data", {}).get("image/png")
                if not data:
                    continue
                figure += 1
                digest = hashlib.sha256(base64.b64decode("".join(data) if isinstance(data, list) else data)).hexdigest()
                alt = output.get("metadata", {}).get("image/png", {}).get("alt")
                alts[digest] = alt or f"Figure {figure} of notebook {title}"
    return alts


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and ((tag == "a" and name == "href") or (tag in {"img", "script"} and name == "src")
                          or (tag == "link" and name == "href")):
                self.links.append((tag, value))


def check_links() -> list[str]:
    """Every internal href/src of every page names a file of the site (fragments are not checked)."""
    problems = []
    for page in sorted(OUT.rglob("*.html")):
        if page.relative_to(OUT).parts[0] == "_static":
            continue  # the theme's template snippets, not pages
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        for tag, link in parser.links:
            parts = urlsplit(link)
            if parts.scheme in {"http", "https", "mailto", "data", "javascript"} or parts.netloc or not parts.path:
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                problems.append(f"{page.relative_to(OUT)}: <{tag}> {link} -> missing {target.relative_to(OUT.resolve()) if target.is_relative_to(OUT.resolve()) else target}")
    return problems


def set_alt_texts() -> int:
    """Give every figure its alt text (MyST-NB leaves the file name there)."""
    alts = figure_alt_texts()
    count = 0
    for page in OUT.joinpath("notebooks").glob("*.html"):
        text = page.read_text(encoding="utf-8")

        def fix(match: re.Match[str]) -> str:
            nonlocal count
            tag, src = match.group(0), match.group(1)
            digest = Path(src).stem.split("-")[0]
            if digest not in alts:
                return tag
            count += 1
            tag = re.sub(r'\salt="[^"]*"', "", tag)
            return tag.replace("<img ", f'<img alt="{html.escape(alts[digest], quote=True)}" ', 1)
        page.write_text(re.sub(r'<img [^>]*src="([^"]+\.png)"[^>]*>', fix, text), encoding="utf-8")
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail on a broken internal link or image")
    parser.add_argument("--jobs", default="2", help="Sphinx processes")
    args = parser.parse_args()
    start = time.perf_counter()
    stage()
    build(args.jobs)
    figures = set_alt_texts()
    problems = check_links()
    print(f"site/ built in {time.perf_counter() - start:.0f} s: {len(notebooks())} notebooks, {figures} figures; "
          f"open site/index.html (or serve it: python -m http.server -d site)")
    if problems:
        print(f"{len(problems)} broken internal links or images:\n" + "\n".join(problems[:50]), file=sys.stderr)
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
