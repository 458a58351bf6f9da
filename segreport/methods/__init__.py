"""The registry of segmentation methods: one line per method (see base.Method for the interface),
and the run's parameters it composes: config's run-wide keys with each method's own under its name."""

from __future__ import annotations

from pathlib import Path

from ..core.config import parameters_model, read_params
from .base import BuildEnv, Method, Space, Strict  # noqa: F401
from .famd import FAMDMethod
from .hdbscan import HDBSCANMethod
from .kmeans import KMeansMethod
from .kprototypes import KPrototypesMethod
from .llm import LLMMethod

REGISTRY: dict[str, Method] = {m.name: m for m in (
    KMeansMethod(),
    KPrototypesMethod(),
    LLMMethod(),
    FAMDMethod(),
    HDBSCANMethod(),
)}
DEFAULT_METHODS = ["kmeans", "kprototypes", "llm"]

Params = parameters_model({name: m.Params for name, m in REGISTRY.items()}, DEFAULT_METHODS)
Params.__module__ = __name__  # made by pydantic's create_model in config: pickled (a prepare process, Dask) by this name


def get(name: str) -> Method:
    return REGISTRY[name]


def load_params(path: str | Path | None, overrides: dict | None = None) -> Params:
    """Read params.yml (if any), apply CLI overrides (non-None values), validate (config.read_params)."""
    return read_params(Params, path, overrides)


def params_of(ctx: dict) -> Params:
    """The typed parameters of a run, validated back from its context.json."""
    return Params.model_validate(ctx["params"])
