"""detox's small masked autoencoder (the restorer of the ``bdmae`` purifier).

:class:`MAE` (:mod:`detox.mae.model`): a small ViT encoder/decoder for 32x32 images with
``restore(x, mask)``; :func:`train_mae`, :func:`save_mae`, :func:`load_mae` (safetensors
only) and :func:`packaged_mae` (the folder shipped for a dataset) in :mod:`detox.mae.train`.
detox trains these itself (``benchmarks/train_mae.py``): BDMAE's authors use Meta's
pretrained ImageNet MAE, which detox cannot download.
"""

from detox.mae.model import MAE, MAEConfig
from detox.mae.train import MAETrainConfig, load_mae, packaged_mae, save_mae, train_mae

__all__ = [
    "MAE",
    "MAEConfig",
    "MAETrainConfig",
    "load_mae",
    "packaged_mae",
    "save_mae",
    "train_mae",
]
