"""Train a small CNN on scikit-learn's 8x8 digits: a plain Hydra app that logs to MLflow, runnable by hand

    python examples/train_digits.py lr=0.003 epochs=6

or as the leaves of a pipeline (`python -m runtree_pipeline +sweep=script`), unchanged: there its MLflow calls
continue the leaf's run, its config keys are the leaf's params, and `report` lets a pruner stop it early.
"""

import hydra
import mlflow
import torch
from omegaconf import DictConfig, OmegaConf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from runtree_pipeline import report


def load(val_fraction: float, seed: int) -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    X = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None, :, :]
    y = torch.tensor(digits.target, dtype=torch.int64)
    return tuple(train_test_split(X, y, test_size=val_fraction, stratify=y, random_state=seed))


@hydra.main(version_base=None, config_path="conf", config_name="train_digits")
def main(cfg: DictConfig) -> float:
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    X_tr, X_val, y_tr, y_val = load(cfg.val_fraction, cfg.seed)
    model = nn.Sequential(
        nn.Conv2d(1, cfg.channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(cfg.channels, 2 * cfg.channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * cfg.channels * 4 * 4, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = nn.CrossEntropyLoss()

    with mlflow.start_run():
        mlflow.log_params(OmegaConf.to_container(cfg))
        for epoch in range(cfg.epochs):
            model.train()
            for idx in torch.randperm(len(y_tr)).split(cfg.batch_size):
                opt.zero_grad()
                loss_fn(model(X_tr[idx]), y_tr[idx]).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                logits = model(X_val)
                val_loss = loss_fn(logits, y_val).item()
                val_accuracy = (logits.argmax(1) == y_val).float().mean().item()
            mlflow.log_metric("val_accuracy", val_accuracy, step=epoch)
            report(epoch, val_loss=val_loss)  # logs val_loss at this step; in a pipeline, may stop this run here
    return val_loss


if __name__ == "__main__":
    main()
