"""Publishing a training run: weights export (export.py), MLflow LoggedModels and the registry
(models.py, with the pyfunc model in pyfunc_model.py), the per-epoch hooks the training loop
calls (publisher.py), the Hub mirror (mirror.py), the background epoch upload (uploader.py) and
the model card (card.py)."""
