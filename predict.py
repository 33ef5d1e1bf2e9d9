"""Predict building masks and polygons: ``python predict.py [ckpt=PATH] [input=DIR] [output=DIR] [key=value ...]``."""

import hydra
from omegaconf import DictConfig

from unosat.config import register_resolver
from unosat.errors import exit_on_user_error
from unosat.predict.run import run

register_resolver()  # the configs read ${unosat:...} (label values, CPU precision) and ${unosat_by_precision:...}


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(run)(cfg)


if __name__ == "__main__":
    main()
