"""The registry of segmentation methods: one line per method (see base.Method for the interface)."""

from __future__ import annotations

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


def get(name: str) -> Method:
    return REGISTRY[name]
