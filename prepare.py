"""Prepare raw Sentinel-1 scenes and labels for training: ``python prepare.py [raw_dir=DIR out_dir=DIR]``."""

import hydra
from omegaconf import DictConfig

from unosat.config import register_resolver
from unosat.errors import exit_on_user_error
from unosat.prepare import run

register_resolver()  # the configs read ${unosat:...} (label values, CPU precision) and ${unosat_by_precision:...}


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(run)(cfg)


if __name__ == "__main__":
    main()
