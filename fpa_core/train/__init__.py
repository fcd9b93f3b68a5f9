"""Training one FPA GAN: ``python -m fpa_core.train`` (or ``fpa-train``).

    config.py      TrainConfig, the one config from the command line to the loop (packaged YAMLs: fpa_core/configs)
    trainer.py     Trainer: the loop, the step, the EMA, the evaluations and the pictures
    run_folder.py  the run's folder and its state: checkpoints, restore, metrics.jsonl, summary.json
    stages.py      the generator a stage trains: an FPA, or a U-Net on a frozen one
    errors.py      why a run stops
"""
