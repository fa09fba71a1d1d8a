"""``python -m backend.cli``: the same app as the ``gridpoints`` script."""

from backend.cli.main import app

app()
