"""An unchanged Hydra training app, as users have them: logs to MLflow itself, knows nothing of runtree unless told
to `report`. Its loss is (x - 2)^2 + 1/(epoch + 1)."""

import os
import time

import hydra
import mlflow
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="app")
def main(cfg: DictConfig) -> None:
    with mlflow.start_run():
        mlflow.log_params({"x": cfg.x, "epochs": cfg.epochs})
        print(f"training x={cfg.x} in {os.getcwd()}")
        for epoch in range(cfg.epochs):
            time.sleep(cfg.sleep)
            loss = (cfg.x - 2) ** 2 + 1 / (epoch + 1)
            if cfg.report:
                from runtree_pipeline import report

                report(epoch, loss=loss)
            else:
                mlflow.log_metric("loss", loss, step=epoch)
        mlflow.set_tag("hydra_dir", HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
