"""monet-tune core library: datasets, models, losses, metrics and the training loop.

This package never imports Ray or Optuna; the search layer lives in ``search/``.
"""
__version__ = "0.1.0"
