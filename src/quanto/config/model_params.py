"""Parameters of each model family, as job files give them under `model.params`.

Kept apart from the families themselves so that loading a job file validates `model.params` without
importing LightGBM, XGBoost or PyTorch.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FamilyName = Literal[
    "lightgbm", "xgboost", "random_forest", "extra_trees", "linear", "lstm", "cnn", "transformer"
]

# Family -> the module whose import registers it (see quanto.models.base.family_class).
FAMILY_MODULES: dict[str, str] = {
    "lightgbm": "quanto.models.gbdt",
    "xgboost": "quanto.models.gbdt",
    "random_forest": "quanto.models.tabular",
    "extra_trees": "quanto.models.tabular",
    "linear": "quanto.models.tabular",
    "lstm": "quanto.models.sequence",
    "cnn": "quanto.models.sequence",
    "transformer": "quanto.models.sequence",
}
SEQUENCE_FAMILIES = frozenset({"lstm", "cnn", "transformer"})


class Params(BaseModel):
    """Base of every family's parameters: unknown keys are errors, so a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")


class LightGBMParams(Params):
    """LightGBM (native API); `early_stopping_rounds` uses the validation window when there is one."""

    n_estimators: int = Field(200, ge=1, le=100_000)
    learning_rate: float = Field(0.05, gt=0, le=1)
    num_leaves: int = Field(15, ge=2, le=4096)
    min_child_samples: int = Field(50, ge=1)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(0.0, ge=0)
    early_stopping_rounds: int | None = Field(None, ge=1)


class XGBoostParams(Params):
    """XGBoost (hist tree method); `early_stopping_rounds` uses the validation window when there is one."""

    n_estimators: int = Field(200, ge=1, le=100_000)
    learning_rate: float = Field(0.05, gt=0, le=1)
    max_depth: int = Field(4, ge=1, le=32)
    min_child_weight: float = Field(1.0, ge=0)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    early_stopping_rounds: int | None = Field(None, ge=1)


class ForestParams(Params):
    """scikit-learn RandomForest / ExtraTrees."""

    n_estimators: int = Field(300, ge=1, le=100_000)
    max_depth: int | None = Field(None, ge=1)
    min_samples_leaf: int = Field(50, ge=1)
    max_features: Literal["sqrt", "log2"] | float = "sqrt"


class LinearParams(Params):
    """Ridge / lasso regression, or L2 / L1 logistic regression, on standardized features (NaN filled
    with the training median). `alpha` is the penalty strength (logistic: C = 1 / alpha)."""

    penalty: Literal["l2", "l1"] = "l2"
    alpha: float = Field(1.0, gt=0)
    max_iter: int = Field(1000, ge=10)


class TorchParams(Params):
    """Shared by the PyTorch sequence models: windows of `lookback` bars, Adam, early stopping on the
    validation window after `patience` epochs without improvement."""

    lookback: int = Field(20, ge=2, le=1000)
    epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(1e-3, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    patience: int = Field(5, ge=1)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a GPU when one is present")


class LSTMParams(TorchParams):
    """Stacked LSTM: one layer per entry of `hidden` (e.g. 128-64-32), then a linear head."""

    hidden: list[int] = Field(default_factory=lambda: [128, 64, 32], min_length=1)


class CNNParams(TorchParams):
    """1-D convolutions over time with the features as channels, then global pooling and a head."""

    channels: list[int] = Field(default_factory=lambda: [32, 32], min_length=1)
    kernel_size: int = Field(3, ge=1)


class TransformerParams(TorchParams):
    """Transformer encoder with sinusoidal positional encoding; the learning rate warms up linearly
    over `warmup_steps` optimizer steps, then decays as 1/sqrt(step)."""

    d_model: int = Field(32, ge=4)
    n_heads: int = Field(4, ge=1)
    n_layers: int = Field(2, ge=1)
    dim_feedforward: int = Field(64, ge=4)
    warmup_steps: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerParams:
        # Multi-head attention splits d_model evenly across the heads.
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        return self


PARAMS: dict[str, type[Params]] = {
    "lightgbm": LightGBMParams,
    "xgboost": XGBoostParams,
    "random_forest": ForestParams,
    "extra_trees": ForestParams,
    "linear": LinearParams,
    "lstm": LSTMParams,
    "cnn": CNNParams,
    "transformer": TransformerParams,
}


def _or_shorthand(schema: dict[str, Any]) -> None:
    # The JSON Schema (editor completion) accepts the list shorthand as well as the object form.
    full = dict(schema)
    schema.clear()
    schema["anyOf"] = [full, {"type": "array", "minItems": 1, "items": {"type": ["number", "string"]}}]


class SearchDim(BaseModel):
    """One dimension of a hyperparameter search space: a range `low`..`high` (log-uniform when
    `log`), or a list of `choices`. Job files write it short: `[low, high]`, `[low, high, log]`, or a
    list of choices such as `[l1, l2]` (`{choices: [16, 32]}` for two numbers, which would read as a
    range). Integer parameters are sampled as integers."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_or_shorthand)

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    choices: list[str | int | float] | None = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if not isinstance(data, list | tuple):
            return data
        numbers = [v for v in data if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(data) == 2 and len(numbers) == 2:
            return {"low": data[0], "high": data[1]}
        if len(data) == 3 and len(numbers) == 2 and data[2] == "log":
            return {"low": data[0], "high": data[1], "log": True}
        return {"choices": list(data)}

    @model_validator(mode="after")
    def _one_form(self) -> SearchDim:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("give either choices or a range (low, high, log), not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs low and high, e.g. [0.01, 0.2] or [0.01, 0.2, log]")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self

    def values(self) -> list[Any]:
        """The values whose validity bounds the dimension's: the choices, or low and high."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


def _dims(space: dict[str, Any]) -> dict[str, SearchDim]:
    return {name: SearchDim.model_validate(dim) for name, dim in space.items()}


_GBDT_COMMON = {
    "learning_rate": [0.01, 0.2, "log"],
    "subsample": [0.5, 1.0],
    "colsample_bytree": [0.5, 1.0],
    "reg_lambda": [1e-3, 10.0, "log"],
}
_TORCH_COMMON = {
    "learning_rate": [1e-4, 1e-2, "log"],
    "dropout": [0.0, 0.5],
    "weight_decay": [1e-6, 1e-2, "log"],
}

# What `model.tuning` and `model.automl` search per family unless the job file gives a `space`.
# Sizes that mostly cost time (n_estimators, epochs, lookback, layer widths) stay as configured.
DEFAULT_SPACES: dict[str, dict[str, SearchDim]] = {
    "lightgbm": _dims({**_GBDT_COMMON, "num_leaves": [7, 63, "log"], "min_child_samples": [10, 200, "log"]}),
    "xgboost": _dims({**_GBDT_COMMON, "max_depth": [2, 8], "min_child_weight": [0.1, 20.0, "log"]}),
    "random_forest": _dims(
        {"max_depth": [3, 16], "min_samples_leaf": [5, 200, "log"], "max_features": ["sqrt", "log2", 0.5]}
    ),
    "extra_trees": _dims(
        {"max_depth": [3, 16], "min_samples_leaf": [5, 200, "log"], "max_features": ["sqrt", "log2", 0.5]}
    ),
    "linear": _dims({"alpha": [1e-4, 100.0, "log"], "penalty": ["l2", "l1"]}),
    "lstm": _dims(_TORCH_COMMON),
    "cnn": _dims({**_TORCH_COMMON, "kernel_size": [2, 7]}),
    "transformer": _dims({**_TORCH_COMMON, "warmup_steps": [10, 500, "log"]}),
}


def integer_param(kind: str, name: str) -> bool:
    """Whether parameter `name` of family `kind` takes integers only (so a range samples integers)."""
    annotation = PARAMS[kind].model_fields[name].annotation
    args = get_args(annotation) or (annotation,)
    return int in args and float not in args


def check_space(kind: str, space: dict[str, SearchDim], params: dict[str, Any]) -> None:
    """Raise ValueError unless every dimension of `space` names a parameter of family `kind` and its
    bounds (or choices) are valid values of it, the other parameters as in `params`."""
    model = PARAMS[kind]
    for name, dim in space.items():
        if name not in model.model_fields:
            raise ValueError(
                f"space.{name}: {kind} has no parameter {name!r}; known: {sorted(model.model_fields)}"
            )
        fractional = dim.choices is None and not (
            float(dim.low).is_integer() and float(dim.high).is_integer()
        )
        if fractional and integer_param(kind, name):
            raise ValueError(f"space.{name}: {kind}.{name} takes integers, got [{dim.low}, {dim.high}]")
        for value in dim.values():
            try:
                model.model_validate({**params, name: value})
            except ValidationError as err:
                raise ValueError(
                    f"space.{name}: {value!r} is not a valid {kind} {name}: {err.errors()[0]['msg']}"
                ) from None
