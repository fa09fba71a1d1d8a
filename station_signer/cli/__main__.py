"""``python -m station_signer.cli``: the same app as the ``gridpoints-station`` script."""

from station_signer.cli.main import app

app()
