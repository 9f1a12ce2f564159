"""Memory model (issue 3): TinyTL's rules, the accountings, meta analysis and the per-mode table."""

import dataclasses
import math

import pandas as pd
import pytest
import timm
import torch
from torch import nn

from tinytl_core.comparisons import compare_modes
from tinytl_core.engine import is_converted
from tinytl_core.memory import MB, analyze, format_modes
from tinytl_core.memory.accounting import LAYER_COLUMNS
from tinytl_core.memory.report import TOTALS
from tinytl_core.modes import MODES, prepare_model
from tinytl_core.norms import freeze_statistics

RES, BATCH = 64, 2
NECESSARY, STOCK = TOTALS.activations_necessary_bytes, TOTALS.activations_stock_bytes  # per layer and total


class Tiny(nn.Module):
    """conv -> BN -> ReLU -> conv -> SiLU -> max pool -> pool -> linear, with hand-checkable sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.silu = nn.SiLU()
        self.maxpool = nn.MaxPool2d(2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.maxpool(self.silu(self.conv2(self.relu(self.bn(self.conv1(x))))))
        return self.fc(self.pool(x).flatten(1))


def _rows(report):
    return report.layers.set_index("layer")


def _numel(*shape):
    return math.prod(shape)


def test_rules_full_training_by_hand():
    model = Tiny()
    r = _rows(analyze(model, input_size=(3, 16, 16), batch_size=2))
    fmap = _numel(2, 8, 16, 16)
    assert r.loc["conv1", NECESSARY] == 4 * _numel(2, 3, 16, 16)
    stats = 2 * 4 * 8  # batch mean and inverse std per channel, which backward reads with the input
    assert r.loc["bn", NECESSARY] == 4 * fmap + stats  # batch statistics: its input
    # The ReLU output is stored in full by conv2 (trainable weight): the 1-bit mask comes free.
    assert r.loc["relu", NECESSARY] == 0
    assert r.loc["conv2", NECESSARY] == 4 * fmap
    assert r.loc["silu", NECESSARY] == 4 * fmap
    assert "32-bit input" in r.loc["silu", "necessary_reason"]
    assert r.loc["maxpool", NECESSARY] == math.ceil(_numel(2, 8, 8, 8) * 2 / 8)  # 2 bits
    assert r.loc["pool", NECESSARY] == 0
    assert r.loc["fc", NECESSARY] == 4 * 2 * 8


def test_rules_frozen_weights_bias_only():
    model = Tiny()
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    freeze_statistics(model.bn)
    report = analyze(model, input_size=(3, 16, 16), batch_size=2)
    r = _rows(report)
    fmap = _numel(2, 8, 16, 16)
    assert r.loc["conv1", NECESSARY] == 0
    assert "bias gradient needs no input" in r.loc["conv1", "necessary_reason"]
    assert r.loc["bn", NECESSARY] == 0  # frozen statistics and scale: affine map
    assert r.loc["relu", NECESSARY] == fmap // 8  # 1-bit mask, nobody stores it now
    assert r.loc["conv2", NECESSARY] == 0
    assert r.loc["silu", NECESSARY] == 4 * fmap
    # Stock PyTorch still keeps the conv inputs and the BN input although no weight trains.
    assert r.loc["conv1", STOCK] == 4 * _numel(2, 3, 16, 16)
    assert r.loc["bn", STOCK] >= 4 * fmap
    assert report.totals.activations_stock_bytes > 4 * report.totals.activations_necessary_bytes


def test_rules_batch_statistics_need_input_with_frozen_affine():
    model = Tiny()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("conv1"))  # gradient must flow back through bn to conv1
    r = _rows(analyze(model, input_size=(3, 16, 16), batch_size=2))
    assert r.loc["bn", NECESSARY] == 4 * _numel(2, 8, 16, 16) + 2 * 4 * 8
    assert "even if frozen" in r.loc["bn", "necessary_reason"]


def test_nothing_stored_before_first_trainable_layer():
    model = Tiny()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("conv2"))
    r = _rows(analyze(model, input_size=(3, 16, 16), batch_size=2))
    for name in ("conv1", "bn", "relu"):
        assert r.loc[name, NECESSARY] == 0
        assert "no gradient flows" in r.loc[name, "necessary_reason"]
    assert r.loc["conv2", NECESSARY] == 4 * _numel(2, 8, 16, 16)


def test_last_stores_only_classifier_input():
    prepared = prepare_model("mobilenetv2_100", "last", resolution=RES, device="meta", engine=False)
    report = analyze(prepared.model, input_size=(3, RES, RES), batch_size=BATCH)
    stored = report.layers[report.layers[NECESSARY] > 0]
    assert set(stored["kind"]) <= {"layer", "loss"}
    layer_rows = stored[stored["kind"] == "layer"]
    assert list(layer_rows["layer"]) == ["classifier"]
    features = prepared.model.get_classifier().in_features
    assert layer_rows[NECESSARY].iloc[0] == 4 * BATCH * features


def test_layers_table_columns_and_order():
    prepared = prepare_model("resnet18", "bias", resolution=RES, device="meta", engine=False)
    report = analyze(prepared.model, input_size=(3, RES, RES), batch_size=BATCH)
    assert list(report.layers.columns) == list(LAYER_COLUMNS)
    names = list(report.layers["layer"])
    assert names[0] == "conv1" and names.index("layer1.0.conv1") < names.index("layer4.1.conv2")
    assert names[-2:] == ["fc", "(loss)"]
    assert report.totals.weights_bytes >= 4 * sum(p.numel() for p in prepared.model.parameters())
    assert "total" in report.summary()


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_100"])
def test_activations_scale_with_batch_parameters_do_not(name):
    prepared = prepare_model(name, "lite_residual+bias", resolution=RES, device="meta", engine=False)
    t = {b: analyze(prepared.model, input_size=(3, RES, RES), batch_size=b).totals for b in (2, 3, 4)}
    for key in (TOTALS.weights_bytes, TOTALS.grads_optimizer_bytes):
        assert getattr(t[2], key) == getattr(t[3], key) == getattr(t[4], key)
    figures = {
        b: {
            "necessary": x.activations_necessary_bytes,
            "stock": x.activations_stock_bytes,
            "peak": x.activations_necessary_bytes + x.transient_bytes,
        }
        for b, x in t.items()
    }
    intercept = {}
    for key in ("necessary", "stock", "peak"):
        step1, step2 = figures[3][key] - figures[2][key], figures[4][key] - figures[3][key]
        assert step1 > 0
        # the peak is the largest of terms affine in the batch, some with a batch-independent part (the
        # kernels' weight-sized temporaries): linear only piecewise, as the largest term changes
        assert step2 == pytest.approx(step1, rel=1e-2 if key == "peak" else 1e-3)
        intercept[key] = figures[2][key] - 2 * step1
    # The only batch-independent activations: per-channel statistics of the lite residual branches'
    # BatchNorm (batch statistics), the same bytes in both figures and tiny next to stock's activations.
    assert intercept["necessary"] == intercept["stock"]
    assert 0 <= intercept["stock"] < 0.01 * figures[2]["stock"]
    # the peak's batch-independent part: the conv kernels' weight-sized copies in backward (at most two of
    # the largest weight, memory.accounting.conv_backward_temporaries)
    largest = max(p.numel() * p.element_size() for p in prepared.model.parameters())
    assert -0.02 * figures[2]["peak"] <= intercept["peak"] <= 2 * largest + 0.02 * figures[2]["peak"]


def test_meta_analysis_equals_real_tensors_and_models_stock_layers():
    # real: converted to the training engine (the default); meta: stock layers. analyze() models stock
    # PyTorch either way (the engine is what measure() sees), so both tables are the same.
    real = prepare_model("resnet18", "lite_residual+bias", resolution=RES, device="cpu").model
    meta = prepare_model("resnet18", "lite_residual+bias", resolution=RES, device="meta", engine=False).model
    assert is_converted(real) and not is_converted(meta)
    before = {k: v.clone() for k, v in real.state_dict().items()}
    a = analyze(real, input_size=(3, RES, RES), batch_size=BATCH)
    b = analyze(meta, input_size=(3, RES, RES), batch_size=BATCH)
    assert a.totals == b.totals
    assert a.layers.equals(b.layers)
    after = real.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics untouched
    assert real.training == meta.training
    assert is_converted(real)  # restored after the trace


def test_meta_trace_is_fast_and_allocates_nothing_for_a_large_vit():
    with torch.device("meta"):
        model = timm.create_model("vit_large_patch16_224", num_classes=10)
    report = analyze(model, input_size=(3, 224, 224), batch_size=64)
    assert report.totals.n_params > 300e6
    assert report.totals.activations_stock_bytes > 10e9  # would not fit here if it were allocated


def test_paper_accounting_calibration_resnet50():
    """The paper reports 802 MB for fully fine-tuning ResNet-50 at batch 8, 224x224."""
    prepared = prepare_model("resnet50", "full", device="meta", engine=False)
    t = analyze(prepared.model, input_size=(3, 224, 224), batch_size=8, accounting="paper").totals
    assert t.grads_optimizer_bytes == 0
    assert t.weights_bytes == 4 * t.n_params  # everything trains: 32 bits
    assert t.total_modelled_bytes / MB == pytest.approx(802, rel=0.02)


def test_paper_accounting_frozen_weights_at_8_bits():
    prepared = prepare_model("mobilenetv2_100", "bias", resolution=RES, device="meta", engine=False)
    t = analyze(prepared.model, input_size=(3, RES, RES), batch_size=BATCH, accounting="paper").totals
    frozen = t.n_params - t.n_trainable
    assert t.weights_bytes == frozen + 4 * t.n_trainable
    size = (3, RES, RES)
    # The complete accounting's 8-bit option is what 8-bit runs store: frozen conv / linear weights at one
    # byte each plus a 1 KB codebook per layer; other frozen parameters (norm scales, biases) stay float.
    complete = analyze(prepared.model, input_size=size, batch_size=BATCH, frozen_weight_bits=8).totals
    convs = [m.weight for m in prepared.model.modules() if isinstance(m, torch.nn.Conv2d)]
    frozen_convs = [w for w in convs if not w.requires_grad]
    other_frozen = frozen - sum(w.numel() for w in frozen_convs)
    assert complete.weights_bytes - 4 * t.n_trainable - 4 * other_frozen == sum(
        w.numel() + 1024 for w in frozen_convs
    ) + sum(b.numel() * b.element_size() for b in prepared.model.buffers())


def test_optimizer_state_sizes():
    model = Tiny()
    trainable = 4 * sum(p.numel() for p in model.parameters())
    sizes = {
        o: analyze(model, input_size=(3, 8, 8), batch_size=1, optimizer=o).totals.grads_optimizer_bytes
        for o in ("none", "sgd", "adam")
    }
    assert sizes == {"none": trainable, "sgd": 2 * trainable, "adam": 3 * trainable}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_size": (3, 16), "batch_size": 1}, "input_size"),
        ({"input_size": (3, 16, 16), "batch_size": 0}, "batch_size"),
        ({"input_size": (3, 16, 16), "batch_size": 1, "optimizer": "lion"}, "optimizer"),
        ({"input_size": (3, 16, 16), "batch_size": 1, "accounting": "vibes"}, "accounting"),
        ({"input_size": (3, 16, 16), "batch_size": 1, "frozen_weight_bits": 0}, "frozen_weight_bits"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        analyze(Tiny(), **kwargs)


def test_compare_modes_table():
    table = compare_modes("mobilenetv2_100", resolution=128, batch_size=8)  # meta: costs nothing
    assert list(table["mode"]) == list(MODES)  # every mode of the registry, in its order
    assert list(MODES)[:6] == ["full", "last", "bn+last", "bias", "lite_residual", "lite_residual+bias"]
    assert table["applicable"].all()
    rows = table.set_index("mode")
    assert rows.loc["full", "ratio_to_full"] == 1.0
    # TinyTL's point: activations, not parameters, dominate full fine-tuning; TinyTL cuts them.
    assert rows.loc["full", NECESSARY] > rows.loc["full", TOTALS.weights_bytes]
    assert rows.loc["lite_residual+bias", NECESSARY] < (0.1 * rows.loc["full", NECESSARY])
    assert rows.loc["bias", STOCK] > 0.9 * rows.loc["full", STOCK]
    text = format_modes(table)
    assert "lite_residual+bias" in text and "MB" in text


def test_compare_modes_not_applicable_row():
    table = compare_modes("vit_tiny_patch16_224", resolution=32, batch_size=1, modes="full,lite_residual")
    row = table.set_index("mode").loc["lite_residual"]
    assert not row["applicable"] and "lite residual" in row["reason"]
    assert "not applicable" in format_modes(table)


def test_step_peak_by_hand():
    """Two 1x1 convs, everything trains; the loss (mean square) keeps the output for backward."""
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1))
    t = analyze(model, input_size=(3, 16, 16), batch_size=2).totals
    x, h = 4 * 2 * 3 * 16 * 16, 4 * 2 * 8 * 16 * 16  # input, hidden and output (same size as hidden)
    assert t.activations_necessary_bytes == t.activations_stock_bytes == x + h + h
    # Worst moment: the second conv's backward, with x and h still stored (the loss's copy of the output
    # is released by then) and the gradients of its output and input (h each) alive: h above the stored.
    # Stock layers on the CPU reach the same in the forward (oneDNN's copy of the output beside x, h, h).
    # On the engine's channels-last layout the trainable conv's backward also copies its weight and the
    # weight's gradient into oneDNN's blocked layout (memory.accounting.conv_backward_temporaries).
    reorders = 2 * 4 * 8 * 8
    assert t.transient_stock_bytes == h
    assert t.transient_bytes == h + reorders
    assert t.total_modelled_bytes == t.weights_bytes + t.grads_optimizer_bytes + x + 3 * h + reorders


@pytest.mark.parametrize(
    "backbone, resolution, group_norm",
    [
        ("mobilenetv2_100", 96, False),  # depthwise, BN, every mode (lite residual, sparse, MobileTL)
        ("mobilenetv3_large_100", 64, True),  # squeeze-excitation, h-swish, GroupNorm
        ("resnet18", 64, False),  # residual adds after the activation
        ("vit_tiny_patch16_224", 32, False),  # attention: a transformer built for its input size
    ],
)
def test_mode_reports_from_one_trace_equal_analyze_at_every_batch(backbone, resolution, group_norm):
    """The Memory Explorer traces each mode once (at a prime batch) and rewrites it for each batch size,
    optimizer and accounting it is asked for: the reports are analyze()'s, cell for cell."""
    from tinytl_core.comparisons import clear_mode_analyses, mode_reports
    from tinytl_core.modes import prepare_model

    clear_mode_analyses()
    # 7 and 2 rewritten from one trace at a prime batch size, batch 1 traced on its own, other settings
    settings = [(7, "adam", "complete"), (1, "adam", "complete"), (2, "sgd", "paper"), (7, "adamw", "paper")]
    for batch, optimizer, accounting in settings:
        reports = mode_reports(
            backbone,
            resolution=resolution,
            batch_size=batch,
            optimizer=optimizer,
            accounting=accounting,
            group_norm=group_norm,
        )
        for name, report in reports.items():
            try:
                prepared = prepare_model(
                    backbone, name, resolution=resolution, group_norm=group_norm, device="meta", engine=False
                )
            except ValueError as exc:  # the mode does not apply: the same reason either way
                assert report == str(exc)
                continue
            expected = analyze(
                prepared.model,
                input_size=prepared.data.input_size,
                batch_size=batch,
                optimizer=optimizer,
                accounting=accounting,
            )
            pd.testing.assert_frame_equal(report.layers, expected.layers)
            expected_totals = dataclasses.replace(expected.totals, mode=name, backbone=backbone)
            assert report.totals == expected_totals, (name, batch)


class _BatchSquared(nn.Module):
    """A batch-by-batch output (every sample scored against every other): not linear in the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        v = torch.relu(self.conv(x)).mean(dim=(1, 2, 3))
        return torch.outer(v, v)


def test_batch_analysis_traces_each_batch_when_sizes_do_not_scale():
    from tinytl_core.memory.analysis import BatchAnalysis

    model = _BatchSquared().to("meta")
    analysis = BatchAnalysis(model, input_size=(3, 8, 8))
    for batch in (2, 5, 2):
        got, expected = analysis.report(batch), analyze(model, input_size=(3, 8, 8), batch_size=batch)
        pd.testing.assert_frame_equal(got.layers, expected.layers)
        assert got.totals == expected.totals
    assert analysis._scalable is False  # the rewrite was refused, not wrongly applied


def test_mode_reports_trace_each_setting_once_and_keep_a_bounded_number(monkeypatch):
    """A batch size, optimizer or accounting change re-accounts the traces kept (no model prepared, no
    trace taken); the process keeps at most ANALYSES_KEPT of them."""
    import tinytl_core.comparisons as comparisons
    from tinytl_core.memory import analysis
    from tinytl_core.modes import prepare_model as real_prepare

    comparisons.clear_mode_analyses()
    monkeypatch.setattr(comparisons, "ANALYSES_KEPT", 3)
    calls = {"prepare": 0, "trace": 0}

    def counted_prepare(*args, **kwargs):
        calls["prepare"] += 1
        return real_prepare(*args, **kwargs)

    real_trace = analysis.trace_model

    def counted_trace(*args, **kwargs):
        calls["trace"] += 1
        return real_trace(*args, **kwargs)

    monkeypatch.setattr(comparisons, "prepare_model", counted_prepare)
    monkeypatch.setattr(analysis, "trace_model", counted_trace)
    modes = "full,bias,last"
    first = comparisons.mode_reports("demo_mobilenetv2_050", resolution=32, batch_size=4, modes=modes)
    assert calls == {"prepare": 3, "trace": 3}
    changes = [(9, "adam", "complete"), (4, "sgd", "paper"), (64, "adamw", "paper")]
    for batch, optimizer, accounting in changes:
        comparisons.mode_reports(
            "demo_mobilenetv2_050",
            resolution=32,
            batch_size=batch,
            optimizer=optimizer,
            accounting=accounting,
            modes=modes,
        )
    assert calls == {"prepare": 3, "trace": 3}
    again = comparisons.mode_reports("demo_mobilenetv2_050", resolution=32, batch_size=4, modes=modes)
    assert {m: r.totals for m, r in again.items()} == {m: r.totals for m, r in first.items()}
    comparisons.mode_reports("demo_mobilenetv2_050", resolution=64, batch_size=4, modes="full")
    assert calls == {"prepare": 4, "trace": 4} and len(comparisons._analyses) == 3  # the oldest went
    comparisons.mode_reports("demo_mobilenetv2_050", resolution=32, batch_size=4, modes="full")
    assert calls["prepare"] == 5  # evicted: prepared and traced again
    comparisons.clear_mode_analyses()
