"""Run parameters: the validated model of params.yml plus command-line overrides.

pydantic does the validation so that every bad value is reported with its key,
its value and why; unknown keys get the closest valid name suggested.

This module holds the run-wide keys; each method's own parameters live with the method, and the
registry (`segreport.methods`) composes both into the run's `Params` with `parameters_model`.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from .. import SegreportError
from .schema import ColumnSpec
from .schema import Strict as _Strict


class ScaleParams(_Strict):
    """The path for large tables: at `threshold` rows and past it, each heavy step runs its scalable form."""

    threshold: int = Field(200_000, ge=1)  # rows; a table this large takes the scalable path
    batch_size: int = Field(8192, ge=64)  # MiniBatchKMeans rows per step
    lightgbm_rounds: int = Field(100, ge=10)  # boosting rounds of LightGBM's Dask interface (no early stopping there)
    holdout: int = Field(20_000, ge=100)  # seeded rows held out of the Dask LightGBM fit to measure its accuracy
    ecod_sample: int = Field(100_000, ge=1000)  # ECOD fitted on this many seeded rows; every row is scored


class TrackingParams(_Strict):
    """`segreport track`'s thresholds (see segreport/lib/drift.py and docs/tracking.md; the defaults are
    calibrated by bench/bench_drift.py on the bank data)."""

    # a column's distribution drifted when its effect size reaches the threshold and its test says so
    numeric_threshold: float = Field(0.1, gt=0)  # normed Wasserstein: distance / the baseline's SD
    categorical_threshold: float = Field(0.1, gt=0, le=1)  # Jensen-Shannon distance, base 2
    missing_threshold: float = Field(0.05, gt=0, le=1)  # change of the missing share (0.05 = 5 points)
    unseen_threshold: float = Field(0.01, gt=0, le=1)  # share of rows with levels the baseline never had
    alpha: float = Field(0.01, gt=0, lt=1)  # level of the K-S / chi-square / two-proportion tests
    segment_min_rows: int = Field(200, ge=20)  # drift within a segment: at least this many in both tables
    refit_sample: int = Field(5000, ge=200)  # the refit on the snapshot (and on the baseline) uses this many rows
    refit_draws: int = Field(5, ge=1, le=25)  # bootstrap refits on each side; their medians decide
    # re-fit when the refit on the snapshot agrees with the saved segments (ARI) this much less than a
    # refit on as many baseline rows does
    ari_drop: float = Field(0.15, gt=0, le=1)


class RunParams(_Strict):
    """Everything a run depends on but the methods' own parameters (see `parameters_model`)."""

    data: str = "demo"
    run: Optional[str] = None
    results: str = "results"
    site: str = "_site"
    cache_dir: str = ".segreport-cache"  # embeddings, exported models and the fidelity gate, shared by runs
    schema_: Optional[list[ColumnSpec]] = Field(None, alias="schema")  # the columns used and their kinds
    methods: list[str] = Field(default_factory=list)  # the methods that run, among the registered ones
    k: list[int] = Field(default_factory=lambda: list(range(3, 9)))
    seed: int = 42
    workers: int = Field(0, ge=0)
    executor: Literal["local", "dask"] = "local"  # where grid cells run: a local process pool, or Dask
    scheduler: Optional[str] = None  # Dask scheduler address; None = a LocalCluster of `workers` processes
    demo_rows: int = Field(600, ge=10)  # rows of the generated demo table (data: demo): the first report
    outcome: Optional[str] = None
    min_segment_size: int = Field(20, ge=1)  # smaller segments are not profiled in the report
    min_segment_share: float = Field(0.05, ge=0.0, lt=1.0)  # a recommendable segmentation's smallest segment
    projection_sample: int = Field(3000, ge=100)  # seeded rows of the t-SNE projection (figures draw figure_sample of them)
    figure_sample: int = Field(3000, ge=100)  # seeded rows a scatter figure draws
    silhouette_sample: int = Field(5000, ge=100)  # seeded rows the silhouettes are computed on
    shap_sample: int = Field(2000, ge=50)  # seeded rows whose SHAP values explain the segments
    lgbm_folds: int = Field(3, ge=2)  # cross-validation folds of the LightGBM surrogate
    explain_rows: int = Field(10000, ge=100)  # LightGBM cross-validation on at most this many rows
    stability_resamples: int = Field(100, ge=0)  # clusterboot resamples (Hennig: at least 100)
    # sequential: refits in batches of 20, stopped at a look once every segment's class is settled (a
    # Bonferroni-corrected t interval of its mean Jaccard within one class band); fixed: all of them
    stability_stopping: Literal["sequential", "fixed"] = "sequential"
    stability_sample: int = Field(2000, ge=50)  # seeded rows each clusterboot resample is drawn from
    null_references: int = Field(3, ge=0)  # tables without segments per reference kind (shuffled, principal axes)
    null_sample: int = Field(1500, ge=100)  # rows of each null table (and of the observed sample they are set against)
    render: bool = True  # false: analysis only (`segreport run --no-render`); `segreport render` later
    # per-customer assignment files go into the published site only when asked (a public site carries no
    # customer rows by default); they are always written beside the results
    publish_assignments: bool = False
    analysis: Optional[str] = None  # folder of the analysis notebook segment.ipynb (default: the project's analysis/)
    scale: ScaleParams = Field(default_factory=ScaleParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @field_validator("k", mode="before")
    @classmethod
    def _parse_k(cls, v):
        return parse_k(v)

    @field_validator("methods", mode="before")
    @classmethod
    def _parse_methods(cls, v):
        if isinstance(v, str):
            v = [m.strip() for m in v.split(",") if m.strip()]
        return v

    @field_validator("results", "cache_dir", "site")
    @classmethod
    def _local_folder(cls, v: str) -> str:
        # every write is an atomic rename in a folder; object stores (s3://, gs://) have no such rename
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", v):
            raise ValueError("must be a folder path (for a Dask cluster: one every worker mounts at the same "
                             "path); URLs such as s3:// are not supported")
        return v

    @model_validator(mode="after")
    def _check(self):
        if not self.methods:
            raise ValueError("methods: at least one method is needed")
        return self

    @property
    def schema(self) -> list[ColumnSpec] | None:
        return self.schema_


def parameters_model(method_params: dict[str, type[BaseModel]], default_methods: list[str]) -> type[RunParams]:
    """The run's parameters: the run-wide keys, `methods` among the given names, and each method's
    parameters under its name (the registry calls this once with every registered method)."""
    names = tuple(method_params)
    return create_model(
        "Params", __base__=RunParams, __doc__="Everything a run depends on. Every key can be set "
        "in params.yml or on the CLI; each method's parameters under its name.",
        methods=(list[Literal[names]],  # type: ignore[valid-type]
                 Field(default_factory=lambda: list(default_methods))),
        **{name: (model, Field(default_factory=model)) for name, model in method_params.items()})


def method_names(model: type[RunParams]) -> tuple[str, ...]:
    """The method names a parameters model accepts (its `methods` literal)."""
    return typing.get_args(typing.get_args(model.model_fields["methods"].annotation)[0])


def parse_k(v) -> list[int]:
    """'3-8' -> [3..8]; '3,5,7' -> [3,5,7]; an int or list as is. k below 2 is refused."""
    if isinstance(v, int):
        ks = [v]
    elif isinstance(v, str):
        ks = []
        for part in v.split(","):
            part = part.strip()
            m = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", part)
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if hi < lo:
                    raise ValueError(f"k range {part!r} is empty (end before start)")
                ks.extend(range(lo, hi + 1))
            elif re.fullmatch(r"-?\d+", part):
                ks.append(int(part))
            else:
                raise ValueError(f"k must look like '3-8' or '3,5,7', got {part!r}")
    elif isinstance(v, (list, tuple)):
        ks = [int(x) for x in v]
    else:
        raise ValueError(f"k must be a range like '3-8' or a list, got {v!r}")
    if not ks:
        raise ValueError("k is empty")
    bad = [x for x in ks if x < 2]
    if bad:
        raise ValueError(f"k must be 2 or more (a segmentation into {bad[0]} segment(s) says nothing)")
    return sorted(set(ks))


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _model_at(params_model: type[RunParams], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `loc` (for suggestions)."""
    model: type[BaseModel] = params_model
    own = [f.annotation for f in params_model.model_fields.values()
           if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
           and f.annotation not in (ScaleParams, TrackingParams)]  # each method's parameters
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = {(f.alias or n): f for n, f in model.model_fields.items()}.get(part)
        if field is None:
            return None
        ann = field.annotation
        for cand in (ColumnSpec, ScaleParams, TrackingParams, *own):
            if ann is cand or cand.__name__ in str(ann):
                model = cand
                break
        else:
            return None
    return model


def explain_validation_error(err: ValidationError, source: str, params_model: type[RunParams]) -> str:
    """One line: which key, which value, why (and the closest valid key for a typo)."""
    e = err.errors()[0]
    loc = tuple(e["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if e["type"] == "extra_forbidden":
        model = _model_at(params_model, loc)
        names = _field_names(model) if model else []
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
        return f"{source}: unknown parameter '{key}'{hint}"
    value = e.get("input")
    msg = e["msg"]
    if e["type"] == "literal_error" and loc and loc[0] == "methods":
        names = method_names(params_model)
        close = difflib.get_close_matches(str(value), names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{source}: unknown method {value!r} in 'methods' (valid: {', '.join(names)}){hint}"
    msg = msg.removeprefix("Value error, ")
    return f"{source}: invalid value for '{key}': {value!r} ({msg})"


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping: PyYAML keeps the last silently, so a
    second `llm:` block would drop the first one's settings without a word."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key '{key}' is given twice (the second would silently replace the first)",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_params(params_model: type[RunParams], path: str | Path | None, overrides: dict | None = None) -> RunParams:
    """Read params.yml (if any), apply CLI overrides (non-None values), validate as `params_model`
    (`segreport.methods.load_params`: the registry's)."""
    raw: dict = {}
    source = "parameters"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.exists():
            raise SegreportError(f"{p}: params file not found")
        try:
            raw = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise SegreportError(f"{p}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        except UnicodeDecodeError as exc:
            raise SegreportError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if not isinstance(raw, dict):
            raise SegreportError(f"{p}: must be a mapping of keys to values, got {type(raw).__name__}")
    merged = dict(raw)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if "." in key:  # nested override such as kprototypes.engine
            head, tail = key.split(".", 1)
            sub = dict(merged.get(head) or {})
            sub[tail] = value
            merged[head] = sub
        else:
            merged[key] = value
    try:
        return params_model.model_validate(merged)
    except ValidationError as err:
        top = str(err.errors()[0]["loc"][0]) if err.errors()[0]["loc"] else ""
        given = {k.split(".")[0] for k, v in (overrides or {}).items() if v is not None}
        where = "command line" if top in given else source
        raise SegreportError(explain_validation_error(err, where, params_model)) from None


def params_to_dict(params: RunParams) -> dict:
    """The parameters as plain JSON-able data, with 'schema' under its public name."""
    return params.model_dump(mode="json", by_alias=True)
