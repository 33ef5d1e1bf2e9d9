"""Data preparation: raw Sentinel-1 scenes and labels -> band stacks, masks, tiles, statistics, report."""

from unosat.prepare.run import STEPS, run

__all__ = ["STEPS", "run"]
