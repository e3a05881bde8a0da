"""flylead: command line, shared clock and the demo that wires the packages together."""

__version__ = "0.1.0"
