"""Signal analysis of household load, no I/O: the e-bike charging-session detector
(batch and streaming over one core) and its evaluation."""

from detectors.charging import ChargingSession, DetectorSettings, StreamingDetector, detect_sessions
from detectors.evaluate import Metrics, SessionLike, match_sessions
from detectors.interval import IntervalSettings, detect_interval_sessions

__all__ = [
    "ChargingSession",
    "DetectorSettings",
    "IntervalSettings",
    "Metrics",
    "SessionLike",
    "StreamingDetector",
    "detect_interval_sessions",
    "detect_sessions",
    "match_sessions",
]
