"""Issue 16, items 1-2: ProxylessNAS-Mobile as a backbone, and the paper's Table 2 memory column."""

from pathlib import Path

import pytest
import torch
from torch import nn

from tinytl_core.backbones import (
    backbone_info,
    create_backbone,
    data_config,
    list_backbones,
    weights_availability,
)
from tinytl_core.backbones.proxyless import ARCH_DEF, PROXYLESS_MOBILE
from tinytl_core.memory import analyze
from tinytl_core.modes import MODES, prepare_model
from tinytl_core.paper import TABLE2, TOLERANCE, format_paper_table, paper_frame, paper_network, paper_table


def test_proxyless_in_the_catalog_without_weights():
    names = [b.name for b in list_backbones() if b.curated]
    assert names[1] == PROXYLESS_MOBILE  # beside the shipped demo backbone
    info = backbone_info(PROXYLESS_MOBILE)
    assert info.kind == "cnn" and not info.has_pretrained
    assert "no pretrained weights ship" in info.description and "random init" in info.description
    model, status = create_backbone(PROXYLESS_MOBILE, 3, pretrained=True, device="meta")
    assert not status.pretrained_loaded
    weights = weights_availability(PROXYLESS_MOBILE, probe=False)  # what the sidebar says
    assert weights.state == "none" and "no pretrained weights ship" in weights.message
    assert data_config(PROXYLESS_MOBILE).resolution == 224


def test_proxyless_is_the_published_architecture():
    model = create_backbone(PROXYLESS_MOBILE, 1000, device="meta")[0]
    # The count pytorchcv's test asserts for its own port of the proxyless_mobile config.
    assert sum(p.numel() for p in model.parameters()) == 4_080_512
    assert model.conv_stem.out_channels == 32 and model.conv_stem.stride == (2, 2)
    blocks = [b for stage in model.blocks for b in stage]
    assert len(blocks) == 20  # 22 in the config, two of them ZeroLayers (identity)
    kernels = [b.conv_dw.kernel_size[0] for b in blocks]
    assert kernels == [3, 5, 3, 7, 3, 5, 5, 7, 5, 5, 5, 5, 5, 5, 5, 7, 7, 7, 7, 7]
    expand = [b.conv_pw.out_channels // b.conv_pw.in_channels for b in blocks[1:]]
    assert expand == [3, 3, 3, 3, 3, 3, 6, 3, 3, 3, 6, 3, 3, 3, 6, 6, 3, 3, 6]
    widths = [b.conv_pwl.out_channels for b in blocks[1:]]
    assert sorted(set(widths)) == [32, 40, 80, 96, 192, 320] and blocks[0].conv_pw.out_channels == 16
    assert [b.has_skip for b in blocks].count(True) == 13
    assert model.conv_head.out_channels == 1280 and isinstance(model.bn2.act, nn.ReLU6)
    assert len(ARCH_DEF) == 7


@pytest.mark.parametrize("mode", list(MODES))
def test_proxyless_trains_in_every_mode(mode):
    torch.manual_seed(0)
    prepared = prepare_model(PROXYLESS_MOBILE, mode, num_classes=5, resolution=32)  # engine layers
    model, result = prepared.model, prepared.result
    if MODES[mode].uses_lite_residual:
        assert len(result.lite_residual_blocks) == 19  # every block but the first
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5)
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def _public_profiler(model: nn.Module, size: int) -> tuple[float, float]:
    """An independent port of the paper's profiler (count_model_size + count_activation_size,
    mit-han-lab/tinyml tinytl/utils/memory_cost_profiler.py) with forward hooks: (parameter bytes, peak
    activation bytes of one sample). timm's norm + activation modules are its BN and ReLU leaves."""
    head = {id(p) for p in model.get_classifier().parameters()}
    params = sum((4 if p.requires_grad else 1) * p.numel() for p in model.parameters())
    backward = any(p.requires_grad for p in model.parameters() if id(p) not in head)
    grad, tmp = {}, {}

    def count(m, args, out):
        n_in, n_out = args[0].numel(), out.numel()
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            grad[m] = 4 * n_in if m.weight.requires_grad else 0
            tmp[m] = 4 * n_in + 4 * n_out // getattr(m, "groups", 1)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            grad[m], tmp[m] = (4 * n_in if m.weight.requires_grad else 0), 4 * n_in
        elif isinstance(m, (nn.ReLU, nn.ReLU6)):
            grad[m], tmp[m] = (n_in / 8 if backward else 0), 4 * n_in

    state = {"peak": 0.0, "stored": 0.0, "residual": 0.0}

    def before(m, args):
        if m in tmp:
            state["peak"] = max(state["peak"], tmp[m] + state["stored"] + state["residual"])
            state["stored"] += grad[m]
        if getattr(m, "has_skip", False) is True:
            state["residual"] = 4 * args[0].numel()

    def after(m, args, out):
        if getattr(m, "has_skip", False) is True:
            state["residual"] = 0

    x = torch.zeros(1, 3, size, size)
    model.eval()
    with torch.no_grad():
        handles = [m.register_forward_hook(count) for m in model.modules()]
        model(x)
        for h in handles:
            h.remove()
        handles = [m.register_forward_pre_hook(before) for m in model.modules()]
        handles += [m.register_forward_hook(after) for m in model.modules()]
        model(x)
        for h in handles:
            h.remove()
    return params, state["peak"]


@pytest.mark.parametrize("mode", ["last", "lite_residual+bias"])  # full: its Table 2 row below
def test_paper_accounting_equals_the_public_profiler(mode):
    torch.manual_seed(0)
    model = paper_network(mode, 64, device="cpu")
    totals = analyze(model, input_size=(3, 64, 64), batch_size=1, accounting="paper").totals
    params, peak = _public_profiler(model, 64)
    assert totals.weights_bytes == params
    assert totals.activations_necessary_bytes == pytest.approx(peak, rel=1e-4)  # masks: ceil vs float


def test_table2_rows_within_5_percent():
    # Two rows here (the branch sizing at 320 px, full fine-tuning); all seven: benchmarks/paper.py.
    rows = paper_table(step_peak="none", rows=(TABLE2[4], TABLE2[6]))  # modelled peaks: the About test
    assert [r.method for r in rows] == ["TinyTL-L+B @320", "FT-Full"]
    for r in rows:
        assert abs(r.ratio - 1) <= TOLERANCE, (r.method, r.ours_mb, r.paper_mb)
        assert r.ours_mb == pytest.approx(r.weights_mb + r.activations_mb)
        assert r.step_peak_kind == "none" and r.step_peak_mb is None
    assert rows[1].activations_mb > 10 * rows[1].weights_mb  # full fine-tuning: activations dominate
    frame = paper_frame(rows)
    assert list(frame["method"]) == [r.method for r in rows] and "ratio" in frame
    text = format_paper_table(rows)
    assert "| FT-Full | 224 | 391 |" in text and "step peak" not in text
    with pytest.raises(ValueError):
        paper_table(step_peak="guessed", rows=(TABLE2[0],))


def test_about_page_reproduces_table2_on_request(tinytl_home, monkeypatch):
    from streamlit.testing.v1 import AppTest

    import tinytl_core.paper as paper_module
    from app_pages import _cache

    monkeypatch.setattr(paper_module, "TABLE2", paper_module.TABLE2[:1])  # one row: the page reads it live
    _cache.paper_table_slot.clear()
    try:
        at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=180)
        at.switch_page("app_pages/about.py").run()
        assert not at.exception, at.exception
        assert not any("| FT-Last |" in m.value for m in at.markdown)
        next(b for b in at.button if b.label == "Reproduce Table 2").click().run()
        assert not at.exception, at.exception
        shown = "\n".join(m.value for m in at.markdown)
        assert "| FT-Last | 224 | 31 |" in shown and "engine step peak MB (modelled)" in shown
        assert "P2" in shown  # the conventions, explained from the library's docstring
        assert not any(b.label == "Reproduce Table 2" for b in at.button)
        at.run()  # kept for every later visit
        assert any("| FT-Last | 224 | 31 |" in m.value for m in at.markdown)
    finally:
        _cache.paper_table_slot.clear()


def test_paper_command(capsys):
    from tinytl_core.cli import main

    assert main(["paper", "--methods", "FT-Last", "--step-peak", "none"]) == 0
    out = capsys.readouterr().out
    assert "| FT-Last | 224 | 31 |" in out and "TinyTL-B" not in out
    assert main(["paper", "--methods", "FT-Lost"]) == 2
    assert "unknown method(s) FT-Lost; choose from FT-Last" in capsys.readouterr().err
