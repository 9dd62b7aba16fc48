"""Test-time defenses: every purifier maps input images to cleaned images.

``PURIFIERS`` maps names to purifier classes; ``build_purifier(name, preset, **overrides)``
makes one with its typed config; :func:`purify_all` purifies a uint8 image set in batches
with a progress bar. Registered: ``sampdetox``
(diffusion, the method), ``zip`` (diffusion restoration of a degraded input), ``sancdifi``
(diffusion regeneration of the victim's salient region), ``bdmae`` (masked-autoencoder
restoration of the tokens whose masking changes the victim's label), ``lite-bd``
(down-up scaling and band-by-band frequency filtering, querying the victim) and the
training-free baselines ``shrinkpad`` and ``median``.
"""

from detox.defenses.purifiers.base import (
    PURIFIERS,
    NoiseStreams,
    Purifier,
    build_purifier,
    purify_all,
)
from detox.defenses.purifiers.bdmae import BDMAE  # registers "bdmae"
from detox.defenses.purifiers.litebd import LiteBD  # registers "lite-bd"
from detox.defenses.purifiers.median import Median  # registers "median"
from detox.defenses.purifiers.sampdetox import (  # registers "sampdetox"
    SampDetox,
    SampDetoxConfig,
    SampDetoxOutput,
    ssim_map,
)
from detox.defenses.purifiers.sancdifi import Sancdifi  # registers "sancdifi"
from detox.defenses.purifiers.shrinkpad import ShrinkPad  # registers "shrinkpad"
from detox.defenses.purifiers.zip import ZIP  # registers "zip"

__all__ = [
    "BDMAE",
    "PURIFIERS",
    "LiteBD",
    "Median",
    "NoiseStreams",
    "Purifier",
    "SampDetox",
    "SampDetoxConfig",
    "SampDetoxOutput",
    "Sancdifi",
    "ShrinkPad",
    "ZIP",
    "build_purifier",
    "purify_all",
    "ssim_map",
]
