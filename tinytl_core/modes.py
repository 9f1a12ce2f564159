"""Fine-tuning modes: which parameters train, and how normalisation layers behave.

=====================  ======================================================================
mode                   trains
=====================  ======================================================================
full                   everything (norms use batch statistics)
last                   the classifier only
bn+last                normalisation scale and shift + classifier (norms use batch statistics)
bias (TinyTL-B)        every bias (conv, linear, normalisation) + classifier
lite_residual          lite residual branches + classifier (TinyTL-L)
lite_residual+bias     lite residual branches + every bias + classifier (TinyTL-L+B)
mobiletl               every bias and norm shift + classifier; smooth activations (h-swish, and as an
                       extension SiLU / GELU) backward through a 1-bit sign mask: approximate gradients
sparse                 a sparse-update scheme (Lin et al. 2022): biases of the last blocks + weights of
                       chosen layers, some on part of their output channels (:mod:`tinytl_core.sparse_scheme`)
=====================  ======================================================================

MobileTL (Chiang et al., AAAI 2023) is a mode rather than a switch on the frozen-backbone modes: a run
stores its mode, so its accuracy and memory appear as their own points and colour on every chart, and the
mode's name says that its gradients are approximate (runs of other modes stay exact).

In every mode with a frozen backbone (all but ``full`` and ``bn+last``) the backbone's BatchNorm layers
keep their running statistics, as in the paper. The classifier (``model.get_classifier()``) always trains.

By default a mode also converts the model to the training engine (:func:`tinytl_core.engine.convert`):
layers that store only what their gradients need, with the same outputs and gradients as stock PyTorch.
``engine=False`` gives stock PyTorch layers (to show the difference).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from tinytl_core.backbones import BackboneStatus, DataConfig, classifier_heads, create_backbone, data_config
from tinytl_core.engine import convert, revert
from tinytl_core.engine.layers import stock_class
from tinytl_core.engine.partial import PartialUpdateError
from tinytl_core.engine.quantized import WeightQuantization, check_weight_bits, quantize_frozen_weights
from tinytl_core.layer_kinds import is_norm, set_sign_mask
from tinytl_core.lite_residual import (
    LiteResidual,
    LiteResidualConfig,
    attach_lite_residuals,
)
from tinytl_core.norms import (
    batchnorm_to_groupnorm,
    freeze_statistics,
    standardize_convolutions,
    sync_standardization,
    unfreeze_statistics,
)
from tinytl_core.sparse_scheme import SchemeError, SparseScheme, apply_scheme, check_scheme, default_scheme


class ModeNotApplicable(ValueError):
    """The mode cannot be applied to this architecture; the message says why."""


@dataclass(frozen=True)
class ModeResult:
    """What :meth:`Mode.apply` did."""

    mode: str
    applicable: bool
    reason: str
    trainable: tuple[str, ...] = ()
    n_trainable: int = 0
    n_total: int = 0
    lite_residual_blocks: tuple[str, ...] = ()
    lite_residual_params: int = 0
    frozen_norms: int = 0
    group_norms: int = 0  # BatchNorm layers replaced by GroupNorm (group_norm asked for; 0: none to replace)
    engine_layers: int = 0  # layers running on the training engine (0: stock PyTorch layers)
    sign_masked: int = 0  # activations whose backward is MobileTL's 1-bit sign mask (approximate)
    scheme: SparseScheme | None = None  # the sparse-update scheme applied (sparse modes only)

    @property
    def trainable_fraction(self) -> float:
        """Trainable parameters as a fraction of all parameters."""
        return self.n_trainable / max(1, self.n_total)


@dataclass(frozen=True)
class Mode:
    """A fine-tuning mode. ``parts`` names what trains besides the classifier; a sparse-update mode
    (``"sparse"`` in ``parts``) trains ``scheme``, or :func:`~tinytl_core.sparse_scheme.default_scheme`
    of the model when it has none."""

    name: str
    title: str
    description: str
    parts: frozenset[str] = field(default_factory=frozenset)
    scheme: SparseScheme | None = None

    @property
    def sparse(self) -> bool:
        """True for the sparse-update family."""
        return "sparse" in self.parts

    def sparse_scheme(self, model: nn.Module) -> SparseScheme:
        """The scheme this sparse mode trains on ``model`` (its own, or the model's default)."""
        return self.scheme if self.scheme is not None else default_scheme(model)

    @property
    def frozen_backbone(self) -> bool:
        """True when the backbone's weights and normalisation statistics stay fixed."""
        return not self.parts & {"all", "norm"}

    @property
    def uses_lite_residual(self) -> bool:
        """True when the mode adds lite residual branches."""
        return "lite_residual" in self.parts

    @property
    def approximate_gradients(self) -> bool:
        """True when the mode's gradients differ from the exact ones by design (MobileTL's sign mask)."""
        return "sign_mask" in self.parts

    def check(self, model: nn.Module) -> str | None:
        """Return why the mode cannot apply to ``model``, or None when it can (lite residual is checked
        in :meth:`apply`, which needs the input size)."""
        head = _head_params(model)
        if not head:
            return "the model has no classifier with parameters (built with num_classes=0?)"
        if "norm" in self.parts and not any(
            is_norm(m) and any(True for _ in m.parameters()) for m in model.modules()
        ):
            return "the model has no normalisation layers with scale/shift parameters"
        if "bias" in self.parts and not any(
            n.rsplit(".", 1)[-1] == "bias" and id(p) not in head for n, p in model.named_parameters()
        ):
            return "the backbone has no bias parameters (no normalisation layers and bias-free layers)"
        if self.sparse:
            try:
                self.sparse_scheme(model).check(model)
            except SchemeError as exc:
                return f"sparse-update scheme: {exc}"
        return None

    def apply(
        self,
        model: nn.Module,
        *,
        input_size: tuple[int, int, int] | None = None,
        group_norm: bool = False,
        lite_residual: LiteResidualConfig | None = None,
        strict: bool = True,
        engine: bool = True,
    ) -> ModeResult:
        """Set exactly the parameters this mode trains, in place, and configure normalisation layers.

        Args:
            model: a timm model (on any device, ``meta`` included).
            input_size: (C, H, W) used to size lite residual branches and to trace the engine's
                conversion; default: the model's own.
            group_norm: replace BatchNorm by GroupNorm and standardise the weights of the bias-free
                convolutions (GroupNorm + weight standardisation: the public code's recipe for batch size
                1; a frozen standardised weight is computed once, :func:`tinytl_core.norms.WSConv2d`).
            lite_residual: branch hyper-parameters (defaults as in the paper).
            strict: raise :class:`ModeNotApplicable` when the mode does not apply; otherwise return a
                result with ``applicable=False`` and the reason, leaving ``model`` unchanged.
                Lite residual branches already on the model (the caller's, as the paper's network has
                them in every mode, or an earlier mode's) stay: this mode sets what trains.
            engine: convert the model to the training engine afterwards (same outputs and gradients,
                less stored for backward); False leaves (or makes) every layer stock PyTorch.
        """
        reason = self.check(model)
        size = tuple(input_size or data_config(model).input_size)
        scheme = None
        if reason is None and self.uses_lite_residual:
            report = attach_lite_residuals(model, size, _lr_config(lite_residual, group_norm))
            reason = f"lite residual: {report.skipped}" if not report.blocks else None
        if reason is None and self.sparse:
            scheme = self.sparse_scheme(model)
            reason = _scheme_problem(model, scheme, group_norm)  # before GroupNorm changes any layer
        if reason is not None:
            if strict:
                raise ModeNotApplicable(f"mode {self.name!r} does not apply: {reason}")
            return ModeResult(self.name, False, reason)
        group_norms = 0
        if group_norm:
            group_norms = batchnorm_to_groupnorm(model)
            standardize_convolutions(model)
        sparse = apply_scheme(model, scheme) if scheme is not None else set()  # splits partial weights
        head = _head_params(model)
        branches = {id(p) for m in model.modules() if isinstance(m, LiteResidual) for p in m.parameters()}
        norm_params = {id(p) for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)}
        trainable = []
        for name, param in model.named_parameters():
            wanted = (
                id(param) in head
                or "all" in self.parts
                or ("lite_residual" in self.parts and id(param) in branches)
                or ("norm" in self.parts and id(param) in norm_params)
                or ("bias" in self.parts and name.rsplit(".", 1)[-1] == "bias")
                or id(param) in sparse
            )
            param.requires_grad_(wanted)
            if wanted:
                trainable.append(name)
        frozen = _configure_norms(model, freeze=self.frozen_backbone)
        sync_standardization(model)  # frozen standardised weights: standardised once, in place
        # MobileTL marks its smooth activations for the engine's sign-mask backward; every other mode
        # clears the mark, so a model that changes mode computes exact gradients again.
        sign_masked = sum(
            set_sign_mask(m, self.approximate_gradients, stock_class(m)) for m in model.modules()
        )
        # After the mode: the engine picks, per layer, what to store from what now trains.
        if engine:
            engine_layers = convert(model, input_size=size, channels_last=True).n_converted
        else:
            revert(model)
            engine_layers = 0
        lr_blocks = tuple(n for n, m in model.named_modules() if isinstance(m, LiteResidual))
        params = dict(model.named_parameters())
        return ModeResult(
            mode=self.name,
            applicable=True,
            reason="",
            trainable=tuple(trainable),
            n_trainable=sum(params[n].numel() for n in trainable),
            n_total=sum(p.numel() for p in params.values()),
            lite_residual_blocks=tuple(n.rsplit(".lite_residual", 1)[0] for n in lr_blocks),
            lite_residual_params=sum(p.numel() for n, p in params.items() if id(p) in branches),
            frozen_norms=frozen,
            group_norms=group_norms,
            engine_layers=engine_layers,
            sign_masked=sign_masked,
            scheme=scheme,
        )


def _lr_config(config: LiteResidualConfig | None, group_norm: bool) -> LiteResidualConfig:
    config = config or LiteResidualConfig()
    if group_norm and not config.group_norm:
        config = replace(config, group_norm=True)
    return config


def _head_params(model: nn.Module) -> set[int]:
    """Ids of the classifier heads' parameters (both heads of a distilled model)."""
    return {id(p) for head in classifier_heads(model) for p in head.parameters()}


def _configure_norms(model: nn.Module, *, freeze: bool) -> int:
    """Backbone norms on running statistics when ``freeze``; lite residual branches always train theirs."""
    in_branch = {id(m) for b in model.modules() if isinstance(b, LiteResidual) for m in b.modules()}
    frozen = 0
    for module in model.modules():
        unfreeze_statistics(module)
        if freeze and id(module) not in in_branch and freeze_statistics(module):
            frozen += 1
    return frozen


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("full", "Full fine-tuning", "Train every parameter; the memory baseline.", frozenset({"all"})),
        Mode("last", "Last layer", "Train only the classifier: cheap, but features cannot adapt."),
        Mode(
            "bn+last",
            "Norm + last",
            "Train normalisation scale/shift and the classifier; norms keep batch statistics.",
            frozenset({"norm"}),
        ),
        Mode(
            "bias",
            "TinyTL-B (bias)",
            "Freeze weights, train every bias and the classifier: bias gradients need no stored input.",
            frozenset({"bias"}),
        ),
        Mode(
            "lite_residual",
            "TinyTL-L (lite residual)",
            "Frozen backbone plus small lite residual side branches and the classifier.",
            frozenset({"lite_residual"}),
        ),
        Mode(
            "lite_residual+bias",
            "TinyTL-L+B",
            "Lite residual branches + every bias + classifier: the paper's default.",
            frozenset({"lite_residual", "bias"}),
        ),
        Mode(
            "mobiletl",
            "MobileTL",
            "MobileTL: biases and norm shifts (scales and statistics frozen) + classifier; smooth "
            "activations (h-swish; SiLU/GELU as an extension) backward through a 1-bit sign mask, so "
            "gradients are approximate by design (exact forward).",
            frozenset({"bias", "sign_mask"}),
        ),
        Mode(
            "sparse",
            "Sparse update",
            "Biases of the last blocks + weights of a few layers, some on part of their output channels "
            "(Lin et al. 2022). Default: biases of the last half of the blocks, the last 4 pointwise "
            "layers at 1/4, 1/2, 1, 1; or a scheme of your own (JSON) or from sparse-search.",
            frozenset({"sparse"}),
        ),
    )
}


def _scheme_problem(model: nn.Module, scheme: SparseScheme, group_norm: bool) -> str | None:
    """Why ``scheme`` cannot be applied to ``model`` (as GroupNorm would leave it), or None."""
    try:
        check_scheme(model, scheme, group_norm=group_norm)
    except PartialUpdateError as exc:  # e.g. a partial ratio on a weight-standardised conv (GroupNorm)
        if not group_norm:
            return str(exc)
        return (  # say what to change, not only which layer refused
            "its partial weight updates need plain convolutions, which GroupNorm + weight "
            "standardisation replaces; train it without GroupNorm, or with a scheme that updates "
            f"no weight partially ({exc})"
        )
    return None


def get_mode(name: str) -> Mode:
    """Return the mode called ``name``; ValueError listing valid names otherwise."""
    try:
        return MODES[name]
    except (KeyError, TypeError):  # (TypeError: an unhashable value)
        raise ValueError(f"unknown mode {name!r}; choose one of {', '.join(MODES)}") from None


def sparse_mode(scheme: SparseScheme | None = None) -> Mode:
    """The registry's ``sparse`` mode training ``scheme`` (None: each model's default scheme)."""
    return replace(MODES["sparse"], scheme=scheme)


def approximation_note(names: Iterable[str]) -> str | None:
    """A sentence for the pages when any of the modes ``names`` trains with approximate gradients
    (MobileTL's sign mask), or None when every one is exact."""
    approximate = [
        MODES[n].title for n in dict.fromkeys(names) if n in MODES and MODES[n].approximate_gradients
    ]
    if not approximate:
        return None
    return (
        f"{', '.join(approximate)}: gradients are approximate by design. Its smooth activations (h-swish; "
        "SiLU and GELU as an extension of the paper) pass the gradient only where their input is positive, "
        "a 1-bit sign mask stored instead of the 32-bit input; the forward pass is exact. Compare it with "
        "TinyTL-B (bias: the same trainable parameters, exact gradients) to see what the approximation "
        "costs in accuracy. On ReLU/ReLU6 networks nothing is approximated: it is TinyTL-B."
    )


def resolve_modes(names: str | Iterable[str] | None) -> list[Mode]:
    """Turn ``"all"``, a comma-separated string or a list of names into modes (all modes for None)."""
    if names is None or names == "all":
        return list(MODES.values())
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    modes = [get_mode(n) for n in names]
    if not modes:  # "," or "": never an empty table or an index error later
        raise ValueError(f"no mode given: 'all' or a comma-separated list of {', '.join(MODES)}")
    return modes


@dataclass
class PreparedModel:
    """A backbone made trainable in a mode, with how its weights were obtained and its input config."""

    model: nn.Module
    mode: Mode
    result: ModeResult
    status: BackboneStatus
    data: DataConfig


def prepare_model(
    backbone: str,
    mode: str | Mode,
    *,
    num_classes: int = 10,
    pretrained: bool = False,
    resolution: int | None = None,
    group_norm: bool = False,
    device: str | torch.device | None = None,
    strict: bool = True,
    lite_residual: LiteResidualConfig | None = None,
    engine: bool = True,
    weight_bits: int = 32,
    weight_quantization: WeightQuantization | str = WeightQuantization.KMEANS,
    sparse_scheme: SparseScheme | None = None,
) -> PreparedModel:
    """Create ``backbone`` for ``num_classes`` and apply ``mode`` to it.

    ``resolution`` overrides the model's default input size (it sizes lite residual branches and is what
    ``result.data.input_size`` reports). ``device="meta"`` builds a shape-only model for fast analysis.
    ``engine`` (default) converts the model to the training engine after the mode; False keeps stock
    PyTorch layers (see :meth:`Mode.apply`). ``weight_bits=8`` then stores every frozen conv and linear
    weight as 8-bit codes (``weight_quantization``: ``kmeans`` or ``linear``), dequantised on the fly
    (:func:`tinytl_core.engine.quantize_frozen_weights`); 32 keeps float weights. ``sparse_scheme`` is
    the scheme a sparse-update mode trains (default: the mode's own, else the model's default scheme);
    ValueError for any other mode.
    """
    mode = mode if isinstance(mode, Mode) else get_mode(mode)  # a name (anything else: ValueError)
    if sparse_scheme is not None:
        if not mode.sparse:
            raise ValueError(f"a sparse-update scheme needs mode 'sparse', not {mode.name!r}")
        mode = replace(mode, scheme=sparse_scheme)
    check_weight_bits(weight_bits)
    weight_quantization = WeightQuantization.parse(weight_quantization)
    if resolution is not None and resolution < 8:
        raise ValueError(f"resolution must be at least 8 pixels, got {resolution}")
    model, status = create_backbone(backbone, num_classes, pretrained, device=device, resolution=resolution)
    data = data_config(model)
    if resolution is not None:
        data = replace(data, input_size=(data.input_size[0], resolution, resolution))
    result = mode.apply(
        model,
        input_size=data.input_size,
        group_norm=group_norm,
        lite_residual=lite_residual,
        strict=strict,
        engine=engine,
    )
    if weight_bits < 32 and result.applicable:
        quantize_frozen_weights(model, weight_quantization)
    return PreparedModel(model, mode, result, status, data)


def compare_trainable(
    backbone: str, *, resolution: int | None = None, group_norm: bool = False, num_classes: int = 10
) -> list[ModeResult]:
    """Apply every mode to a meta-device copy of ``backbone``: what each trains, without allocating."""
    return [
        prepare_model(
            backbone,
            m,
            num_classes=num_classes,
            resolution=resolution,
            group_norm=group_norm,
            device="meta",
            strict=False,
            engine=False,  # what trains does not depend on the layers; skip the conversion's trace
        ).result
        for m in MODES.values()
    ]
