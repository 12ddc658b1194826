"""tokenprune: training-free visual token pruning for multimodal LLMs (ST3, FastV, VTW)."""

from .api import available_adapters, available_strategies, compose, prune, resolve_adapter, resolve_strategy
from .backbones import Backbone, DecoderShape
from .calibration import Calibration, find_k
from .engine import PruningSession
from .errors import (
    AlreadyPrunedError,
    ConfigError,
    DataError,
    InvalidParameterError,
    PluginError,
    PluginWarning,
    TokenpruneError,
    UnknownStrategyError,
    UnsupportedInputError,
    UnsupportedModelError,
)
from .hookspecs import hookimpl
from .interfaces import (
    AdapterOptions,
    AttentionView,
    CacheDecay,
    ComponentFactory,
    DecayFactory,
    LayerSchedule,
    ModelAdapter,
    ModelParts,
    NoParams,
    ScheduleFactory,
    ScoreFactory,
    ScoreProvider,
    Strategy,
    StrategyFactory,
    StrategyParams,
    VisualTokens,
)
from .report import Report

__version__ = "0.1.0"

__all__ = [
    "prune",
    "compose",
    "find_k",
    "Calibration",
    "available_strategies",
    "available_adapters",
    "resolve_strategy",
    "resolve_adapter",
    "PruningSession",
    "Report",
    "Strategy",
    "StrategyFactory",
    "StrategyParams",
    "ScoreProvider",
    "LayerSchedule",
    "CacheDecay",
    "AttentionView",
    "ComponentFactory",
    "ScoreFactory",
    "ScheduleFactory",
    "DecayFactory",
    "NoParams",
    "ModelAdapter",
    "ModelParts",
    "Backbone",
    "DecoderShape",
    "AdapterOptions",
    "VisualTokens",
    "hookimpl",
    "TokenpruneError",
    "UnknownStrategyError",
    "InvalidParameterError",
    "UnsupportedModelError",
    "UnsupportedInputError",
    "AlreadyPrunedError",
    "PluginError",
    "PluginWarning",
    "ConfigError",
    "DataError",
]
