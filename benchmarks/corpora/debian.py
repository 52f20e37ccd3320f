"""debian-sections: the first line of each Debian package's ``Description:``, labelled by its archive ``Section:``."""
from __future__ import annotations

import glob
import os
import re
import subprocess
from pathlib import Path

from benchmarks.corpora.inputs import APT_UPDATE, MissingInput, Raw

APT_LISTS = "/var/lib/apt/lists"
APT_HELPER = "/usr/lib/apt/apt-helper"

# Words that give a section away beyond its own name (packaging flavour or language name).
DEBIAN_ALIASES = {
    "libdevel": ["development", "dev", "devel", "header", "headers", "static library"],
    "doc": ["documentation", "docs", "manual", "reference manual", "user guide"],
    "debug": ["debugging", "debug symbols", "dbg", "symbols"],
    "golang": ["go"],
    "gnu-r": ["gnu r", "r package", "cran"],
    "rust": ["crate", "crates", "cargo"],
    "python": ["python3", "python 3", "py"],
    "ruby": ["gem", "rails"],
    "javascript": ["js", "node", "nodejs", "node.js", "npm"],
    "ocaml": ["coq"],
    "lisp": ["emacs", "elisp", "common lisp"],
    "php": ["pear", "php-pear"],
    "fonts": ["font", "typeface", "truetype", "opentype"],
    "localization": ["language package", "language pack", "translation", "translations", "locale"],
    "introspection": ["gir", "gobject introspection", "typelib"],
    "kde": ["plasma", "kf5", "kde frameworks"],
    "gnome": ["gnome shell"],
    "xfce": ["xfce4"],
    "tex": ["latex", "tex live", "texlive"],
    "cli-mono": ["mono", ".net", "cli"],
    "metapackages": ["metapackage", "meta-package", "meta"],
    "mail": ["email", "e-mail"],
    "games": ["game"],
    "sound": ["audio"],
    "web": ["website", "webserver", "web server"],
    "database": ["sql"],
    "x11": ["x window", "x server"],
    "oldlibs": ["transitional", "dummy package"],
}

# A trailing "(development files)", "[debug]", " - documentation", "; data files" names the
# package's flavour (library, headers, docs, data) rather than what it is about, and would
# make the same software look like different texts in libs / libdevel / doc. It is cut.
_FLAVOUR_TAIL = re.compile(r"(\s*[\(\[][^()\[\]]*[\)\]]\s*|\s+(?:-{1,2}|–|—|:|;)\s+[^-–—:;]{1,40})$")


def _apt_list_files() -> list[str]:
    files = sorted(
        f for f in glob.glob(os.path.join(APT_LISTS, "*_Packages*")) if not f.endswith((".diff_Index", ".IndexDiff"))
    )
    return [f for f in files if "/partial/" not in f]


def _read_list(path: str) -> str:
    if path.endswith(("_Packages",)):
        return Path(path).read_text(encoding="utf-8", errors="replace")
    if not os.path.exists(APT_HELPER):
        raise MissingInput(f"{APT_HELPER} (to decompress {path})", [["apt-get", "install", "-y", "apt"]])
    out = subprocess.run([APT_HELPER, "cat-file", path], capture_output=True, check=True)
    return out.stdout.decode("utf-8", errors="replace")


def _release_dates() -> list[str]:
    dates = []
    for f in sorted(glob.glob(os.path.join(APT_LISTS, "*InRelease")) + glob.glob(os.path.join(APT_LISTS, "*_Release"))):
        for line in Path(f).read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Date:"):
                dates.append(f"{Path(f).name.split('_dists_')[-1].replace('_InRelease', '').replace('_Release', '')}: {line[5:].strip()}")
                break
    return dates


def build_debian() -> Raw:
    """The (synopsis, section) rows of every binary package in apt's lists, flavour tails cut."""
    files = _apt_list_files()
    if not files:
        raise MissingInput(f"apt's package lists ({APT_LISTS}/*_Packages*)", [APT_UPDATE])
    packages: dict[str, tuple[str, str]] = {}
    for path in files:
        for stanza in _read_list(path).split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.split("\n"):
                if line and not line[0].isspace() and ":" in line:
                    key, _, value = line.partition(":")
                    fields[key] = value.strip()
            name, desc, section = fields.get("Package"), fields.get("Description"), fields.get("Section")
            if not (name and desc and section) or name in packages:
                continue
            packages[name] = (desc, section.split("/")[-1])  # contrib/net -> net
    rows = []
    for name in sorted(packages):
        desc, section = packages[name]
        text = desc
        for _ in range(2):  # "X (library) - dev" -> "X"
            text = _FLAVOUR_TAIL.sub("", text).strip()
        rows.append((text, section))
    lists = ", ".join(Path(f).name for f in files)
    dates = "; ".join(_release_dates()) or "release date unknown"
    source = f"apt package lists {lists} ({len(packages)} binary packages; {dates})"
    return Raw(rows, source, DEBIAN_ALIASES)
