"""The model registry: each trained model's artifact under `models/<id>/` in the lake, a row in
PostgreSQL, and its stage, `candidate` or `production`.

`register_model` saves the model, then records it (a new model is a candidate), then writes
`card.json` last — features with their registry versions, config, data hashes, metrics, the SHA-256
of every artifact file, created_at and code version — so a folder with a card is a complete artifact.
The stage lives in PostgreSQL only (it changes; the card does not): `promote` makes a model the
production model of its name (the job name) and demotes the previous one in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from quanto.config.models import ModelConfig, PipelineConfig
from quanto.contracts import FileRef
from quanto.errors import InputError
from quanto.lake.materialize import code_version
from quanto.lake.storage import Lake, atomic_write_bytes, sha256_file
from quanto.models.base import Model, config_family, load_model
from quanto.store import records

STAGES = records.MODEL_STAGES
CARD_FILE = "card.json"
CARD_VERSION = 1
# Starts with a letter or digit, so an id can never be "." or ".." or climb out of models/.
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class UnknownModelError(InputError):
    """No registered model has the id asked for."""


@dataclass(frozen=True)
class ModelRecord:
    """What the registry knows about one model (its PostgreSQL row).

    `features` maps each feature column, in the model's order, to its feature-registry version
    (None for a column a panel step derives, e.g. cross-sectional ranks or PCA factors).
    `data_hashes` maps lake paths of the training data to their SHA-256 (a bare list of hashes in
    rows the train stage wrote before the registry existed).
    """

    model_id: str
    name: str
    family: str
    objective: str
    stage: str
    path: str
    features: dict[str, int | None]
    config: dict[str, Any]
    data_hashes: dict[str, str] | list[str]
    metrics: dict[str, Any]
    created_at: dt.datetime
    promoted_at: dt.datetime | None = None
    fold_summary: Any = None
    code_version: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ModelRecord:
        """The record of a `models` row (see `quanto.store.records`)."""
        versions = row["feature_versions"] or {}
        return cls(
            model_id=row["model_id"],
            name=row["name"],
            family=row["kind"],
            objective=row["objective"],
            stage=row["stage"],
            path=row["path"],
            features={n: versions.get(n) for n in row["features"]},
            config=row["config"],
            data_hashes=row["data_hashes"],
            metrics=row["metrics"],
            created_at=row["created_at"],
            promoted_at=row["promoted_at"],
            fold_summary=row["fold_summary"],
            code_version=row["code_version"],
        )

    def summary(self) -> dict[str, Any]:
        """The listing fields (`quanto models ls`)."""
        return {
            "model_id": self.model_id,
            "name": self.name,
            "family": self.family,
            "objective": self.objective,
            "stage": self.stage,
            "created_at": self.created_at.isoformat(),
            "metrics": self.metrics,
        }

    def to_json(self) -> dict[str, Any]:
        """Every field as plain JSON (`quanto models show`)."""
        return {
            **self.summary(),
            "promoted_at": self.promoted_at.isoformat() if self.promoted_at else None,
            "path": self.path,
            "features": self.features,
            "config": self.config,
            "data_hashes": self.data_hashes,
            "fold_summary": self.fold_summary,
            "code_version": self.code_version,
        }


@dataclass(frozen=True)
class Promotion:
    """What `promote` did: `demoted` lists the previous production model(s) of `name`; `changed` is
    False when the model already was the production model."""

    model_id: str
    name: str
    promoted_at: dt.datetime
    demoted: list[str] = field(default_factory=list)
    changed: bool = True

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (`quanto models promote`)."""
        return {
            "model_id": self.model_id,
            "name": self.name,
            "stage": "production",
            "promoted_at": self.promoted_at.isoformat(),
            "demoted": self.demoted,
            "changed": self.changed,
        }


@dataclass(frozen=True)
class Artifact:
    """A model's folder in the lake as found now: `files` (each with its SHA-256 on disk, the card
    last) and `problems` (no card, files missing or changed since registration; empty when intact)."""

    folder: Path
    files: list[FileRef]
    problems: list[str]


def model_path(model_id: str) -> str:
    """The lake-relative folder of a model's artifact, after checking the id."""
    if not isinstance(model_id, str) or not _MODEL_ID.match(model_id):
        raise InputError(
            f"model_id: {model_id!r} is not a valid id (1-128 letters, digits, '_', '.', '-', "
            "starting with a letter or digit)"
        )
    return f"models/{model_id}"


def feature_versions(columns: Iterable[str]) -> dict[str, int | None]:
    """Each feature column's version in the feature registry, in order; None for a column that no
    registered feature computes (panel steps: cross-sectional, benchmark, PCA, ...)."""
    from quanto.features.registry import REGISTRY  # imports every family, so the registry is full
    from quanto.features.talib_catalog import resolve_name

    out: dict[str, int | None] = {}
    for column in columns:
        # A parameterized TA-Lib feature is registered on first use in a process: re-create it.
        name = column if column in REGISTRY else resolve_name(column)
        out[column] = REGISTRY[name].version if name is not None else None
    return out


def register_model(
    lake: Lake,
    model: Model,
    *,
    model_id: str,
    config: PipelineConfig | Mapping[str, Any],
    features: Mapping[str, int | None],
    data_hashes: Mapping[str, str],
    metrics: Mapping[str, Any],
    fold_summary: Any = None,
    db: psycopg.Connection | None = None,
) -> ModelRecord:
    """Write a fitted model's artifact under `models/<model_id>/` and record it as a candidate.

    `config`: the job (a PipelineConfig, or a dict with the job's `name`, which groups models for
    promotion). `features`: feature column -> registry version, in the model's column order (see
    `feature_versions`). `data_hashes`: lake path -> SHA-256 of the data it was trained on.
    `metrics` and `fold_summary`: plain JSON (NaN and infinities are stored as null). `db`: a
    connection to record the row on (a stage's `ctx.db()`); None writes the artifact only.
    Registering the same id again rewrites the artifact and the row, keeping stage and created_at.
    """
    path = model_path(model_id)
    cfg = config.model_dump(mode="json") if isinstance(config, PipelineConfig) else _json("config", config)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("name"), str) or not cfg["name"]:
        raise InputError("config: needs the job's 'name' (models are listed and promoted by it)")
    model_cfg = cfg.get("model")
    if isinstance(model_cfg, dict) and "kind" in model_cfg and not model_cfg.get("automl"):
        # An AutoML winner's family is chosen per fold; anything else must be what the config builds.
        expected = config_family(ModelConfig.model_validate(model_cfg))
        if expected != model.family:
            raise InputError(
                f"config: model builds family {expected!r} but the model is family {model.family!r}"
            )
    versions = _feature_versions(model, features)
    hashes = _data_hashes(data_hashes)
    if not isinstance(metrics, Mapping):
        raise InputError(f"metrics: expected a mapping name -> value, got {metrics!r}")
    metrics_json = _json("metrics", dict(metrics))
    summary_json = _json("fold_summary", fold_summary)

    folder = lake.abspath(path)
    saved = [p for p in model.save(folder) if p.name != CARD_FILE]
    card_file = folder / CARD_FILE
    created_at = dt.datetime.now(dt.UTC)
    if card_file.is_file():  # registered before: keep the first registration time
        created_at = dt.datetime.fromisoformat(json.loads(card_file.read_text())["created_at"])
    row = {
        "model_id": model_id,
        "name": cfg["name"],
        "kind": model.family,
        "objective": model.objective,
        "path": path,
        "features": list(versions),
        "feature_versions": versions,
        "config": cfg,
        "data_hashes": hashes,
        "metrics": metrics_json,
        "fold_summary": summary_json,
        "code_version": code_version(),
        "created_at": created_at,
    }
    stored = records.upsert_model(db, row) if db is not None else None
    if stored is not None:
        created_at = stored["created_at"]
    card = {
        "card_version": CARD_VERSION,
        "model_id": model_id,
        "name": cfg["name"],
        "family": model.family,
        "objective": model.objective,
        "features": versions,
        "config": cfg,
        "data_hashes": hashes,
        "metrics": metrics_json,
        "fold_summary": summary_json,
        "files": {p.name: sha256_file(p) for p in saved},
        "created_at": created_at.isoformat(),
        "code_version": row["code_version"],
    }
    # Last: the card's presence (and its hashes) is what marks a complete, registered artifact.
    atomic_write_bytes(card_file, (json.dumps(card, indent=2) + "\n").encode())
    if stored is not None:
        return ModelRecord.from_row(stored)
    return ModelRecord.from_row({**row, "stage": "candidate", "promoted_at": None})


def read_card(lake: Lake, model_id: str) -> dict[str, Any]:
    """The card.json of a registered model; UnknownModelError when the lake has none."""
    card = lake.abspath(model_path(model_id)) / CARD_FILE
    if not card.is_file():
        raise UnknownModelError(f"model {model_id!r}: no {CARD_FILE} in {card.parent} (not registered here)")
    return json.loads(card.read_text())


def inspect_artifact(lake: Lake, model_id: str) -> Artifact:
    """The model's artifact files as they are now, checked against the hashes its card recorded."""
    path = model_path(model_id)
    folder = lake.abspath(path)
    try:
        listed: dict[str, str] = read_card(lake, model_id)["files"]
    except UnknownModelError as err:
        return Artifact(folder=folder, files=[], problems=[str(err)])
    files: list[FileRef] = []
    problems: list[str] = []
    for name, want in listed.items():
        file = folder / name
        if not file.is_file():
            problems.append(f"{name}: missing")
            continue
        digest = sha256_file(file)
        if digest != want:
            problems.append(f"{name}: changed since registration (sha256 {digest[:12]}, card {want[:12]})")
        files.append(FileRef(path=f"{path}/{name}", sha256=digest, role="model"))
    card = folder / CARD_FILE
    files.append(FileRef(path=f"{path}/{CARD_FILE}", sha256=sha256_file(card), role="model_card"))
    return Artifact(folder=folder, files=files, problems=problems)


def load_registered(lake: Lake, model_id: str) -> Model:
    """The registered model, read back from its artifact after checking the card's file hashes."""
    artifact = inspect_artifact(lake, model_id)
    if artifact.problems:
        raise InputError(f"model {model_id!r} in {artifact.folder}: " + "; ".join(artifact.problems))
    return load_model(artifact.folder)


def list_models(
    db: psycopg.Connection, name: str | None = None, stage: str | None = None
) -> list[ModelRecord]:
    """Registered models, newest first; only those of job `name` and/or `stage` when given."""
    if stage is not None and stage not in STAGES:
        raise InputError(f"stage: unknown stage {stage!r}; known: {', '.join(STAGES)}")
    return [ModelRecord.from_row(r) for r in records.select_models(db, name=name, stage=stage)]


def get_model(db: psycopg.Connection, model_id: str) -> ModelRecord:
    """The record of `model_id`; UnknownModelError naming it when no model has that id."""
    row = records.select_model(db, model_id)
    if row is None:
        raise _unknown(db, model_id)
    return ModelRecord.from_row(row)


def promote(db: psycopg.Connection, model_id: str) -> Promotion:
    """Make `model_id` the production model of its name; the previous one becomes a candidate again
    (one transaction). Promoting the production model again changes nothing."""
    done = records.promote_model(db, model_id)
    if done is None:
        raise _unknown(db, model_id)
    return Promotion(**done)


def _unknown(db: psycopg.Connection, model_id: str) -> UnknownModelError:
    ids = [r.model_id for r in list_models(db)]
    close = difflib.get_close_matches(model_id, ids, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f" ({len(ids)} models registered)"
    return UnknownModelError(f"model {model_id!r} is not registered{hint}")


def _feature_versions(model: Model, features: Mapping[str, int | None]) -> dict[str, int | None]:
    if not isinstance(features, Mapping) or not features:
        raise InputError(f"features: expected a non-empty mapping feature -> version, got {features!r}")
    versions = dict(features)
    for name, version in versions.items():
        if not isinstance(name, str) or not (version is None or (isinstance(version, int) and version >= 1)):
            raise InputError(f"features: {name!r} -> {version!r}; versions are integers >= 1 or None")
    # The card must describe the model it sits beside: same columns, same order.
    if model.features and list(versions) != list(model.features):
        raise InputError(
            f"features: {list(versions)[:5]}... do not match the model's columns {model.features[:5]}... "
            "(same names, same order)"
        )
    return versions


def _data_hashes(data_hashes: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(data_hashes, Mapping):
        raise InputError(f"data_hashes: expected a mapping lake path -> SHA-256, got {data_hashes!r}")
    for path, digest in data_hashes.items():
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise InputError(f"data_hashes[{path!r}]: {digest!r} is not a SHA-256 hex digest")
    return dict(data_hashes)


def _json(name: str, value: Any) -> Any:
    """`value` as plain JSON: numpy scalars unwrapped, dates as ISO strings, NaN and infinities as
    null (PostgreSQL's jsonb has no NaN); InputError naming the field for anything else."""

    def plain(v: Any) -> Any:
        if hasattr(v, "tolist"):  # numpy scalars and arrays
            return v.tolist()
        if isinstance(v, dt.date | dt.datetime):
            return v.isoformat()
        raise TypeError(f"{type(v).__name__} {v!r}")

    try:
        text = json.dumps(value, default=plain)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name}: not JSON-serializable ({err})") from None
    return json.loads(text, parse_constant=lambda _: None)
