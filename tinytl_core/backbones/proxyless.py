"""ProxylessNAS-Mobile, the backbone of the TinyTL paper's Table 2, built with timm's own machinery.

Registered with timm (``timm.models.register_model``) as :data:`PROXYLESS_MOBILE`, so
``timm.create_model("proxylessnas_mobile")``, the catalog, the modes, the memory model and the engine
treat it like any timm architecture. It is a :class:`timm.models.efficientnet.EfficientNet` built from an
architecture definition (:data:`ARCH_DEF`, decoded by ``timm.models._efficientnet_builder``), so lite
residual branches are found for it as for the rest of the MobileNet family.

No pretrained weights ship for it (timm has none, and the paper's ImageNet weights are not on PyPI): it
starts from random initialisation. Its memory analysis does not depend on the weights and is exact.
"""

from __future__ import annotations

from functools import partial

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models._registry import generate_default_cfgs
from timm.models.efficientnet import EfficientNet, _create_effnet
from torch import nn

PROXYLESS_MOBILE = "proxylessnas_mobile"
"""The registered timm name of ProxylessNAS-Mobile."""

PROXYLESS_MOBILE_NOTE = (
    "TinyTL paper's backbone (ProxylessNAS-Mobile, 224 px); no pretrained weights ship for it: random "
    "init, memory analysis exact"
)
"""What the catalog says about it (shown beside the name)."""

# The block list of the `proxyless_mobile` net config published with ProxylessNAS (Cai, Zhu, Han, ICLR
# 2019): mit-han-lab/proxylessnas, and the copy the TinyTL code builds from (mit-han-lab/tinyml,
# mcunet/assets/configs/proxyless_mobile.json; `proxylessnas_mobile` in once-for-all's model zoo). First conv
# 3x3 stride 2 to 32 channels, then 22 MobileInvertedResidualBlocks (kernel k, expand ratio e, stride s, out
# channels c) and a 1x1 feature-mix conv to 1280, ReLU6 throughout, BatchNorm eps 1e-3. Two blocks of the
# 32-channel stage are `ZeroLayer`s with an identity shortcut (x -> x): they compute nothing and are left out
# here. Blocks with an identity shortcut are the ones with stride 1 and equal in/out channels, which is
# timm's skip rule too. With a 1000-class head it has 4,080,512 parameters, the count pytorchcv's test
# asserts for its independent port of the same config (`proxylessnas_mobile`).
ARCH_DEF: list[list[str]] = [
    ["ds_r1_k3_s1_c16"],  # 32 -> 16, MBConv expand 1 (depthwise 3x3 + pointwise), no shortcut
    ["ir_r1_k5_s2_e3_c32", "ir_r1_k3_s1_e3_c32"],  # + 2 ZeroLayer blocks (identity)
    ["ir_r1_k7_s2_e3_c40", "ir_r1_k3_s1_e3_c40", "ir_r2_k5_s1_e3_c40"],
    ["ir_r1_k7_s2_e6_c80", "ir_r3_k5_s1_e3_c80"],
    ["ir_r1_k5_s1_e6_c96", "ir_r3_k5_s1_e3_c96"],
    ["ir_r1_k7_s2_e6_c192", "ir_r1_k7_s1_e6_c192", "ir_r2_k7_s1_e3_c192"],
    ["ir_r1_k7_s1_e6_c320"],  # 192 -> 320, no shortcut
]
"""ProxylessNAS-Mobile in timm's architecture-definition strings (see the comment above for the source)."""

BN_EPS = 1e-3  # the net config's "bn": {"eps": 0.001}

default_cfgs = generate_default_cfgs(
    {
        # No url / hf_hub_id: timm lists it without pretrained weights (and never tries to download any).
        PROXYLESS_MOBILE: {
            "url": "",
            "num_classes": 1000,
            "input_size": (3, 224, 224),
            "pool_size": (7, 7),
            "crop_pct": 0.875,
            "interpolation": "bilinear",
            "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD,
            "first_conv": "conv_stem",
            "classifier": "classifier",
        },
    }
)


@register_model
def proxylessnas_mobile(pretrained: bool = False, **kwargs) -> EfficientNet:
    """ProxylessNAS-Mobile (4.1 M parameters with a 1000-class head), randomly initialised.

    ``pretrained=True`` is accepted for timm's API but no weights exist: the model stays randomly
    initialised (timm logs that no pretrained weights exist). Keyword arguments go to timm's
    ``EfficientNet`` (``num_classes``, ``drop_rate``, ...).
    """
    model_kwargs = dict(
        block_args=decode_arch_def(ARCH_DEF),
        num_features=1280,
        stem_size=32,
        round_chs_fn=partial(round_channels, multiplier=1.0),
        act_layer=kwargs.pop("act_layer", None) or nn.ReLU6,
        norm_layer=kwargs.pop("norm_layer", None) or partial(nn.BatchNorm2d, eps=BN_EPS),
        **kwargs,
    )
    return _create_effnet(PROXYLESS_MOBILE, pretrained, **model_kwargs)
