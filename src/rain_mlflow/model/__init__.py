"""Timer-XL backbone (official-checkpoint compatible), the rain classifier built on it, and checkpoint transfer."""

from rain_mlflow.model.classifier import POOLINGS, RainClassifier
from rain_mlflow.model.timerxl import TimerXL
from rain_mlflow.model.transfer import load_pretrained_backbone, set_backbone_frozen

__all__ = ["POOLINGS", "RainClassifier", "TimerXL", "load_pretrained_backbone", "set_backbone_frozen"]
