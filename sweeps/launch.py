"""``python sweeps/launch.py ...`` is ``fpa-sweep ...``: the sweep command, ``sweeps.cli.launch``."""
if __name__ == "__main__":
    from sweeps.cli.launch import main
    raise SystemExit(main())
