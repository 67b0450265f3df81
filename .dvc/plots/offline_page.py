"""Write .dvc/plots/offline.html, the page `dvc plots show` and `dvc plots diff` fill with charts
(`plots.html_template` in .dvc/config): DVC's own page, with Vega, Vega-Lite and vega-embed
inside it, from the versions package.json pins, instead of DVC's <script> tags that fetch them
from a CDN. The page then draws every chart offline, and can be sent or archived as one file.

    npm ci --prefix .dvc/plots && python .dvc/plots/offline_page.py     (what `make` runs)

`make` then names the page in .dvc/config.local. Without it (no npm, or `make` never ran), DVC
uses its own page, which loads the libraries from their CDN.
"""

from pathlib import Path

HERE = Path(__file__).parent
LIBRARIES = ["vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js",
             "vega-embed/build/vega-embed.min.js"]
# DVC fills {plot_divs}, {refresh_tag} and {scripts}, its <script> tags that load the libraries
# from a CDN: replaced here by the libraries themselves.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC plots</title>
{scripts}
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def inline_scripts():
    """The libraries as <script> elements."""
    scripts = []
    for library in LIBRARIES:
        path = HERE / "node_modules" / library
        if not path.is_file():
            raise SystemExit(f"{library} is not installed: npm ci --prefix .dvc/plots")
        code = path.read_text(encoding="utf-8")
        if "</script" in code:  # would end the inline <script> early
            raise SystemExit(f"{library} holds '</script': it cannot be inlined")
        scripts.append(f"    <script>{code}</script>")
    return "\n".join(scripts)


def main():
    page = PAGE.replace("{scripts}", inline_scripts())
    target = HERE / "offline.html"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
