"""The sweep service: hyper-parameter searches over FPA training runs, as in the paper's Appendix B.2.

Ray Tune schedules the trials (each one an ``fpa_core`` training run), Optuna samples each trial's
configuration from a per-dataset search space and prunes trials whose FID falls behind, and MLflow
records every trial's parameters, metrics and pictures. The search spaces are YAML files in
``sweeps/configs/``, read and checked by ``sweeps.sweep_file`` into a ``sweeps.space.SweepSpec``; the
command lines are in ``sweeps/cli/``.
"""
