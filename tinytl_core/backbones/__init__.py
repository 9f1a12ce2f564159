"""timm backbone catalog and creation, one module per concern (laid out like timm's own ``_registry``,
``_builder``, ``_hub``):

- :mod:`~tinytl_core.backbones.catalog` -- :func:`list_backbones`, :func:`backbone_info`, :func:`families`,
  kinds (cnn / transformer / hybrid / mlp) and which architectures have pretrained weights.
- :mod:`~tinytl_core.backbones.local` -- :data:`LOCAL_BACKBONES`: backbones pretrained by this project and
  shipped in ``tinytl_core/weights`` (the demo backbone, listed first): they load with no network, so
  offline transfer is real.
- :mod:`~tinytl_core.backbones.hub` -- pretrained weights from the network: offline mode, reachability,
  the cache, a bounded download and :func:`weights_availability`.
- :mod:`~tinytl_core.backbones.builder` -- :func:`create_backbone` builds a model for N classes; a
  pretrained-weights request that cannot be met (offline, nothing cached, time-out) falls back to random
  init and says so in :class:`BackboneStatus`. :func:`meta_backbone` builds shapes only.
- :mod:`~tinytl_core.backbones.config` -- :func:`data_config` resolves the model's own input size, mean
  and std from timm's pretrained config.

The names below are re-exported so ``from tinytl_core.backbones import X`` works for all of them. To
change behaviour in a test, patch the defining module's public name (e.g. ``hub.cached_weights``,
``hub.host_reachable``, ``catalog.pretrained_architectures``, ``local.WEIGHTS_DIR``): the modules look
those up there, not here.
"""

from tinytl_core.backbones.builder import (
    BackboneStatus,
    accepts_img_size,
    classifier_heads,
    create_backbone,
    meta_backbone,
)
from tinytl_core.backbones.catalog import (
    CURATED_BACKBONES,
    KINDS,
    BackboneInfo,
    backbone_info,
    check_backbone_name,
    families,
    family_kind,
    list_backbones,
    pretrained_architectures,
)
from tinytl_core.backbones.config import (
    DataConfig,
    data_config,
    feature_stride,
    known_shape_error,
    own_resolution,
    plain_shape_error,
    resolution_problem,
    small_resolution_warning,
    smallest_resolution,
)
from tinytl_core.backbones.hub import (
    DEFAULT_DOWNLOAD_TIMEOUT_S,
    PROBE_TIMEOUT_S,
    WeightsAvailability,
    weights_availability,
)
from tinytl_core.backbones.local import (
    DEMO_BACKBONE,
    LOCAL_BACKBONES,
    WEIGHTS_DIR,
    LocalBackbone,
    default_backbone,
    load_local_backbone,
)

__all__ = [
    "CURATED_BACKBONES",
    "DEFAULT_DOWNLOAD_TIMEOUT_S",
    "DEMO_BACKBONE",
    "KINDS",
    "LOCAL_BACKBONES",
    "PROBE_TIMEOUT_S",
    "WEIGHTS_DIR",
    "BackboneInfo",
    "BackboneStatus",
    "DataConfig",
    "LocalBackbone",
    "WeightsAvailability",
    "accepts_img_size",
    "backbone_info",
    "check_backbone_name",
    "classifier_heads",
    "create_backbone",
    "data_config",
    "default_backbone",
    "families",
    "feature_stride",
    "family_kind",
    "list_backbones",
    "own_resolution",
    "load_local_backbone",
    "meta_backbone",
    "pretrained_architectures",
    "known_shape_error",
    "plain_shape_error",
    "resolution_problem",
    "small_resolution_warning",
    "smallest_resolution",
    "weights_availability",
]
