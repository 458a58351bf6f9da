"""Results → report: Jinja templates write report/*.qmd; Quarto, or pandoc + typst, build _site/.

The templates hold the words; this module hands them finished numbers (through
formatting filters) and data-derived strings, which are escaped for markdown
automatically (Jinja `finalize`), so a category called `<script>` is text in the
HTML and the PDF, never markup. Where `quarto` is on PATH it renders the project;
else the built-in renderer reads _quarto.yml and renders the same pages with
pandoc (HTML, and typst for one PDF).
"""

from __future__ import annotations

import functools
import hashlib
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import yaml
from markupsafe import Markup

from .. import SegreportError, __version__
from ..lib import personas
from . import tracking_page
from . import figures as F
from ..stages.compare import segment_rates
from ..core.config import params_to_dict
from .downloads import csv_text, run_ref, write_downloads
from ..methods import REGISTRY, get
from ..core.number_format import num
from ..stages.prepare import projection_space, run_dir
from ..core.resources import QUARTO_PROJECT, TEMPLATES
from ..core.store import (DONE, LABELS, METRICS, NOTEBOOK, PERSONAS, PROFILE, SHAP, RunLayout, atomic_copy, atomic_folder,
                    atomic_write_bytes, atomic_write_json, atomic_write_text, cell_id, copy_tree, file_record, key,
                    make_folder, read_json, read_json_or_empty, say_damaged, sha256_file, verify, writing)

METHOD_TITLES = {name: m.display for name, m in REGISTRY.items()}
PAGES = ["index", *REGISTRY, "personas", "comparison", "appendix"]
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>&\"'~^$%@:;=/?,])")


# --------------------------------------------------------------------------- escaping + filters


def md_escape(value) -> str:
    """Data-derived text as literal markdown: every ASCII punctuation backslash-escaped."""
    s = " ".join(str(value).split())
    return _MD_SPECIAL.sub(r"\\\1", s)


def _finalize(value):
    if isinstance(value, Markup) or value is None:
        return "" if value is None else value
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return Markup(num(value))
    return Markup(md_escape(value))


class _BytecodeCache(jinja2.FileSystemBytecodeCache):
    """Jinja's compiled templates on disk; a full disk while one is written said naming its file (Jinja
    removes its temporary file, and raises the OSError bare)."""

    def dump_bytecode(self, bucket) -> None:
        with writing(self._get_cache_filename(bucket)):
            super().dump_bytecode(bucket)


def make_env(cache_dir: Path | None = None) -> jinja2.Environment:
    """The pages' Jinja environment. `cache_dir`: where compiled templates are kept between renders, in a
    folder named by this module's code (the environment's options): Jinja recompiles a template whose
    source changed, and a change of this module starts a new folder (the others are removed)."""
    cache = None
    if cache_dir is not None:
        folder = Path(cache_dir) / f"jinja-{sha256_file(__file__)[:16]}"
        for old in Path(cache_dir).glob("jinja-*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
        cache = _BytecodeCache(str(make_folder(folder)))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, finalize=_finalize, autoescape=False,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             bytecode_cache=cache)
    env.filters["pct"] = lambda v, d=0: Markup("–" if v is None else f"{100 * float(v):.{d}f}%")
    env.filters["num"] = lambda v, d=None: Markup(num(v, d))
    env.filters["f3"] = lambda v: Markup("–" if v is None else f"{float(v):.3f}")
    env.filters["times"] = lambda v: Markup("–" if v is None else f"{float(v):.1f}x")
    env.filters["secs"] = lambda v: Markup("–" if v is None else (f"{float(v):.1f} s" if v < 120 else f"{float(v) / 60:.1f} min"))
    env.filters["md"] = lambda v: Markup(md_escape(v))
    env.filters["digest"] = lambda v: Markup(" ".join(str(v)[i:i + 8] for i in range(0, len(str(v)), 8)))  # wraps
    env.filters["day"] = lambda v: Markup("–" if not v else md_escape(str(v)[:10]))  # an ISO time's date
    env.filters["seg"] = lambda s: Markup(F.seg_name(s))
    env.filters["code"] = lambda v: Markup("`" + str(v).replace("`", "") + "`")  # literal inside a code span
    env.filters["strip_comments"] = lambda s: re.sub(r"\{#.*?#\}\s*", "", str(s), flags=re.S).strip()
    return env


# --------------------------------------------------------------------------- figures


def pdf_width_cm(png: Path, text_width: float = 17.0, max_height: float = 21.0) -> float:
    """A figure's width on the A4 page: its own size (the PNG is drawn at 2x, 96 dpi), at most the text
    width, and narrower where it would be taller than `max_height` cm."""
    from PIL import Image

    with Image.open(png) as im:
        w, h = im.size
    natural = w / 2 / 96 * 2.54
    return max(4.0, min(text_width, natural, max_height * w / h))


def fingerprint(obj, h=None):
    """sha256 of a figure's inputs, exactly: frames and arrays by their bytes (numbers) or reprs (text),
    containers in order, functions by name. TypeError for anything else (the figure is then drawn)."""
    h = h or hashlib.sha256()
    if isinstance(obj, pd.DataFrame):
        h.update(b"D%d" % len(obj))
        fingerprint(obj.index, h)
        for name in obj.columns:
            fingerprint(name, h)
            fingerprint(obj[name], h)
    elif isinstance(obj, (pd.Series, pd.Index)):
        h.update(f"S{obj.dtype}".encode())
        fingerprint(obj.to_numpy(), h)
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype}{obj.shape}".encode())
        if obj.dtype.kind in "biuf":
            h.update(np.ascontiguousarray(obj).tobytes())
        else:
            for v in obj.ravel().tolist():
                fingerprint(v, h)
    elif isinstance(obj, dict):
        h.update(b"{%d" % len(obj))
        for k, v in obj.items():
            fingerprint(k, h)
            fingerprint(v, h)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        h.update(f"{type(obj).__name__}{len(obj)}".encode())
        for v in items:
            fingerprint(v, h)
    elif obj is None or isinstance(obj, (str, bool, int, float, np.generic)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif callable(obj) and hasattr(obj, "__qualname__"):
        h.update(f"F{obj.__module__}.{obj.__qualname__};".encode())
    else:
        raise TypeError(f"no fingerprint for {type(obj).__name__}")
    return h


@functools.lru_cache(maxsize=None)
def _figure_code() -> str:
    """What a figure's spec and PNG depend on besides its inputs: figures.py and the drawing packages."""
    from importlib import metadata

    # personas.format_value: the numbers a heatmap writes
    return "|".join([sha256_file(F.__file__), sha256_file(personas.__file__)]
                    + [metadata.version(p) for p in ("altair", "vl-convert-python")])


class FigureWriter:
    """Writes a figure's Vega-Lite JSON and PNG under report/figures and returns its markdown.

    `chart` is an altair chart, or a `functools.partial` of a figures.py function and its inputs:
    then the chart is drawn only where those inputs (or figures.py, altair, vl-convert) changed since
    the last render, else the spec and PNG of report/figures are reused (<name>.inputs.sha256)."""

    def __init__(self, report_dir: Path):
        self.dir = report_dir / "figures"
        make_folder(self.dir)
        self.written: list[str] = []

    def __call__(self, name: str, chart, caption: str, key: dict | None = None) -> Markup:
        """`key`: segment number -> persona name, written under the figure (charts name segments by code)."""
        png_path = self.dir / f"{name}.png"
        stamp = self.dir / f"{name}.vl.json"
        inputs = self.dir / f"{name}.inputs.sha256"
        spec_json = None
        digest = None
        if isinstance(chart, functools.partial):
            try:
                h = fingerprint([chart.func, chart.args, chart.keywords])
                h.update(_figure_code().encode())
                digest = h.hexdigest()
            except TypeError:
                pass
            if (digest is not None and inputs.exists() and png_path.exists() and stamp.exists()
                    and inputs.read_text() == digest):
                spec_json = stamp.read_text()
            else:
                chart = chart()
        if spec_json is None:
            inputs.unlink(missing_ok=True)
            spec = F.to_spec(chart)
            spec_json = F.spec_json_for_html(spec)
            if not (stamp.exists() and png_path.exists() and stamp.read_text() == spec_json):
                atomic_write_bytes(png_path, F.to_png(spec))
                atomic_write_text(stamp, spec_json)
            if digest is not None:
                atomic_write_text(inputs, digest)
        self.written.append(name)
        cap = md_escape(caption)
        width = pdf_width_cm(png_path)
        html_key, pdf_key = segment_key(key)
        block = (
            f"```{{=html}}\n<figure class=\"vega-figure\"><div class=\"vega-chart\" id=\"fig-{name}\"></div>"
            f"<script type=\"application/json\" class=\"vega-spec\" data-target=\"fig-{name}\">{spec_json}</script>"
            f"{html_key}<figcaption>{html.escape(caption)}</figcaption></figure>\n```\n\n"
            f"::: {{.content-visible when-format=\"pdf\"}}\n![{cap}{pdf_key}](figures/{name}.png){{width={width:.1f}cm}}\n"
            ":::\n"
        )
        return Markup(block)


def segment_key(names: dict | None) -> tuple[str, str]:
    """The key under a figure whose chart names segments by code: (HTML, markdown for the PDF's caption, which
    travels with the figure). Each code with its colour and its full persona name, which may wrap: a name is
    never cut."""
    if not names:
        return "", ""
    items = sorted((int(s), str(n)) for s, n in names.items() if n)
    if not items:
        return "", ""
    html_items = "".join(
        f'<li><span class="swatch" style="display:inline-block;width:.8em;height:.8em;margin-right:.35em;'
        f'background:{F.PALETTE[s % len(F.PALETTE)]}"></span><b>{F.seg_name(s)}</b> {html.escape(n)}</li>'
        for s, n in items)  # inline styles: the key reads the same in Quarto's theme
    pdf = "; ".join(f"**{F.seg_name(s)}** {md_escape(n)}" for s, n in items)
    return (f'<ul class="segment-key" aria-label="segments" style="list-style:none;padding-left:0">{html_items}</ul>',
            f" Segments: {pdf}.")


# --------------------------------------------------------------------------- the view model


def _load_cells(layout: RunLayout, ctx: dict, manifest: dict) -> dict:
    cells = {}
    for method in ctx["methods"]:
        grid = get(method).grid
        for v in ctx["grid"][method]:
            name = f"{method}/{cell_id(v, grid)}"
            st = manifest.get("cells", {}).get(name, {"status": "missing"})
            d = layout.cell(method, v, grid)
            cell = {"method": method, "value": v, "k": v, "grid_label": get(method).grid_label,
                    "status": st.get("status"), "error": st.get("error"),
                    "wall_seconds": st.get("wall_seconds"), "notebook": f"notebooks/{method}-{cell_id(v, grid)}",
                    "notebook_name": f"{method}-{cell_id(v, grid)}", "metrics": None, "personas": None, "shap": None}
            if st.get("status") == "done" and (d / METRICS).exists():
                cell.update(metrics=layout.read_metrics(method, v, grid), personas=read_json(d / PERSONAS),
                            shap=read_json(d / SHAP))
                cell["k"] = cell["metrics"]["k"]
            cells[(method, v)] = cell
    return cells


def build_pages(layout: RunLayout, report_dir: Path) -> dict:
    """Write report/*.qmd (and figures, notebooks) from the run's results. Returns page facts."""
    ctx = layout.read_context()
    manifest = read_json(layout.manifest)
    comparison = layout.read_comparison()
    table = pd.read_parquet(layout.metrics_table)
    params = ctx["params"]
    cells = _load_cells(layout, ctx, manifest)
    fig = FigureWriter(report_dir)
    env = make_env(report_dir / ".cache")
    labels_of = ctx["labels"]
    seed = params["seed"]
    projections = {name: pd.read_parquet(layout.projection(name)) for name in
                   {projection_space(m) for m in ctx["methods"]} | {"mca"}}
    proj_info = ctx["projections"]
    methods = []
    for method, meth in REGISTRY.items():
        title = meth.display
        base = {"key": method, "title": title, "grid": meth.grid, "grid_label": meth.grid_label,
                "cost_name": meth.cost_name, "euclidean": meth.euclidean, "summary": meth.summary,
                "kmeans_based": meth.algorithm.startswith("K-means"), "about": f"pages/about/{method}.md.j2"}
        if method not in ctx["methods"]:
            methods.append({**base, "ran": False, "skipped": ctx.get("skipped", {}).get(method)})
            continue
        rec = comparison["recommended"][method]
        sub = table[table.method == method]
        done = sub[sub.status == "done"]
        v_star, k_star = rec["value"], rec["k"]
        chosen = cells.get((method, v_star)) or {"metrics": None, "personas": None, "shap": None}
        m = {**base, "ran": True, "rec": rec, "k": k_star, "value": v_star,
             "cells": [cells[(method, v)] for v in ctx["grid"][method]],
             "failed": [cells[(method, v)] for v in ctx["grid"][method] if cells[(method, v)]["status"] != "done"],
             "chosen": chosen, "space": ctx["spaces"][method], "params": params[method],
             "inputs": (ctx.get("inputs") or {}).get(method) or {},
             "extra": (comparison.get("extras") or {}).get(method),
             "choice": (comparison.get("choices") or {}).get(method)}
        x = "value" if meth.grid != "k" else "k"
        if len(done):
            m["fig_elbow"] = fig(f"{method}-elbow", partial(F.metric_lines,
                done.assign(k=done[x]), "cost", f"{meth.cost_name.capitalize()} against {meth.grid_label}",
                meth.cost_name, chosen=v_star, x_title=meth.grid_label),
                f"{title}: {meth.cost_name} for each {meth.grid_label} (dashed: recommended).")
            long = pd.concat([done.assign(space="own space", silhouette=done["own_silhouette"]),
                              done.assign(space="common space", silhouette=done["common_silhouette"])])
            m["fig_silhouette"] = fig(f"{method}-silhouette", partial(F.metric_lines,
                long.rename(columns={"space": "measured in"}).assign(k=long[x]), "silhouette",
                f"Silhouette against {meth.grid_label}", "silhouette", chosen=v_star, color_by="measured in",
                x_title=meth.grid_label),
                f"{title}: silhouette for each {meth.grid_label}, in the method's own space and in the common space.")
        if chosen.get("metrics"):
            lab = layout.cell_labels(method, v_star, meth.grid)
            space = projection_space(method)
            p, mca = projections[space], projections["mca"]
            coords = {"PCA": (p, "pca1", "pca2", "principal component 1", "principal component 2"),
                      "t-SNE": (p, "tsne1", "tsne2", "t-SNE 1", "t-SNE 2"),
                      "MCA": (mca, "mca1", "mca2", "MCA dimension 1", "MCA dimension 2")}
            n_fig = min(params["figure_sample"], len(p))
            names = F.persona_names(chosen["personas"])
            m["projection_sample"] = n_fig
            m["projection_info"] = proj_info.get(space, {})
            m["mca_info"] = proj_info.get("mca", {})
            m["fig_projections"] = fig(f"{method}-projections",
                                       partial(F.projections, coords, lab, k_star, n_fig, seed, names),
                                       f"{title}, k={k_star}: a seeded sample of {n_fig:,} customers "
                                       "drawn on PCA, t-SNE and MCA coordinates, coloured by segment.", key=names)
            m["fig_shap"] = fig(f"{method}-shap", partial(F.shap_heatmap, chosen["shap"]["mean_abs_shap"], labels_of,
                                                          k_star, names),
                                f"{title}, k={k_star}: mean |SHAP| of each column for the members "
                                f"of each segment, in log-odds of the surrogate model ({chosen['shap']['rows']:,} "
                                "sampled rows; the ten strongest columns).", key=names)
            m["fig_sizes"] = fig(f"{method}-sizes", partial(F.sizes_bar, chosen["personas"], k_star),
                                 f"{title}, k={k_star}: segment sizes.", key=names)
            prof = read_json(layout.cell(method, v_star, meth.grid) / PROFILE)
            units = ctx.get("units") or {}
            m["fig_profile"] = fig(f"{method}-profile", partial(F.profile_heatmap, prof, names, labels_of, units,
                                                                k_star, binary=set(ctx["used"]["binary"])),
                                   f"{title}, k={k_star}: each segment against the rest of the customers. Red: "
                                   "more than the rest, blue: less; the numbers are the segment's median or share.",
                                   key=names)
            if ctx["used"]["numeric"]:
                m["fig_distributions"] = fig(f"{method}-distributions",
                                             partial(F.distributions, prof, names, labels_of, units, k_star),
                                             f"{title}, k={k_star}: the middle half of each segment on each "
                                             "numeric column, beside all customers.", key=names)
        methods.append(m)
    ran = [m for m in methods if m["ran"]]
    common_fig = None
    done_all = table[table.status == "done"]
    if len(done_all):
        common_fig = fig("compare-common-silhouette", partial(F.metric_lines,
            done_all.assign(method=done_all.method.map(METHOD_TITLES)), "common_silhouette",
            "Silhouette in the common space", "silhouette", color_by="method",
            methods=[METHOD_TITLES[m] for m in ctx["methods"]]),
            "Every method's segments scored in the same (common) space, on the same rows, for each k.")
    agree_fig = None
    if comparison["agreement_chosen"]:
        agree_fig = fig("compare-agreement", partial(F.agreement_heatmap,
            [{**a, "a": METHOD_TITLES[a["a"]], "b": METHOD_TITLES[a["b"]]} for a in comparison["agreement_chosen"]]),
            "Adjusted Rand index between the methods' segmentations at their recommended k.")
    notebooks = export_notebooks(layout, report_dir, cells)
    outcome = outcome_info(layout, ctx, comparison)
    rates_of = _rates_reader(layout, outcome, comparison)
    for m in ran:  # the outcome per segment of each method's chosen k, on its cards
        rates = {r["segment"]: r for r in (rates_of(m["key"], m["value"]) or [])}
        for card in (m["chosen"].get("personas") or []):
            card["outcome"] = rates.get(card["segment"])
            relative_weights(card.get("drivers") or [])
    downloads = write_downloads(layout, report_dir, ctx, cells, outcome, rates_of,
                                bool(params.get("publish_assignments")))
    for m in ran:
        m["downloads"] = (downloads.get(f"{m['key']}-{cell_id(m['value'], m['grid'])}")
                          if m["value"] is not None else None)
        cards = m["chosen"].get("personas") or []
        if outcome and any(c.get("outcome") for c in cards):
            label = outcome["name"]
            m["fig_outcome"] = fig(f"{m['key']}-outcome", partial(F.outcome_bars, cards, m["k"], label,
                                                                  outcome["population_rate"]),
                                   f"{m['title']}, k={m['k']}: share of customers who {outcome['words']} in each segment, "
                                   "with its 95% interval; dashed: all customers.", key=F.persona_names(cards))
    rec_view = recommendation_view(comparison, cells, rates_of, downloads)
    view = {"rec_view": rec_view, "ctx": ctx, "params": params, "manifest": manifest, "data": ctx["data"], "methods": methods,
            "ran": ran, "comparison": comparison, "common_fig": common_fig, "agree_fig": agree_fig,
            "cells": list(cells.values()), "notebooks": notebooks, "labels": labels_of,
            "versions": ctx["versions"], "schema": ctx["schema"], "used": ctx["used"],
            "titles": METHOD_TITLES, "metrics_rows": table.to_dict(orient="records"), "outcome": outcome,
            "downloads": downloads, "run_ref": run_ref(layout),
            "reused": sum(1 for c in manifest.get("cells", {}).values() if c.get("reused")),
            "verdict_grid": verdict_grid((comparison.get("verdict") or {}).get("table") or []),
            "verdict_reasons": split_reasons((comparison.get("verdict") or {}).get("reasons") or [])}
    pages = {}
    for page in PAGES:
        if page in REGISTRY:
            m = next(x for x in methods if x["key"] == page)
            try:
                text = env.get_template("pages/method.qmd.j2").render(view, m=m)
            except jinja2.UndefinedError as exc:  # one method's odd results never take the report down
                print(f"segreport: the {m['title']} page lacks a result ({exc.message}); written as a short note",
                      file=sys.stderr)
                text = env.get_template("pages/method_error.qmd.j2").render(view, m=m, error=str(exc.message))
            if not m["ran"]:  # written (a link to it still works), left out of the navigation and the PDF
                text = text.replace("---\n", "---\nlisted: false\n", 1)
        else:
            text = env.get_template(f"pages/{page}.qmd.j2").render(view)
        text = lists_apart(text)
        pages[page] = text
        atomic_write_text(page_path(report_dir, page), text)
    atomic_write_text(page_path(report_dir, COVER), env.get_template("pages/cover.md.j2").render(view))
    if tracking_page.write_page(layout, page_path(report_dir, "tracking"), env, fig):  # only with snapshots
        pages["tracking"] = True
    export_csv(layout, report_dir, table)
    _clean_stale(report_dir / "figures", set(fig.written))
    return {"pages": list(pages), "figures": fig.written}


_LIST_ITEM = re.compile(r"^(?:[-*+]|\d+[.)]) ")


def lists_apart(text: str) -> str:
    """A blank line before each list that follows a paragraph line: pandoc reads "- item" right after
    a paragraph as part of that paragraph (the bullets then run on in one line). Fenced code is left as is."""
    out, fence, prev = [], False, ""
    for line in text.split("\n"):
        if line.startswith("```"):
            fence = not fence
        elif (not fence and _LIST_ITEM.match(line) and prev.strip() and not _LIST_ITEM.match(prev)
              and not prev.startswith((" ", "\t", "|", ":", "#", "<"))):
            out.append("")
        out.append(line)
        prev = line
    return "\n".join(out)


def recommendation_view(comparison: dict, cells: dict, rates_of, downloads: dict) -> dict | None:
    """The recommended (method, k) as the Overview shows it, whichever k its method's own rule chose: its
    persona cards with their outcome rates, its downloads, and each option's downloads."""
    rec = comparison.get("recommendation") or {}
    if not rec.get("method") or rec.get("value") is None:
        return {"personas": [], "metrics": None, "downloads": None, "options": []}
    grid = get(rec["method"]).grid
    cell = cells.get((rec["method"], rec["value"])) or {}
    rates = {r["segment"]: r for r in (rates_of(rec["method"], rec["value"]) or [])}
    cards = [{**c, "outcome": rates.get(c["segment"])} for c in (cell.get("personas") or [])]
    options = []
    for o in rec.get("options") or []:
        d = downloads.get(f"{o['method']}-{cell_id(o['value'], get(o['method']).grid)}") if o.get("value") is not None \
            else None
        options.append({**o, "downloads": d})
    return {"personas": cards, "metrics": cell.get("metrics"),
            "downloads": downloads.get(f"{rec['method']}-{cell_id(rec['value'], grid)}"), "options": options}


def relative_weights(drivers: list[dict]) -> None:
    """Each driver's mean |SHAP| (log-odds, a unit no reader knows) as a weight relative to the segment's
    strongest driver (100), which the persona card shows."""
    top = max((float(d.get("mean_abs_shap") or 0) for d in drivers), default=0.0)
    for d in drivers:
        d["relative"] = round(100 * float(d.get("mean_abs_shap") or 0) / top) if top > 0 else None


def split_reasons(reasons: list[str], longest: int = 200) -> dict:
    """The verdict's reasons as the Comparison shows them: the short ones as bullets, the long ones (a
    list of every criterion's winner) folded away under the table that holds the same facts."""
    return {"short": [r for r in reasons if len(r) <= longest], "long": [r for r in reasons if len(r) > longest]}


def verdict_grid(rows: list[dict]) -> dict:
    """The verdict's long table (method, k, criterion, value, best) as one row per (method, k) and one
    column per criterion, so each number appears once."""
    columns, grid = [], {}
    for r in rows:
        col = f"{r['measure']} ({r['space']})" if r.get("space") else r["measure"]
        if col not in columns:
            columns.append(col)
        cell = grid.setdefault((r["method"], r["k"]), {"method": r["method"], "k": r["k"], "values": {}})
        cell["values"][col] = {"value": r["value"], "best": bool(r.get("best"))}
    return {"columns": columns, "rows": sorted(grid.values(), key=lambda c: (c["k"], c["method"]))}


def outcome_info(layout: RunLayout, ctx: dict, comparison: dict) -> dict | None:
    """The outcome the report compares (never fitted): its column, positive level, overall rate, whether
    it was given or detected by its name."""
    oc = comparison.get("outcome")
    if not oc or not layout.outcome.exists():
        return None
    column, label = ctx["data"].get("outcome"), ctx["data"].get("outcome_label")
    # the outcome in words: its schema label ("Subscribed a term deposit"), else the column and its level
    name = label or f"{column} = {oc['positive']}"
    words = (label[:1].lower() + label[1:]) if label else f"have {column} = {oc['positive']}"
    return {"column": column, "source": ctx["data"].get("outcome_source") or "given", "label": label,
            "name": name, "words": words, "positive": oc["positive"], "population_rate": oc["population_rate"]}


def _rates_reader(layout: RunLayout, outcome: dict | None, comparison: dict | None = None):
    """(method, value) -> the outcome's rate, interval and lift per segment (compare.segment_rates). The
    recommended cells' rates are comparison.json's (compare computed them from the same labels and outcome,
    with the same function); others are computed on first use (scipy: only where a download is rewritten)."""
    if outcome is None:
        return lambda method, value: None
    known = {}
    for method, o in ((comparison or {}).get("outcome") or {}).get("methods", {}).items():
        rec = (comparison.get("recommended") or {}).get(method) or {}
        if o.get("rates") is not None and rec.get("value") is not None and rec.get("k") == o.get("k"):
            known[(method, rec["value"])] = o["rates"]

    @functools.lru_cache(maxsize=None)
    def positive() -> np.ndarray:
        return (pd.read_parquet(layout.outcome)["outcome"].astype(str).to_numpy() == outcome["positive"]).astype(float)

    @functools.lru_cache(maxsize=None)  # the chosen cells' rates serve both their cards and their downloads
    def rates(method: str, value: int | None) -> list[dict] | None:
        if value is None:  # a method without a finished recommended cell
            return None
        path = layout.cell(method, value, get(method).grid) / LABELS
        if not path.exists():
            return None
        if (method, value) in known:
            return known[(method, value)]
        return segment_rates(positive(), pd.read_parquet(path, columns=["segment"])["segment"].to_numpy())
    return rates


def _clean_stale(folder: Path, keep: set[str]) -> None:
    for f in folder.glob("*"):
        if f.name.split(".")[0] not in keep:
            f.unlink()


def export_csv(layout: RunLayout, report_dir: Path, table: pd.DataFrame) -> None:
    """Every cell's metrics, rounded for people (the exact values stay in results/<run>/comparison/metrics.parquet)."""
    out = table.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].round(4)
    atomic_write_text(report_dir / "downloads" / "metrics.csv", csv_text(out))


def export_notebooks(layout: RunLayout, report_dir: Path, cells: dict) -> dict:
    """Executed notebooks copied beside the report, with an HTML rendering (nbconvert), reused if unchanged."""
    out_dir = report_dir / "notebooks"
    make_folder(out_dir)
    exporter = None
    found = {}
    for (method, v), cell in cells.items():
        src = layout.cell(method, v, get(method).grid) / NOTEBOOK
        if not src.exists():
            continue
        name = cell["notebook_name"]
        digest = f"{sha256_file(src)}:{PUBLISH_VERSION}"  # a new scrubbing rule re-exports
        stamp = out_dir / f"{name}.sha256"
        if not (stamp.exists() and stamp.read_text() == digest and (out_dir / f"{name}.html").exists()):
            if exporter is None:
                import nbformat
                from nbconvert import HTMLExporter

                exporter = HTMLExporter(template_name="lab")
            record = publishable_notebook(src, layout, report_dir, name)
            body, _ = exporter.from_notebook_node(nbformat.reads(record, as_version=4))
            atomic_write_text(out_dir / f"{name}.html", scrub_paths(body, local_paths(layout, report_dir)))
            atomic_write_text(out_dir / f"{name}.ipynb", record)
            atomic_write_text(stamp, digest)
        found[name] = True
    for f in out_dir.glob("*"):
        if f.name.split(".")[0] not in found and not f.name.startswith("."):
            f.unlink()
    return found


# --------------------------------------------------------------------------- building the site


def read_quarto(project: Path, profiles: list[str] = ()) -> dict:
    cfg = yaml.safe_load((project / "_quarto.yml").read_text(encoding="utf-8"))
    book = cfg.get("book", {})
    chapters = list(book.get("chapters", []))
    for name in profiles:  # as Quarto merges a profile's _quarto-<name>.yml: its chapters are appended
        extra = project / f"_quarto-{name}.yml"
        if extra.exists():
            more = yaml.safe_load(extra.read_text(encoding="utf-8")) or {}
            chapters += list(more.get("book", {}).get("chapters", []))
    chapters += list(book.get("appendices", []))
    return {"title": book.get("title", "Report"), "subtitle": book.get("subtitle"),
            "chapters": chapters, "output_dir": cfg.get("project", {}).get("output-dir", "_site"),
            "site_url": book.get("site-url"),
            "output_file": book.get("output-file", "report")}


def _split_front(text: str) -> tuple[dict, str]:
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        if end > 0:
            return yaml.safe_load(text[4:end]) or {}, text[end + 5:]
    return {}, text


LUA_FILTER = r"""
-- Quarto's conditional content for plain pandoc: .content-visible / .content-hidden when-format
local function matches(fmt)
  if fmt == "pdf" then return FORMAT:match("typst") or FORMAT:match("latex") end
  return FORMAT:match(fmt) ~= nil
end
function Link(el)
  if not el.target:match("^%a+://") then
    el.target = el.target:gsub("%.qmd$", ".html"):gsub("%.qmd#", ".html#")
    if matches("pdf") then
      -- the PDF travels alone: a link into the site works only as an address of the published site
      local site = os.getenv("SEGREPORT_SITE_URL")
      if site and site ~= "" then
        el.target = site:gsub("/$", "") .. "/report/" .. el.target
      elseif el.target:match("^#") or el.target:match("%.html$") or el.target:match("%.html#") then
        return el.content  -- a page of the report: it is in this PDF too
      else
        -- a file beside the site (a download, a notebook): its name, found in the site's report/ folder
        local out = el.content
        table.insert(out, pandoc.Space())
        table.insert(out, pandoc.Str("("))
        table.insert(out, pandoc.Code(el.target))
        table.insert(out, pandoc.Str(")"))
        return out
      end
    end
  end
  return el
end
function Div(el)
  if matches("pdf") and el.classes:includes("persona") then
    -- a persona card stays on one page
    return {pandoc.RawBlock("typst", "#block(breakable: false, width: 100%, inset: (x: 8pt, y: 6pt), "
                            .. "stroke: 0.5pt + luma(190), radius: 3pt)["), el, pandoc.RawBlock("typst", "]")}
  end
  if el.classes:includes("fold") then
    -- folded details: a <details> on the site, the text under its summary in bold in the PDF
    local summary = el.attributes["summary"] or "Details"
    if matches("html") then
      return {pandoc.RawBlock("html", "<details class=\"fold\"><summary>" .. summary .. "</summary>"), el,
              pandoc.RawBlock("html", "</details>")}
    end
    local out = {pandoc.Para({pandoc.Strong({pandoc.Str(summary)})})}
    for _, b in ipairs(el.content) do table.insert(out, b) end
    return out
  end
  local when = el.attributes["when-format"]
  if when == nil then return nil end
  if el.classes:includes("content-visible") then
    if matches(when) then return el.content else return {} end
  elseif el.classes:includes("content-hidden") then
    if matches(when) then return {} else return el.content end
  end
end
"""


def _pandoc(text: str, to: str, extra: list[str] | None = None, cache: "OutputCache | None" = None) -> str:
    import pypandoc

    def convert() -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            lua = Path(tmp) / "when-format.lua"
            with writing(lua):
                lua.write_text(LUA_FILTER)
            return pypandoc.convert_text(text, to, format="markdown",
                                         extra_args=["--lua-filter", str(lua), "--wrap=none"] + (extra or [])
                                         ).encode("utf-8")
    if cache is None:
        return convert().decode("utf-8")
    parts = ["pandoc", pypandoc.get_pandoc_path(), pypandoc.get_pandoc_version(), LUA_FILTER, to, extra or [],
             os.environ.get("SEGREPORT_SITE_URL", ""), text]
    return cache.get(parts, convert).decode("utf-8")


class OutputCache:
    """What the built-in renderer's tools made (pandoc's pages, typst's PDF), in report/.cache/ by the
    sha256 of their inputs: a render whose pages did not change converts nothing again. Each file's name
    also holds the sha256 of its contents, checked when it is read (a damaged one is made again);
    `prune` then removes what this render did not use."""

    def __init__(self, folder: Path):
        self.dir = Path(folder)
        self.used: set[str] = set()

    def get(self, parts, make) -> bytes:
        h = hashlib.sha256()
        for part in parts:
            data = part if isinstance(part, bytes) else repr(part).encode("utf-8")
            h.update(b"%d:" % len(data))
            h.update(data)
        digest = h.hexdigest()[:32]
        for f in self.dir.glob(f"{digest}-*"):
            data = f.read_bytes()
            if hashlib.sha256(data).hexdigest()[:16] == f.name.split("-", 1)[1]:
                self.used.add(f.name)
                return data
            f.unlink(missing_ok=True)
        data = make()
        name = f"{digest}-{hashlib.sha256(data).hexdigest()[:16]}"
        atomic_write_bytes(self.dir / name, data)
        self.used.add(name)
        return data

    def prune(self) -> None:
        if self.dir.exists():
            for f in self.dir.iterdir():
                if f.is_file() and f.name not in self.used and not f.name.startswith("."):
                    f.unlink(missing_ok=True)


# the PDF as a document: A4, ragged right without hyphenation (narrow table cells stay whole words),
# headings kept with what follows them, figures not split (a long table goes on over the page break), smaller
# type in tables; a figure
# floats to the top or bottom of a page where it fits, and the text flows on (no page left half blank
# because the next figure did not fit under its paragraph)
TYPST_STYLE = """
#set page(paper: "a4", margin: (x: 2cm, top: 2.2cm, bottom: 2.6cm), numbering: "1")
#set par(justify: false)
#set text(hyphenate: false, size: 10pt)
#show heading: set block(sticky: true)
#show figure.where(kind: image): set block(breakable: false)
#show figure.where(kind: image): set figure(placement: auto)
#show figure.where(kind: table): set block(breakable: true)
#show table: set text(size: 8pt)
#show raw: set text(size: 8pt)
"""


def pdf_cover(title: str, cover: Path) -> str:
    """The PDF's first page (the report's title; the data, the date and the decision: report/_pages/cover.qmd),
    then the contents on a page of their own, as markdown with raw typst for what markdown cannot say."""
    lines = cover.read_text(encoding="utf-8") if Path(cover).exists() else ""
    esc = title.replace("\\", "\\\\").replace("]", "\\]").replace("[", "\\[").replace("#", "\\#")
    return ("```{=typst}\n#set document(title: \"" + title.replace('"', "'") + "\")\n"
            "#page(numbering: none)[\n#v(5cm)\n#text(size: 26pt, weight: \"bold\", fill: rgb(\"#2c5d8f\"))["
            + esc + "]\n#v(1.2cm)\n#set text(size: 12pt)\n```\n\n" + lines
            + "\n\n```{=typst}\n]\n#page(numbering: none)[#outline(depth: 2)]\n#counter(page).update(1)\n```\n\n")


def with_document_style(typ: str) -> str:
    """pandoc's typst document with TYPST_STYLE in place of its template's `conf` (a title block, empty here,
    and page rules after it: the page rules then began a second page and left the first one blank; the
    report's own cover is its first page)."""
    anchor = "#show: doc => conf("
    i = typ.find(anchor)
    if i < 0:
        return TYPST_STYLE + typ
    end = typ.find("\n)\n", i)
    end = len(typ) if end < 0 else end + 3
    return typ[:i] + TYPST_STYLE + typ[end:]


def vega_bundle(path: Path) -> None:
    if path.exists():
        return
    import vl_convert as vlc

    atomic_write_text(path, vlc.javascript_bundle())


def _version(package: str) -> str:
    from importlib import metadata

    return metadata.version(package)


def _typst_files(typ: str, root: Path) -> list:
    """The files a typst document reads besides itself (its figures: report/figures, and any other path it
    names), each by name and sha256: what its PDF depends on."""
    root = Path(root)
    files = set((root / "figures").glob("*.png")) if (root / "figures").is_dir() else set()
    files |= {root / m for m in re.findall(r'image\("([^"]+)"', typ)}
    return [(f.relative_to(root).as_posix() if f.is_relative_to(root) else str(f),
             sha256_file(f) if f.is_file() else None) for f in sorted(files)]


def builtin_render(project: Path, site: Path, profiles: list[str] = ()) -> dict:
    """Render _quarto.yml's chapters with pandoc into an HTML site and, via typst, one PDF."""
    import typst

    cfg = read_quarto(project, profiles)
    site = Path(site)
    pages = []
    for ch in cfg["chapters"]:
        src = chapter_source(project, ch)
        if not src.exists():
            raise SegreportError(f"{src}: page listed in _quarto.yml is missing; run `segreport run` first")
        front, body = _split_front(src.read_text(encoding="utf-8"))
        pages.append({"src": project / ch, "rel": Path(ch).with_suffix(".html"), "title": front.get("title", src.stem),
                      "body": body, "listed": front.get("listed", True) is not False})
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True)
    layout = env.get_template("site/layout.html.j2")
    report_dir = pages[0]["src"].parent
    cache = OutputCache(report_dir / ".cache")
    # the finished site swapped in by one rename: readers never see a half-written _site, and a failed
    # write (a full disk) leaves the last site whole and no temporary folder
    with atomic_folder(site) as tmp_site:
        listed = [p for p in pages if p["listed"]]  # a method the run left out: its page, but not in the list
        for pg in pages:
            html_body = _pandoc(pg["body"], "html5", cache=cache)
            nav = [{"title": p["title"], "href": os.path.relpath(p["rel"], pg["rel"].parent), "current": p is pg}
                   for p in listed]
            i = next((j for j, p in enumerate(listed) if p is pg), None)
            before = nav[i - 1] if i else None
            after = nav[i + 1] if i is not None and i + 1 < len(nav) else None
            atomic_write_text(tmp_site / pg["rel"],
                              layout.render(title=pg["title"], book=cfg["title"], nav=nav, body=Markup(html_body),
                                            prev=before, next=after,
                                            pdf=os.path.relpath(f"{cfg['output_file']}.pdf", pg["rel"].parent),
                                            assets=os.path.relpath("report/assets", pg["rel"].parent)))
        # resources next to the pages: figures, notebooks, downloads, the Vega bundle
        for sub in ("figures", "notebooks", "downloads", "assets"):
            if (report_dir / sub).exists():
                copy_tree(report_dir / sub, tmp_site / pages[0]["rel"].parent / sub, skip=(".*", "*.sha256"))
        first = pages[0]["rel"]
        if first != Path("index.html"):
            atomic_write_text(
                tmp_site / "index.html",
                f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0; url={first}">'
                f'<title>{html.escape(cfg["title"])}</title><a href="{first}">{html.escape(cfg["title"])}</a>\n')
        # one PDF of the whole report: pages concatenated, titles as level-1 headings
        combined = pdf_cover(cfg["title"], page_path(report_dir, COVER)) + "\n\n".join(
            f"# {md_escape(p['title'])}\n\n{p['body']}" for p in listed)
        os.environ["SEGREPORT_SITE_URL"] = cfg.get("site_url") or ""
        typ = with_document_style(_pandoc(combined, "typst", ["--standalone", f"--metadata=pagetitle:{cfg['title']}",
                                                             "--shift-heading-level-by=0"], cache=cache))

        def compile_pdf() -> bytes:
            build = report_dir / ".build.typ"
            atomic_write_text(build, typ)
            try:
                return typst.compile(str(build), root=str(report_dir))
            except Exception as exc:
                raise RuntimeError(f"typst failed on {build}: {exc}") from exc
            finally:
                build.unlink(missing_ok=True)
        pdf = cache.get(["typst", _version("typst"), typ, _typst_files(typ, report_dir)], compile_pdf)
        atomic_write_bytes(tmp_site / f"{cfg['output_file']}.pdf", pdf)
        atomic_write_text(tmp_site / ".nojekyll", "")
        publish_modes(tmp_site)  # mkdtemp made the folder 0700: served, it would answer 403
    cache.prune()
    return {"html": str(site / "index.html"), "pdf": str(site / f"{cfg['output_file']}.pdf")}


def render(params, layout: RunLayout | None = None, quarto: str = "auto", project: Path = Path("."),
           build_site: bool = True, reuse: bool = False) -> dict:
    """Pages from results, then the site: Quarto where installed, else the built-in renderer.

    `reuse` (a `segreport run`): where the site was built from the same inputs (`site_key`) and its
    files are as they were written (results/<run>/site.json), nothing is rebuilt; the result then has
    reused=True. `segreport render` always builds (its pages, figures and conversions are reused
    piece by piece where unchanged)."""
    if layout is None:
        data_path = Path(params.data) if params.data != "demo" else project / "data" / "demo.csv"
        layout = RunLayout(run_dir(params, data_path))
    if not layout.manifest.exists() or not layout.comparison_json.exists():
        raise SegreportError(f"{layout.root}: no finished run to render; run `segreport run` first")
    if not (project / "_quarto.yml").exists():  # a folder outside the repository: the packaged Quarto project
        for f in QUARTO_PROJECT.parent.glob("_quarto*.yml"):
            atomic_copy(f, project / f.name)
    write_chapters(project)  # the chapters the registry makes (committed in the repository: unchanged there)
    use_quarto = bool(quarto == "quarto" or (quarto == "auto" and shutil.which("quarto")))
    if use_quarto:
        site = project / read_quarto(project)["output_dir"]
    else:
        site = Path(params.site) if Path(params.site).is_absolute() else project / params.site
    sk = None
    if build_site:
        sk = site_key(params, layout, project, site, "quarto" if use_quarto else "builtin")
        if reuse:
            out = reusable_site(layout, site, sk)
            if out is not None:
                return out
        layout.site_record.unlink(missing_ok=True)  # rebuilt below: until then it describes nothing
    report_dir = project / "report"
    vega_bundle(report_dir / "assets" / "vega-bundle.js")
    write_stubs(report_dir)  # the chapters _quarto.yml lists (committed in the repository: unchanged there)
    t0 = time.perf_counter()
    facts = build_pages(layout, report_dir)
    if not build_site:
        return {"html": None, "pages": facts}
    profiles = ["tracking"] if "tracking" in facts["pages"] else []  # _quarto-tracking.yml adds the page
    if use_quarto:
        env = dict(os.environ, SEGREPORT_PAGES_READY="1")
        res = subprocess.run(["quarto", "render"] + [f"--profile={p}" for p in profiles], cwd=project, env=env)
        if res.returncode != 0:
            raise SegreportError(f"quarto render failed with exit status {res.returncode}")
        cfg = read_quarto(project)
        out = {"html": str(site / "index.html"), "pdf": str(site / f"{cfg['output_file']}.pdf")}
    else:
        out = builtin_render(project, site, profiles)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    record_site(layout, site, sk, out)
    return out


# --------------------------------------------------------------------------- reusing a built site

# manifest entries that change on every run without changing a page that matters: the site keeps the
# times of the run that built it (a rerun that changes nothing does not rebuild it to show new times)
VOLATILE_MANIFEST = ("started", "finished", "updated", "timings", "comparison", "render")


def _tree_hash(h, folder: Path, label: str) -> None:
    folder = Path(folder)
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(f"{label}/{f.relative_to(folder).as_posix()}\0".encode())
        h.update(f.read_bytes())


def site_key(params, layout: RunLayout, project: Path, site: Path, engine: str) -> str:
    """What a built site depends on: the package's code and templates, the Quarto project files, the
    parameters, the run's context and manifest (less the times of each run), its comparison and its
    cells' files (the sha256 their done.json recorded), the outcome, identifiers and tracking files,
    the engine and where the site goes."""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parent.parent
    for f in sorted(package.rglob("*.py")):
        if "__pycache__" not in f.parts:
            h.update(f"code/{f.relative_to(package).as_posix()}\0".encode())
            h.update(f.read_bytes())
    _tree_hash(h, TEMPLATES, "templates")
    own = Path(project) / "templates"
    if own.is_dir() and own.resolve() != Path(TEMPLATES).resolve():  # what Quarto includes (vega-init.html)
        _tree_hash(h, own, "project-templates")
    for f in sorted(Path(project).glob("_quarto*.yml")):
        h.update(f"quarto/{f.name}\0".encode())
        h.update(f.read_bytes())
    ctx = layout.read_context().dump()
    ctx.pop("prepare_seconds", None)
    manifest = read_json(layout.manifest)
    for name in VOLATILE_MANIFEST:
        manifest.pop(name, None)
    manifest["cells"] = {n: {k: v for k, v in c.items() if k != "reused"} for n, c in manifest.get("cells", {}).items()}
    for name in ("render", "workers"):  # how a run was asked for, not what it found
        (manifest.get("params") or {}).pop(name, None)
        (ctx.get("params") or {}).pop(name, None)
    comparison = read_json_or_empty(layout.comparison / DONE).get("files") or {
        p.name: sha256_file(p) for p in (layout.comparison_json, layout.metrics_table) if p.exists()}
    cells = {}
    for method in ctx["methods"]:
        grid = get(method).grid
        for v in ctx["grid"][method]:
            cells[f"{method}/{cell_id(v, grid)}"] = read_json_or_empty(layout.cell(method, v, grid) / DONE).get("files")
    extra = [layout.outcome, layout.ids, layout.tracking]
    if layout.tracking_tables.is_dir():
        extra += sorted(layout.tracking_tables.glob("*.parquet"))
    files = {p.relative_to(layout.root).as_posix(): sha256_file(p) for p in extra if p.is_file()}
    params = {n: v for n, v in params_to_dict(params).items() if n not in ("render", "workers")}
    h.update(key(__version__, engine, str(site), str(layout.root), params, ctx, manifest, comparison, cells, files,
                 layout.snapshots.is_dir()).encode())
    return h.hexdigest()[:32]


def _site_files(site: Path) -> dict:
    return {p.relative_to(site).as_posix(): file_record(p) for p in sorted(Path(site).rglob("*")) if p.is_file()}


def record_site(layout: RunLayout, site: Path, sk: str | None, out: dict) -> None:
    """results/<run>/site.json: the key the site was built with, its files and the run's assignment files
    (size and sha256), and what render returned."""
    if sk is None:
        return
    assignments = {p.name: file_record(p) for p in sorted(layout.assignments.glob("*.csv"))} \
        if layout.assignments.is_dir() else {}
    atomic_write_json(layout.site_record, {"key": sk, "site": str(site), "html": out.get("html"),
                                                  "pdf": out.get("pdf"), "files": _site_files(site),
                                                  "assignments": assignments})


def reusable_site(layout: RunLayout, site: Path, sk: str) -> dict | None:
    """What render returned when it built the site, where the site is still that one: the same key, and
    every file it wrote (and the run's assignment files) as they were. A missing or changed file is said
    in one line; None then (the site is built again)."""
    rec = read_json_or_empty(layout.site_record)
    if rec.get("key") != sk or rec.get("site") != str(site) or not rec.get("files"):
        return None
    bad = verify(site, rec["files"]) or verify(layout.assignments, rec.get("assignments") or {})
    if bad is not None:
        say_damaged(*bad, "building the site again")
        return None
    return {"html": rec.get("html"), "pdf": rec.get("pdf"), "reused": True}


# --------------------------------------------------------------------------- publishing: chapters, paths, modes
#
# Quarto resolves a book's chapters before it runs the pre-render script (quarto-cli #11567), so the chapters
# listed in _quarto.yml are fixed stubs committed in report/: each shows, when Quarto renders it, the page
# that `segreport run` wrote in report/_pages/ (ignored by git). A run changes no tracked file.

PAGES_DIR = "_pages"
COVER = "cover"  # report/_pages/cover.qmd: the PDF's cover lines (data, date, decision), not a chapter
PUBLISH_VERSION = "2"  # bump when publishable_notebook changes what it writes
_STUB_CODE = '''```{{python}}
#| echo: false
#| output: asis
# segreport writes this page in report/{pages}/ (`segreport run`, or Quarto's pre-render); show it here
import pathlib, re
page = pathlib.Path("{pages}/{page}.qmd")
if page.exists():
    print(re.sub(r"\\A---\\n.*?\\n---\\n", "", page.read_text(encoding="utf-8"), count=1, flags=re.S))
else:
    print("This page has not been written yet: run `segreport run` (or `quarto render` of the whole project).")
```
'''


def page_path(report_dir: Path, page: str) -> Path:
    """Where build_pages writes a page: report/_pages/<page>.qmd (report/<page>.qmd is its fixed stub)."""
    return Path(report_dir) / PAGES_DIR / f"{page}.qmd"


def page_title(page: str) -> str:
    """A page's title as its template's front matter sets it (method pages: the method's name)."""
    name = "method" if page in REGISTRY else page
    src = (TEMPLATES / "pages" / f"{name}.qmd.j2").read_text(encoding="utf-8")
    front, _ = _split_front(src.split("\n---\n", 1)[0] + "\n---\n")
    title = str(front.get("title", page))
    if "{{" in title:
        title = jinja2.Template(title).render(m={"title": METHOD_TITLES.get(page, page)})
    return title


def stub_text(page: str) -> str:
    """The committed chapter report/<page>.qmd: its title, and a cell that shows report/_pages/<page>.qmd."""
    title = page_title(page).replace("\\", "\\\\").replace('"', '\\"')
    return (f'---\ntitle: "{title}"\n'
            "# a fixed chapter (segreport.report.render.stub_text): Quarto needs it before its pre-render writes the page\n"
            f"---\n\n{_STUB_CODE.format(pages=PAGES_DIR, page=page)}")


def stub_pages() -> list[str]:
    return [*PAGES, "tracking"]


def write_stubs(report_dir: Path) -> None:
    """The chapter stubs in report/, where missing or different (in the repository they are committed)."""
    for page in stub_pages():
        path = Path(report_dir) / f"{page}.qmd"
        text = stub_text(page)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)


def chapters() -> list[str]:
    """The book's chapters before its appendices, as _quarto.yml lists them: the overview, one chapter per
    method of the registry, the personas and the comparison (the tracking page and the appendix are added
    by _quarto-tracking.yml and `appendices`)."""
    return [f"report/{page}.qmd" for page in PAGES if page != "appendix"]


_CHAPTERS = re.compile(r"(?m)^(  chapters:\n)((?:    - .*\n)+)")


def quarto_text(text: str) -> str:
    """_quarto.yml's text with its chapter list written from the registry (`chapters`), all else as it is."""
    lines = "".join(f"    - {c}\n" for c in chapters())
    return _CHAPTERS.sub(lambda m: m.group(1) + lines, text, count=1)


def write_chapters(project: Path) -> None:
    """The chapters of the project's _quarto.yml, where they differ from the registry's (in the repository
    they are committed, and _quarto.yml is a link to the package's: unchanged there)."""
    path = (Path(project) / "_quarto.yml").resolve()
    text = path.read_text(encoding="utf-8")
    if quarto_text(text) != text:
        atomic_write_text(path, quarto_text(text))


def chapter_source(project: Path, chapter: str) -> Path:
    """The markdown of a chapter for the built-in renderer: the page a stub shows, else the chapter itself."""
    ch = Path(project) / chapter
    generated = page_path(ch.parent, ch.stem)
    return generated if generated.exists() else ch


def local_paths(layout: RunLayout, report_dir: Path) -> list[tuple[str, str]]:
    """(absolute local path, what a published file says instead), longest first."""
    project = Path(report_dir).resolve().parent
    run = Path(layout.root).resolve()
    try:
        run_name = run.relative_to(project).as_posix()
    except ValueError:
        run_name = f"<run folder {run.name}>"
    pairs = {str(run): run_name, str(project): ".", str(Path(__file__).resolve().parent.parent): "segreport",
             sys.prefix: "<python environment>", sys.base_prefix: "<python>"}
    for path, name in list(pairs.items()):  # the same folders as the kernel may have spelled them
        real = os.path.realpath(path)
        pairs.setdefault(real, name)
    return sorted(((p, n) for p, n in pairs.items() if len(p) > 1), key=lambda x: -len(x[0]))


def scrub_paths(text: str, pairs: list[tuple[str, str]]) -> str:
    for path, name in pairs:
        text = text.replace(path, name)
    return text


def publishable_notebook(src: Path, layout: RunLayout, report_dir: Path, name: str) -> str:
    """An executed notebook as published: papermill's paths relative, no absolute local path anywhere."""
    import json

    nb = json.loads(Path(src).read_text(encoding="utf-8"))
    pm = nb.get("metadata", {}).get("papermill")
    if pm:
        pm["input_path"] = f"analysis/{Path(pm.get('input_path') or '').name}"
        pm["output_path"] = f"notebooks/{name}.ipynb"
        pm.pop("environment_variables", None)
    return scrub_paths(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", local_paths(layout, report_dir))


def publish_modes(tree: Path) -> None:
    """The usual modes of a served site: folders 0755, files 0644, whatever the umask or mkdtemp made."""
    tree = Path(tree)
    os.chmod(tree, 0o755)
    for root, dirs, files in os.walk(tree):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            path = os.path.join(root, f)
            if not os.path.islink(path):
                os.chmod(path, 0o644)
