"""PyTorch sequence families over `lookback`-bar windows of each symbol's features (see
`quanto.models.sequences`): a stacked LSTM ("lstm"), 1-D convolutions over time ("cnn") and a
Transformer encoder with sinusoidal positions and a warm-up schedule ("transformer").

Shared behaviour (`SequenceModel`):
- Features are standardized with the training rows' mean and std (saved with the model); NaN is then
  0. Regression targets are standardized the same way and predictions mapped back, so the reported
  losses are in units of the training labels' std. Classification trains on BCE-with-logits and
  predicts sigmoid probabilities.
- Rows without `lookback` bars of their symbol's history are left out of training and predicted NaN.
- Adam (with `weight_decay`); with a validation window, early stopping after `patience` epochs without
  a lower validation loss and the best epoch's weights kept; without one, every epoch runs and the
  last weights are kept. `progress` gets {"step", "of", "loss", "val_loss"} after every epoch.
- With `checkpoint`, the whole training state (weights, optimizer, scheduler, RNG states, epoch, best
  weights so far) is written atomically after every epoch; a later fit with the same folder and the
  same inputs resumes after the last finished epoch and ends with the same weights as an
  uninterrupted fit (bit-identical on the CPU).
- Reproducible: torch, numpy and Python are seeded with `seed` (their global states are restored
  afterwards), torch runs with `n_jobs` threads and deterministic algorithms (previous settings
  restored afterwards; the thread count is process-wide, so run one fit per process at a time). On
  the CPU two fits with the same `n_jobs` give bit-identical predictions (a different thread count
  may change float32 summation order, hence the last bits). On a GPU, kernels without a
  deterministic version only warn, and their float32 rounding differences compound over the epochs:
  fits agree closely but not bit for bit, and no bound is promised (untested here: no GPU in CI).
- `feature_importance`: permutation importance — the rise in loss when one feature's values are
  shuffled across windows (all bars of a window together), measured after the fit on at most
  `IMPORTANCE_ROWS` validation windows (training windows without a validation window).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import random
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from quanto.config.model_params import CNNParams, LSTMParams, TorchParams, TransformerParams
from quanto.config.models import ModelConfig
from quanto.models.base import (
    Design,
    Model,
    Progress,
    check_labels,
    normalized_importance,
    one_class_note,
    register_family,
    write_atomic,
)
from quanto.models.sequences import Standardizer, windows

log = logging.getLogger(__name__)

NETWORK_FILE = "network.pt"
CHECKPOINT_FILE = "sequence_checkpoint.pt"
# Permutation importance costs one forward pass per feature over this many windows at most.
IMPORTANCE_ROWS = 2048
# Windows per forward pass when predicting; fixed so that a row's prediction never depends on how the
# caller batches its requests.
PREDICT_BATCH = 1024


# -- networks: (batch, time, features) -> (batch,) scores --------------------------------------------


class StackedLSTM(nn.Module):
    """One `nn.LSTM` per entry of `hidden`; the last bar's output of the last layer feeds the head."""

    def __init__(self, n_features: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        sizes = [n_features, *hidden]
        self.layers = nn.ModuleList(
            nn.LSTM(a, b, batch_first=True) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(sizes[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of the windows `x`."""
        for layer in self.layers:
            x, _ = layer(x)
            x = self.dropout(x)
        return self.head(x[:, -1]).squeeze(-1)


class ConvNet(nn.Module):
    """Conv1d blocks over time (features as channels), each followed by max-pooling by 2; the pooled
    map is flattened into a linear head, so the head still knows which bar a pattern came from."""

    def __init__(self, n_features: int, lookback: int, channels: list[int], kernel_size: int, dropout: float):
        super().__init__()
        blocks: list[nn.Module] = []
        length, width = lookback, n_features
        for c in channels:
            blocks += [nn.Conv1d(width, c, kernel_size, padding="same"), nn.ReLU(), nn.Dropout(dropout)]
            if length > 1:
                blocks.append(nn.MaxPool1d(2, ceil_mode=True))
                length = math.ceil(length / 2)
            width = c
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width * length, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of the windows `x`."""
        return self.head(self.body(x.transpose(1, 2)).flatten(1)).squeeze(-1)


def sinusoidal_encoding(length: int, d_model: int) -> torch.Tensor:
    """(length, d_model) positional encoding of "Attention is all you need": sin on even, cos on odd
    dimensions, wavelengths from 2*pi to 10000*2*pi."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    encoding = torch.zeros(length, d_model)
    encoding[:, 0::2] = torch.sin(position * rate)
    encoding[:, 1::2] = torch.cos(position * rate)[:, : d_model // 2]
    return encoding


class TransformerNet(nn.Module):
    """Linear embedding + sinusoidal positions, a Transformer encoder, and a head on the last bar."""

    def __init__(self, n_features: int, lookback: int, p: TransformerParams) -> None:
        super().__init__()
        self.embed = nn.Linear(n_features, p.d_model)
        self.register_buffer("position", sinusoidal_encoding(lookback, p.d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(
            p.d_model, p.n_heads, p.dim_feedforward, p.dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, p.n_layers, enable_nested_tensor=False)
        self.head = nn.Linear(p.d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of the windows `x`."""
        return self.head(self.encoder(self.embed(x) + self.position)[:, -1]).squeeze(-1)


class WarmupInverseSqrt:
    """Learning-rate factor per optimizer step: rises linearly to 1 over `warmup` steps, then decays
    as sqrt(warmup / step). A class, not a closure, so that LambdaLR's state_dict can save it."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    def __call__(self, step: int) -> float:
        s = step + 1
        return min(s / self.warmup, math.sqrt(self.warmup / s))


# -- determinism -----------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """`params.device` as a torch device: auto = cuda when torch sees a GPU, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("params.device is 'cuda' but torch sees no GPU; use device: auto or cpu")
    return torch.device(name)


@contextlib.contextmanager
def torch_session(seed: int, n_jobs: int, device: torch.device) -> Iterator[None]:
    """Seeded, single-configuration torch: `n_jobs` threads, deterministic algorithms, torch / numpy /
    Python RNGs seeded with `seed`. Everything global it changes is restored on exit, so a fit leaves
    the caller's threads and random streams as they were."""
    saved_threads = torch.get_num_threads()
    saved_det = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    saved_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    saved_py, saved_np = random.getstate(), np.random.get_state()
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.set_num_threads(n_jobs)
            # On a GPU some kernels have no deterministic version (and cuBLAS wants an environment
            # variable): warn there instead of failing the fit.
            torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_det[0], warn_only=saved_det[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved_cudnn
        random.setstate(saved_py)
        np.random.set_state(saved_np)


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def _to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# -- the families -----------------------------------------------------------------------------------


class SequenceModel(Model):
    """The training, checkpointing, prediction and artifacts shared by the sequence families (see the
    module docstring); a family supplies its parameter class and `_network`."""

    params_class: ClassVar[type[TorchParams]]

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.p = self.params_class.model_validate(cfg.params)
        self.network: nn.Module | None = None
        self.standardizer: Standardizer | None = None
        self.target = (0.0, 1.0)  # regression label (mean, std) on the training rows
        self.constant: float | None = None  # one-class classifier: P(class 1) without a network
        self.importance: list[float] = []
        self.best_epoch = 0
        self.epochs_run = 0

    @abstractmethod
    def _network(self, n_features: int) -> nn.Module:
        """A fresh network for windows of `n_features` features."""

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
        """Per-optimizer-step learning-rate schedule; none (constant rate) unless a family sets one."""
        return None

    # -- training ------------------------------------------------------------------------------------

    def fit(
        self,
        design: Design,
        rows: np.ndarray,
        y: np.ndarray,
        *,
        valid: tuple[np.ndarray, np.ndarray] | None = None,
        progress: Progress | None = None,
        checkpoint: Path | None = None,
    ) -> SequenceModel:
        """Train on the windows of `rows` (see the module docstring for early stopping, checkpoints
        and determinism). Raises ValueError when no training row has `lookback` bars of history."""
        rows = np.asarray(rows, dtype=np.int64)
        y = check_labels(self.objective, rows, y)
        device = resolve_device(self.p.device)
        self.features = list(design.columns)
        self.network, self.constant, self.importance, self.target = None, None, [], (0.0, 1.0)
        self.best_epoch = self.epochs_run = 0
        self.standardizer = Standardizer.fit(design.tabular(rows))

        x_train, y_train = self._examples(design, rows, y)
        if len(y_train) == 0:
            raise ValueError(
                f"no training row has lookback={self.p.lookback} bars of its symbol's history "
                f"({len(rows)} rows); lower lookback or start the training window later"
            )
        self.note = one_class_note(self.objective, y_train)
        if self.note is not None:
            log.warning("%s: %s", self.family, self.note)
            self.constant = float(y_train[0])
            return self
        if self.objective == "regression":
            std = float(y_train.std())
            self.target = (float(y_train.mean()), std if std > 0 else 1.0)
        x_valid = y_valid = None
        if valid is not None:
            valid_rows = np.asarray(valid[0], dtype=np.int64)
            x_valid, y_valid = self._examples(
                design, valid_rows, check_labels(self.objective, valid_rows, valid[1])
            )
            if len(y_valid) == 0:
                log.warning(
                    "%s: no validation row has a full window; training without early stopping", self.family
                )
                x_valid = y_valid = None

        fingerprint = self._fingerprint(rows, y, valid)
        with torch_session(self.cfg.seed, self.cfg.n_jobs, device):
            self.network = self._train(
                x_train,
                self._scaled(y_train),
                x_valid,
                self._scaled(y_valid),
                device,
                progress,
                checkpoint,
                fingerprint,
            )
            x_eval, y_eval = (x_train, y_train) if x_valid is None else (x_valid, y_valid)
            self.importance = self._permutation_importance(x_eval, self._scaled(y_eval), device)
        return self

    def _examples(self, design: Design, rows: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The windows of the `rows` that have a full window, and their labels."""
        x, full = windows(
            design, rows, self.p.lookback, features=self.features, standardizer=self.standardizer
        )
        return x[full], y[full]

    def _scaled(self, y: np.ndarray | None) -> np.ndarray | None:
        """Labels in training units: regression labels standardized with the training statistics."""
        if y is None or self.objective == "classification":
            return y
        return (y - self.target[0]) / self.target[1]

    def _fingerprint(
        self, rows: np.ndarray, y: np.ndarray, valid: tuple[np.ndarray, np.ndarray] | None
    ) -> str:
        """What a checkpoint must match to be resumed: the config, the features, the rows, the labels
        and the training statistics."""
        digest = hashlib.sha256(
            json.dumps(
                [self.family, self.cfg.model_dump(mode="json"), self.features], sort_keys=True
            ).encode()
        )
        assert self.standardizer is not None
        parts = [rows, y, self.standardizer.mean, self.standardizer.std, np.array(self.target)]
        if valid is not None:
            parts += [np.asarray(valid[0], dtype=np.int64), np.asarray(valid[1], dtype=np.float64)]
        for part in parts:
            digest.update(np.ascontiguousarray(part).tobytes())
        return digest.hexdigest()

    def _loss_fn(self) -> nn.Module:
        return nn.BCEWithLogitsLoss() if self.objective == "classification" else nn.MSELoss()

    def _train(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_valid: np.ndarray | None,
        y_valid: np.ndarray | None,
        device: torch.device,
        progress: Progress | None,
        checkpoint: Path | None,
        fingerprint: str,
    ) -> nn.Module:
        """The epoch loop; returns the network holding the best epoch's weights."""
        network = self._network(len(self.features)).to(device)
        optimizer = torch.optim.Adam(
            network.parameters(), lr=self.p.learning_rate, weight_decay=self.p.weight_decay
        )
        scheduler = self._scheduler(optimizer)
        shuffle = torch.Generator().manual_seed(self.cfg.seed)
        loss_fn = self._loss_fn()
        x = torch.from_numpy(x_train)
        target = torch.from_numpy(y_train.astype(np.float32))

        epoch, stale, best_loss, best = 0, 0, math.inf, _clone(network.state_dict())
        path = Path(checkpoint) / CHECKPOINT_FILE if checkpoint is not None else None
        if path is not None and path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state["fingerprint"] == fingerprint:
                network.load_state_dict(state["network"])
                optimizer.load_state_dict(state["optimizer"])
                if scheduler is not None:
                    scheduler.load_state_dict(state["scheduler"])
                torch.set_rng_state(state["rng"]["torch"])
                if device.type == "cuda" and state["rng"]["cuda"] is not None:
                    torch.cuda.set_rng_state(state["rng"]["cuda"], device)
                shuffle.set_state(state["rng"]["shuffle"])
                epoch, stale, best_loss, best = (
                    state["epoch"],
                    state["stale"],
                    state["best_loss"],
                    state["best"],
                )
                self.best_epoch = state["best_epoch"]
                log.info("%s: resuming from %s after epoch %d", self.family, path, epoch)
            else:
                log.warning("%s: checkpoint %s belongs to another fit; starting afresh", self.family, path)

        while epoch < self.p.epochs and stale < self.p.patience:
            network.train()
            total = 0.0
            for batch in torch.randperm(len(x), generator=shuffle).split(self.p.batch_size):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(network(x[batch].to(device)), target[batch].to(device))
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                total += float(loss.item()) * len(batch)
            epoch += 1
            train_loss = total / len(x)
            if not math.isfinite(train_loss):
                raise ValueError(
                    f"{self.family} training diverged (loss {train_loss} at epoch {epoch}); "
                    f"lower params.learning_rate (now {self.p.learning_rate})"
                )
            val_loss = None if x_valid is None else self._loss(network, x_valid, y_valid, device)
            # Without a validation window every epoch counts as the best: the last weights are kept.
            if val_loss is None or val_loss < best_loss:
                best, stale, self.best_epoch = _clone(network.state_dict()), 0, epoch
                best_loss = math.inf if val_loss is None else val_loss
            else:
                stale += 1
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                state = {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "stale": stale,
                    "best_loss": best_loss,
                    "best_epoch": self.best_epoch,
                    "best": best,
                    "network": network.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "rng": {
                        "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                        "shuffle": shuffle.get_state(),
                    },
                }
                write_atomic(path, _to_bytes(state))
            if progress is not None:
                progress({"step": epoch, "of": self.p.epochs, "loss": train_loss, "val_loss": val_loss})
        self.epochs_run = epoch
        network.load_state_dict(best)
        return network.eval()

    def _scores(self, network: nn.Module, x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
        """Raw network outputs (logits / standardized values) of windows `x`, on the CPU."""
        x = torch.as_tensor(x)
        network.eval()
        with torch.inference_mode():
            parts = [network(chunk.to(device)).float().cpu() for chunk in x.split(PREDICT_BATCH)]
        return torch.cat(parts) if parts else torch.zeros(0)

    def _loss(
        self, network: nn.Module, x: np.ndarray | torch.Tensor, y: np.ndarray, device: torch.device
    ) -> float:
        target = torch.from_numpy(np.asarray(y, dtype=np.float32))
        return float(self._loss_fn()(self._scores(network, x, device), target).item())

    def _permutation_importance(self, x: np.ndarray, y: np.ndarray, device: torch.device) -> list[float]:
        """Rise in loss when one feature is shuffled across windows, per feature (floored at 0)."""
        assert self.network is not None
        order = torch.Generator().manual_seed(self.cfg.seed + 1)
        pick = torch.randperm(len(x), generator=order)[:IMPORTANCE_ROWS]
        sample = torch.from_numpy(x)[pick]
        base = self._loss(self.network, sample, y[pick.numpy()], device)
        rises = []
        for f in range(sample.shape[2]):
            shuffled = sample.clone()
            shuffled[:, :, f] = sample[torch.randperm(len(sample), generator=order), :, f]
            rises.append(max(self._loss(self.network, shuffled, y[pick.numpy()], device) - base, 0.0))
        return rises

    # -- inference -----------------------------------------------------------------------------------

    def predict(self, design: Design, rows: np.ndarray) -> np.ndarray:
        """Regression: the predicted value; classification: P(class 1). NaN for rows without
        `lookback` bars of their symbol's history."""
        if self.network is None and self.constant is None:
            raise RuntimeError(f"{self.family} model is not fitted")
        rows = np.asarray(rows, dtype=np.int64)
        x, full = windows(
            design, rows, self.p.lookback, features=self.features, standardizer=self.standardizer
        )
        out = np.full(len(rows), np.nan, dtype=np.float64)
        if self.constant is not None:
            out[full] = self.constant
            return out
        assert self.network is not None
        device = resolve_device(self.p.device)
        with torch_session(self.cfg.seed, self.cfg.n_jobs, device):
            self.network.to(device)
            scores = self._scores(self.network, x[full], device).double()
        if self.objective == "classification":
            out[full] = torch.sigmoid(scores).numpy()
        else:
            out[full] = scores.numpy() * self.target[1] + self.target[0]
        return out

    def feature_importance(self) -> dict[str, float]:
        """Permutation importance (see the module docstring), normalized to sum 1, largest first."""
        values = self.importance or [0.0] * len(self.features)
        return normalized_importance(self.features, np.asarray(values))

    # -- artifacts -----------------------------------------------------------------------------------

    def _save_state(self, folder: Path) -> dict[str, Any]:
        if self.network is None and self.constant is None:
            raise RuntimeError(f"{self.family} model is not fitted")
        assert self.standardizer is not None
        weights = None if self.network is None else {k: v.cpu() for k, v in self.network.state_dict().items()}
        payload = {
            "network": weights,
            "mean": torch.from_numpy(self.standardizer.mean),
            "std": torch.from_numpy(self.standardizer.std),
        }
        write_atomic(folder / NETWORK_FILE, _to_bytes(payload))
        return {
            "file": NETWORK_FILE,
            "torch_version": torch.__version__,
            "target": list(self.target),
            "constant": self.constant,
            "importance": self.importance,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
        }

    def _load_state(self, folder: Path, state: dict[str, Any]) -> None:
        payload = torch.load(folder / state["file"], map_location="cpu", weights_only=True)
        self.standardizer = Standardizer(mean=payload["mean"].numpy(), std=payload["std"].numpy())
        self.target = (float(state["target"][0]), float(state["target"][1]))
        self.constant = None if state["constant"] is None else float(state["constant"])
        self.importance = [float(v) for v in state["importance"]]
        self.best_epoch, self.epochs_run = int(state["best_epoch"]), int(state["epochs_run"])
        if payload["network"] is not None:
            self.network = self._network(len(self.features))
            self.network.load_state_dict(payload["network"])
            self.network.eval()


@register_family
class LSTMModel(SequenceModel):
    """Stacked LSTM (`hidden`, e.g. [128, 64, 32]) over the window; head on the last bar."""

    family = "lstm"
    params_class = LSTMParams

    def _network(self, n_features: int) -> nn.Module:
        p = self.p
        assert isinstance(p, LSTMParams)
        return StackedLSTM(n_features, p.hidden, p.dropout)


@register_family
class CNNModel(SequenceModel):
    """Conv1d blocks (`channels`, `kernel_size`) over time with max-pooling and a linear head."""

    family = "cnn"
    params_class = CNNParams

    def _network(self, n_features: int) -> nn.Module:
        p = self.p
        assert isinstance(p, CNNParams)
        return ConvNet(n_features, p.lookback, p.channels, p.kernel_size, p.dropout)


@register_family
class TransformerModel(SequenceModel):
    """Transformer encoder with sinusoidal positions; linear warm-up over `warmup_steps` optimizer
    steps, then inverse-square-root decay of the learning rate."""

    family = "transformer"
    params_class = TransformerParams

    def _network(self, n_features: int) -> nn.Module:
        assert isinstance(self.p, TransformerParams)
        return TransformerNet(n_features, self.p.lookback, self.p)

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        assert isinstance(self.p, TransformerParams)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupInverseSqrt(self.p.warmup_steps))
