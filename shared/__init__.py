"""The shared core: losses, preference oracles, data sources, metrics and the
study declarations that both backends (toysim, fullscale) run.

Docs: docs/index.md. Modules are imported explicitly
(``from shared.losses import ipo_loss``); importing this package is free.
"""

__version__ = "0.1.0"
