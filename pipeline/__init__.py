"""infoplane: information-plane analysis of deep networks.

config -> train -> archive -> estimate -> results -> figures; see docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
