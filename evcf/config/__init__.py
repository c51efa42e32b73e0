"""Validate params.yaml and resolve what each pipeline step receives.

``params.yaml`` is the project's one configuration file: Snakemake loads it as its configfile
(``--config`` overrides apply on top), DVC reads it as its params file.  The Snakefile calls
:func:`validate` once, then the rules call the resolution helpers (:func:`run_settings`,
:func:`tune_points`, :func:`raw_path` ...) to turn it into the explicit command-line arguments of
``evcf`` subcommands.  The ``evcf`` CLI itself never reads params.yaml.

One job per module:

* :mod:`.schema`: the schema of the file (keys and types, from the config dataclasses);
* :mod:`.layers`: the resolution of a run's settings (file layers, then command-line values, then a
  grid point) and of a dataset's raw path;
* :mod:`.overrides`: the values typed with ``--config``, and the refusal of a typed or edited value
  that would not be applied;
* :mod:`.checks`: :func:`validate` (all of the above, before any job starts) and
  :func:`check_plain_yaml`.
"""

from __future__ import annotations

from .checks import check_plain_yaml, validate
from .layers import (COMMAND_LINE, SELF_FITTING_TRAIN, apply_setting, grid_source, raw_path, run_settings,
                     settings_sources, synthetic_spec, tune_grid, tune_points)
from .overrides import apply_cli_types
from .schema import build_schema

__all__ = ["build_schema", "check_plain_yaml", "apply_cli_types", "validate", "grid_source", "tune_grid",
           "apply_setting", "raw_path", "run_settings", "settings_sources", "synthetic_spec", "tune_points",
           "COMMAND_LINE", "SELF_FITTING_TRAIN"]
