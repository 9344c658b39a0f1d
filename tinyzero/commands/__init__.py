"""The commands besides training (``tinyzero/trainer.py``) that the command line (``tinyzero/cli.py``) dispatches to:
``tinyzero eval`` and ``tinyzero merge`` (``eval.py``), ``tinyzero smoke`` (``smoke.py``)."""
