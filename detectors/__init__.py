"""Signal analysis of household load, no I/O: the e-bike charging-session detector
(batch and streaming over one core) and its evaluation."""

from detectors.charging import ChargingSession, DetectorSettings, StreamingDetector, detect_sessions
from detectors.evaluate import Metrics, SessionLike, match_sessions

__all__ = [
    "ChargingSession",
    "DetectorSettings",
    "Metrics",
    "SessionLike",
    "StreamingDetector",
    "detect_sessions",
    "match_sessions",
]
