"""tokenprune: training-free visual token pruning for multimodal LLMs (ST3, FastV, VTW)."""

from .api import available_adapters, available_strategies, prune, resolve_adapter, resolve_strategy
from .engine import PruningSession
from .errors import (
    AlreadyPrunedError,
    ConfigError,
    DataError,
    InvalidParameterError,
    PluginError,
    TokenpruneError,
    UnknownStrategyError,
    UnsupportedInputError,
    UnsupportedModelError,
)
from .hookspecs import hookimpl
from .interfaces import (
    AttentionView,
    CacheDecay,
    LayerSchedule,
    AdapterOptions,
    ModelAdapter,
    ScoreProvider,
    Strategy,
    StrategyFactory,
    StrategyParams,
    VisualTokens,
)
from .report import Report

__version__ = "0.1.0"

__all__ = [
    "prune", "available_strategies", "available_adapters", "resolve_strategy", "resolve_adapter", "PruningSession", "Report",
    "Strategy", "StrategyFactory", "StrategyParams", "ScoreProvider", "LayerSchedule", "CacheDecay",
    "AttentionView", "ModelAdapter", "AdapterOptions", "VisualTokens", "hookimpl", "TokenpruneError", "UnknownStrategyError",
    "InvalidParameterError", "UnsupportedModelError", "UnsupportedInputError", "AlreadyPrunedError", "PluginError",
    "ConfigError", "DataError",
]
