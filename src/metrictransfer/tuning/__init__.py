"""Hyperparameter search (``metrictransfer tune``): Optuna trials of a recipe, compared on validation data
carved from the training split, never on the test split; ``--final`` then retrains the best configuration
on all training classes and tests it once per seed. See docs/guides/tune.md."""

from metrictransfer.tuning.run import run_study
from metrictransfer.tuning.space import Param, SearchSpace, load_space
from metrictransfer.tuning.study import Pruning

__all__ = ["Param", "Pruning", "SearchSpace", "load_space", "run_study"]
