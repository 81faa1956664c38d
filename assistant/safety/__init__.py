"""Safety layer: deterministic triage that runs before the model."""
from .triage import SafetyConfigError, TriageConfig, TriageResult, load_config, normalise, triage

__all__ = ["SafetyConfigError", "TriageConfig", "TriageResult", "load_config", "normalise", "triage"]
