"""Safety layer: deterministic triage that runs before the model."""
from .triage import TriageConfig, TriageResult, load_config, normalise, triage

__all__ = ["TriageConfig", "TriageResult", "load_config", "normalise", "triage"]
