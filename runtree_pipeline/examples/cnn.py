"""Small digits CNN used as example pipeline stage targets.

Heavy imports (torch, sklearn, mlflow) live inside the functions so that
importing this module stays cheap for the pipeline loader.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any


def _save_npz_atomic(path: Path, **arrays: Any) -> None:
    """Concurrent prepare() calls may target the same directory; never expose a half-written file."""
    import numpy as np

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare(*, val_fraction: float = 0.2, seed: int = 0, root: str = "data") -> dict[str, Any]:
    """Split the bundled 8x8 digits once so training stages share identical data without downloads.

    The split is written under `root` in the working directory and returned as a path: the pipeline logs it as an
    artifact of this run, and a downstream leaf, wherever it runs, gets a local copy of it.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    X_tr, X_val, y_tr, y_val = train_test_split(X, y, test_size=val_fraction, stratify=y, random_state=seed)

    out = (Path(root) / "digits" / f"val{val_fraction}_seed{seed}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    _save_npz_atomic(out / "train.npz", X=X_tr, y=y_tr)
    _save_npz_atomic(out / "val.npz", X=X_val, y=y_val)
    return {"data": out, "n_train": int(len(y_tr)), "n_val": int(len(y_val))}


def train(
    *,
    data_dir: str | Path,
    epochs: int = 3,
    channels: int = 16,
    lr: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
    log_model: bool = False,
) -> dict[str, float]:
    """Train a tiny CNN: real enough to give meaningful curves, small enough for CPU in about a second.

    Each epoch is reported, so the run shows its curves and a pruner can stop a trial that falls behind its
    siblings (`report` raises `Pruned`, which ends this leaf as pruned). Each epoch is saved as a checkpoint after
    its report, so a retry or `resume=` continues after the last saved epoch instead of from scratch. With
    `log_model`, the trained network is logged to the leaf's run as an MLflow model, which `register:` can then make
    a registered model version.
    """
    import tempfile

    import numpy as np
    import torch
    from torch import nn

    from runtree_pipeline import last_checkpoint, report, save_checkpoint

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    def load(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        with np.load(Path(data_dir) / name) as d:
            return torch.from_numpy(d["X"]), torch.from_numpy(d["y"])

    X_tr, y_tr = load("train.npz")
    X_val, y_val = load("val.npz")

    model = nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * channels * 4 * 4, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()

    train_loss = val_loss = val_acc = float("nan")
    start = 0
    if (checkpoint := last_checkpoint()) is not None:
        state = torch.load(checkpoint.path / "state.pt")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        train_loss, val_loss, val_acc = state["metrics"]
        start = checkpoint.step + 1
    for epoch in range(start, epochs):
        model.train()
        total, seen = 0.0, 0
        for idx in torch.randperm(len(y_tr), generator=gen).split(batch_size):
            opt.zero_grad()
            loss = loss_fn(model(X_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        train_loss = total / seen

        model.eval()
        with torch.no_grad():
            logits = model(X_val)
            val_loss = loss_fn(logits, y_val).item()
            val_acc = (logits.argmax(1) == y_val).float().mean().item()
        report(epoch, val_loss=val_loss, val_accuracy=val_acc, train_loss=train_loss)
        with tempfile.TemporaryDirectory() as tmp:  # after the report: a kill in between trains this epoch again
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()}
            torch.save({**state, "metrics": (train_loss, val_loss, val_acc)}, Path(tmp) / "state.pt")
            save_checkpoint(tmp, step=epoch)

    if log_model:
        import mlflow.pytorch

        # Requirements given, not inferred: inferring them loads the model again in a subprocess.
        mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=X_val[:2].numpy(),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    return {
        "val_loss": float(val_loss),
        "val_accuracy": float(val_acc),
        "train_loss": float(train_loss),
        "params_k": sum(p.numel() for p in model.parameters()) / 1000,
    }
