"""The multi-task recommender: config, feature embeddings, backbones, retrieval head, losses."""

from mtl.models.losses import MultiTaskLoss
from mtl.models.model import ModelOutput, MultiTaskRecModel, build_model
from mtl.models.model_config import ModelConfig, load_model_config

__all__ = ["ModelConfig", "ModelOutput", "MultiTaskLoss", "MultiTaskRecModel", "build_model", "load_model_config"]
