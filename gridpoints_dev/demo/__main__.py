"""``python -m gridpoints_dev.demo``: what ``scripts/demo`` runs."""

from gridpoints_dev.demo.cli import main

main()
