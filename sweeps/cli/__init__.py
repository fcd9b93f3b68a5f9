"""The sweep service's command lines, thin over the library: ``fpa-sweep`` (also ``python sweeps/launch.py``),
``fpa-status``, ``fpa-promote`` and ``fpa-continue``. Each parses its flags, checks them, calls the library
and turns its errors into one message and an exit code (2 for a command line that cannot run)."""
