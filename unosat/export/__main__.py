"""Export a checkpoint: ``python -m unosat.export ckpt=PATH [format=onnx] [output=model.onnx] [overwrite=true]``."""

import hydra
from omegaconf import DictConfig

from unosat.errors import exit_on_user_error
from unosat.export.run import run


@hydra.main(version_base="1.3", config_path="../../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(run)(cfg)


if __name__ == "__main__":
    main()
