"""The model, with no MLflow: the Timer-XL backbone, the rain classifier on it, and their files.

- `timerxl.py`: `TimerXL` (official-checkpoint compatible); `classifier.py`: `RainClassifier` (pooling + head).
- `factory.py`: `build_classifier` from a config; `RainModel`, a trained classifier with its inputs' treatment.
- `transfer.py`: pretrained backbone weights loaded and frozen; `checkpoint.py`: our `best.pt` / `last.pt`.
"""
