"""Sparse update (issue 17, item 1): schemes, partial-channel weights, memory, greedy search, the mode."""

from __future__ import annotations

import json
from dataclasses import replace
from fractions import Fraction

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from tinytl_core.cli import main as cli_main
from tinytl_core.engine import PartialUpdateError, convert, split_weight
from tinytl_core.memory import analyze, measure
from tinytl_core.modes import MODES, ModeNotApplicable, prepare_model, resolve_modes, sparse_mode
from tinytl_core.sparse_scheme import SchemeError, SparseScheme, WeightUpdate, default_scheme, read_scheme
from tinytl_core.sparse_search import (
    Candidates,
    Contribution,
    ContributionAnalysis,
    Metric,
    Option,
    SearchConfig,
    analyse_contributions,
    candidate_options,
    select_greedy,
)

DEMO = "demo_mobilenetv2_050"


@pytest.fixture(scope="module")
def meta_model() -> nn.Module:
    return prepare_model(DEMO, "last", resolution=32, device="meta", engine=False).model


# ------------------------------------------------------------------------------------------ schemes
def test_scheme_json_round_trip(meta_model):
    scheme = SparseScheme(
        5, (WeightUpdate("conv_head", Fraction(1, 4)), WeightUpdate("blocks.6.0.conv_pwl", 1))
    )
    text = scheme.to_json()
    assert json.loads(text) == {"bias_blocks": 5, "weights": {"conv_head": "1/4", "blocks.6.0.conv_pwl": "1"}}
    back = SparseScheme.from_json(text)
    assert back == SparseScheme(
        5, (WeightUpdate("conv_head", Fraction(1, 4)), WeightUpdate("blocks.6.0.conv_pwl", Fraction(1)))
    )
    back.check(meta_model)
    assert SparseScheme.from_dict({"weights": {"conv_head": 0.125}}).weights[0].ratio == Fraction(1, 8)
    assert "last 5 of 17 blocks" in back.describe(meta_model)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"bias_blocks": 2, "layers": {}}', "unknown key"),
        ('{"bias_blocks": -1}', "bias_blocks"),
        ('{"bias_blocks": "all"}', "bias_blocks"),
        ('{"weights": {"conv_head": "1/3"}}', "ratio must be one of 1/8, 1/4, 1/2, 1"),
        ('{"weights": {"conv_head": 0}}', "ratio"),
        ('{"weights": {"conv_head": true}}', "ratio"),
        ('{"weights": ["conv_head"]}', "mapping layer names"),
        ("[" * 20_000, "nested too deeply"),  # a RecursionError used to replace the whole Adapt page
        # unterminated as well as deep: Python 3.11 recurses too deeply first, 3.12 finds the end first
        ('{"weights": ' * 5_000, "nested too deeply|not valid JSON"),
        ('{"bias_blocks": 1e999}', "bias_blocks"),
    ],
)
def test_scheme_text_errors(text, message):
    with pytest.raises(SchemeError, match=message):
        SparseScheme.from_json(text)


@pytest.mark.parametrize(
    ("scheme", "message"),
    [
        (
            SparseScheme(0, (WeightUpdate("conv_hed", Fraction(1)),)),
            "unknown layer 'conv_hed'; did you mean conv_head",
        ),
        (SparseScheme(0, (WeightUpdate("classifier", Fraction(1)),)), "classifier"),
        (SparseScheme(0, (WeightUpdate("bn2", Fraction(1)),)), "has no weight to update"),
        (SparseScheme(99), "has 17 blocks"),
        (SparseScheme(0), "trains nothing"),
    ],
)
def test_scheme_model_errors(meta_model, scheme, message):
    with pytest.raises(SchemeError, match=message):
        scheme.check(meta_model)


def test_read_scheme_file(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"bias_blocks": 3}')
    assert read_scheme(path) == SparseScheme(3)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(SchemeError, match="s.json: .*UTF-8"):
        read_scheme(path)


# ------------------------------------------------------------------------------ partial-channel weights
@pytest.mark.parametrize(
    ("groups", "cin", "cout", "rows"),
    [(1, 8, 16, 4), (8, 8, 8, 3), (2, 8, 16, 8)],
    ids=["dense", "dw", "grouped"],
)
@pytest.mark.parametrize("engine", [False, True], ids=["stock", "engine"])
def test_partial_conv_gradients_equal_stock_rows(groups, cin, cout, rows, engine):
    torch.manual_seed(0)
    stock = nn.Conv2d(cin, cout, 3, padding=1, groups=groups)
    part = nn.Conv2d(cin, cout, 3, padding=1, groups=groups)
    part.load_state_dict(stock.state_dict())
    split_weight(part, rows)
    if engine:
        convert(part, channels_last=True)
    x = torch.randn(2, cin, 6, 6)
    xs, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    stock(xs).square().sum().backward()
    out = part(xp)
    out.square().sum().backward()
    torch.testing.assert_close(out, stock(x), rtol=1e-5, atol=1e-5)
    scale = stock.weight.grad.abs().max()
    torch.testing.assert_close(
        part.weight_train.grad / scale, stock.weight.grad[:rows] / scale, rtol=0, atol=1e-5
    )
    torch.testing.assert_close(xp.grad, xs.grad, rtol=1e-5, atol=1e-5 * xs.grad.abs().max().item())
    torch.testing.assert_close(part.bias.grad, stock.bias.grad, rtol=1e-5, atol=1e-5 * scale.item())
    assert part.weight_frozen.grad is None


@pytest.mark.parametrize("engine", [False, True], ids=["stock", "engine"])
def test_partial_linear_gradients_equal_stock_rows(engine):
    torch.manual_seed(0)
    stock, part = nn.Linear(12, 10), nn.Linear(12, 10)
    part.load_state_dict(stock.state_dict())
    split_weight(part, 3)
    if engine:
        convert(part)
    x = torch.randn(4, 5, 12)
    xs, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    stock(xs).square().sum().backward()
    part(xp).square().sum().backward()
    torch.testing.assert_close(part.weight_train.grad, stock.weight.grad[:3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xp.grad, xs.grad, rtol=1e-5, atol=1e-5)


def test_split_weight_refuses_what_it_cannot_split():
    with pytest.raises(PartialUpdateError, match="between 1 and 15"):
        split_weight(nn.Conv2d(4, 16, 1), 16)
    with pytest.raises(PartialUpdateError, match="whole groups of 4"):
        split_weight(nn.Conv2d(8, 16, 3, groups=4), 2)
    with pytest.raises(PartialUpdateError, match="zero padding"):
        split_weight(nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"), 2)
    with pytest.raises(PartialUpdateError, match="Conv2d or Linear"):
        split_weight(nn.BatchNorm2d(4), 2)


def test_only_the_slice_has_gradient_and_optimizer_state():
    conv = nn.Conv2d(16, 32, 1, bias=False)
    split_weight(conv, 8)  # a quarter of the rows
    convert(conv)
    params = [p for p in conv.parameters() if p.requires_grad]
    assert params == [conv.weight_train]
    opt = torch.optim.Adam(params)
    conv(torch.randn(2, 16, 4, 4, requires_grad=True)).sum().backward()
    opt.step()
    full_bytes = 32 * 16 * 4
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in conv.parameters() if p.grad is not None)
    state_bytes = sum(
        t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if t.dim() > 0
    )
    assert grad_bytes == full_bytes // 4
    assert state_bytes == 2 * full_bytes // 4  # Adam: exp_avg and exp_avg_sq of the slice only
    assert conv.weight.shape == (32, 16, 1, 1)


# ---------------------------------------------------------------------------------------- the mode
def test_memory_model_counts_the_partial_update_exactly():
    torch.manual_seed(0)
    scheme = SparseScheme(
        4, (WeightUpdate("blocks.5.2.conv_pw", Fraction(1, 4)), WeightUpdate("conv_head", Fraction(1, 8)))
    )
    p = prepare_model(DEMO, "sparse", resolution=32, sparse_scheme=scheme)
    report = analyze(p.model, input_size=(3, 32, 32), batch_size=2)
    measured = measure(p.model, input_size=(3, 32, 32), batch_size=2, per_layer=False, profile=False)
    assert report.totals.activations_necessary_bytes == measured.saved_bytes  # engine stores what rules say
    pw = p.model.get_submodule("blocks.5.2.conv_pw")
    assert pw.weight_train.shape[0] == pw.weight.shape[0] // 4
    trainable = [q for q in p.model.parameters() if q.requires_grad]
    assert report.totals.n_trainable == sum(q.numel() for q in trainable)
    # complete accounting: gradient + Adam's two states of exactly the trainable rows
    assert report.totals.grads_optimizer_bytes == 3 * sum(q.numel() * q.element_size() for q in trainable)
    assert pw.weight_train.requires_grad and not pw.weight_frozen.requires_grad


def test_partial_weight_forward_temporary_is_modelled():
    """The forward concatenates a partial weight's slices into a whole weight: with small activations that
    temporary decides the step's peak (without it the model was 11% under the measured peak here)."""
    from tinytl_core.memory import accounting
    from tinytl_core.tracing import trace_model

    scheme = SparseScheme(0, (WeightUpdate("conv_head", Fraction(1, 8)),))
    p = prepare_model(DEMO, "sparse", resolution=32, sparse_scheme=scheme)
    rows = {r.name: r for r in trace_model(p.model, input_size=(3, 32, 32), batch_size=2).rows}
    head = p.model.get_submodule("conv_head")
    assert accounting.forward_weight_temporaries(rows["conv_head"]) == 4 * head.weight.numel()
    assert accounting.forward_weight_temporaries(rows["blocks.6.0.conv_pw"]) == 0
    modelled = analyze(p.model, input_size=(3, 32, 32), batch_size=2).totals.total_modelled_bytes
    measured = measure(p.model, input_size=(3, 32, 32), batch_size=2).peak_bytes
    assert abs(modelled / measured - 1) <= 0.10


def test_default_scheme_and_mode_everywhere(meta_model):
    scheme = default_scheme(meta_model)
    assert scheme.bias_blocks == 9 and [str(u.ratio) for u in scheme.weights] == ["1/4", "1/2", "1", "1"]
    assert "sparse" in MODES and MODES["sparse"].frozen_backbone
    result = prepare_model(DEMO, "sparse", resolution=32, device="meta", engine=False).result
    assert result.applicable and 0 < result.n_trainable < result.n_total and result.scheme == scheme
    assert "sparse" in {m.name for m in resolve_modes("all")}
    from tinytl_core.ui.figures import MODE_COLORS

    assert "sparse" in MODE_COLORS
    mode = sparse_mode(SparseScheme(0, (WeightUpdate("nope", Fraction(1)),)))
    result = mode.apply(
        prepare_model(DEMO, "last", device="meta", engine=False).model, strict=False, engine=False
    )
    assert not result.applicable and "unknown layer 'nope'" in result.reason


# ------------------------------------------------------------------------------------------ search
def _analysis(gains: dict[Option, float], costs: dict[Option, int]) -> ContributionAnalysis:
    analysis = ContributionAnalysis(SearchConfig(DEMO), 0.5, 1000, 10)
    analysis.contributions = [
        Contribution(o, 0.5 + g, g, 1000 + costs[o], costs[o]) for o, g in gains.items()
    ]
    return analysis


def test_greedy_selection_respects_the_budget():
    bias4, bias8 = Option(bias_blocks=4), Option(bias_blocks=8)
    a_q, a_1 = Option(layer="a", ratio=Fraction(1, 4)), Option(layer="a", ratio=Fraction(1))
    b_1 = Option(layer="b", ratio=Fraction(1))
    gains = {bias4: 0.10, bias8: 0.15, a_q: 0.06, a_1: 0.08, b_1: 0.2}
    costs = {bias4: 100, bias8: 300, a_q: 50, a_1: 400, b_1: 5000}
    analysis = _analysis(gains, costs)

    def peak_of(scheme: SparseScheme) -> int:  # additive costs, plus an overlap penalty the estimate misses
        opts = [Option(bias_blocks=scheme.bias_blocks)] if scheme.bias_blocks else []
        opts += [Option(layer=u.layer, ratio=u.ratio) for u in scheme.weights]
        return 1000 + sum(costs[o] for o in opts) + (200 if len(opts) > 1 else 0)

    for budget in (1000, 1150, 1400, 2000, 10_000):
        sel = select_greedy(analysis, budget, peak_of=peak_of, fill=False)
        assert sel.peak_bytes <= budget or sel.scheme is None
        if sel.scheme is not None:
            assert peak_of(sel.scheme) == sel.peak_bytes
    assert select_greedy(analysis, 1000, peak_of=peak_of).scheme is None
    small = select_greedy(analysis, 1150, peak_of=peak_of, fill=False)  # a @ 1/4 first (most gain/byte)
    assert small.scheme == SparseScheme(0, (WeightUpdate("a", Fraction(1, 4)),))  # bias 4 fits alone only
    assert any(line.startswith("skip bias: last 4 blocks") for line in small.log)
    big = select_greedy(analysis, 10_000, peak_of=peak_of)
    assert big.scheme.bias_blocks == 8 and {u.layer: u.ratio for u in big.scheme.weights} == {"a": 1, "b": 1}
    assert big.expected_gain == pytest.approx(0.15 + 0.08 + 0.2)
    with pytest.raises(ValueError, match="positive"):
        select_greedy(analysis, 0, peak_of=peak_of)


@pytest.mark.slow
def test_contribution_analysis_runs_short_adaptations():
    config = SearchConfig(DEMO, resolution=32, batch_size=4, steps=1, shots=2, val_cap=1, device="cpu")
    analysis = analyse_contributions(config, options=[Option(layer="conv_head", ratio=Fraction(1, 8))])
    (c,) = analysis.contributions
    assert 0 <= c.accuracy <= 1 and c.gain == pytest.approx(analysis.baseline_loss - c.loss)  # loss dropped
    assert c.cost_bytes == c.peak_bytes - analysis.baseline_bytes > 0


def test_fill_raises_chosen_ratios_while_the_scheme_fits():
    a_q, b_q = Option(layer="a", ratio=Fraction(1, 4)), Option(layer="b", ratio=Fraction(1, 8))
    analysis = _analysis({a_q: 0.2, b_q: 0.1}, {a_q: 100, b_q: 100})
    row_cost = {"a": 400, "b": 800}  # bytes of a whole layer: a ratio costs its share

    def peak_of(scheme: SparseScheme) -> int:
        return 1000 + sum(int(row_cost[u.layer] * u.ratio) for u in scheme.weights)

    plain = select_greedy(analysis, 1500, peak_of=peak_of, fill=False)
    assert {u.layer: u.ratio for u in plain.scheme.weights} == {"a": Fraction(1, 4), "b": Fraction(1, 8)}
    filled = select_greedy(analysis, 1500, peak_of=peak_of)
    # a first (more gain per byte): 1/4 -> 1/2 -> 1 (1400), then b 1/8 would need 1/4 = 200 more: stays.
    assert {u.layer: u.ratio for u in filled.scheme.weights} == {"a": Fraction(1), "b": Fraction(1, 8)}
    assert filled.peak_bytes == peak_of(filled.scheme) == 1500 and filled.fits
    assert [line for line in filled.log if line.startswith("fill:")] == [
        "fill: a 1/4 -> 1/2, scheme peaks at 1.30 KB",  # sizes in the unit they call for
        "fill: a 1/2 -> 1, scheme peaks at 1.50 KB",
    ]
    # An unmeasured ratio counts the gain of the largest measured one below it.
    assert filled.expected_gain == pytest.approx(0.3)
    roomy = select_greedy(analysis, 10_000, peak_of=peak_of)
    assert {u.ratio for u in roomy.scheme.weights} == {Fraction(1)}


def test_pointwise_candidates_reach_further_back(meta_model):
    config = SearchConfig(DEMO, layers=8, ratios=(Fraction(1),), bias_fractions=(1.0,))
    every = [o.layer for o in candidate_options(config, meta_model) if o.layer]
    pointwise = [
        o.layer
        for o in candidate_options(replace(config, candidates=Candidates.POINTWISE), meta_model)
        if o.layer
    ]
    assert len(every) == len(pointwise) == 8 and every[-1] == pointwise[-1] == "conv_head"
    assert not any("conv_dw" in n for n in pointwise) and any("conv_dw" in n for n in every)
    assert pointwise[0] < every[0]  # blocks.4.x reaches further back than blocks.5.x
    for bad, message in (({"repeats": 0}, "repeats"), ({"metric": "acc"}, "metric")):
        with pytest.raises(ValueError, match=message):
            replace(config, **bad).validate()


def test_contributions_average_repeats_and_measure_loss(monkeypatch):
    """The arithmetic of the analysis on fake short runs: each seed's result averaged, gains over the right
    reference in the chosen metric."""
    from tinytl_core.adapt import AdaptResult
    from tinytl_core.sparse_search import search

    seeds: list[int] = []

    def fake_adapt(config, data=None):  # loss falls with what trains, and wobbles with the seed
        seeds.append(config.seed)
        scheme = config.scheme()
        trains = (scheme.bias_blocks + 10 * len(scheme.weights)) if scheme else 0
        wobble = 0.01 if config.seed % 2 else -0.01
        return AdaptResult(
            config=config,
            final_val_acc=0.5 + trains / 100 + wobble,
            final_val_loss=2.0 - trains / 10 + wobble,
        )

    monkeypatch.setattr(search, "adapt", fake_adapt)
    # Costs come from the memory model (tested above); here 1 byte per bias block, 50 per weight layer.
    monkeypatch.setattr(
        search, "modelled_peak", lambda c, s, n: 100 + (s.bias_blocks + 50 * len(s.weights) if s else 0)
    )
    head = Option(layer="conv_head", ratio=Fraction(1))
    bias = Option(bias_blocks=17)
    for metric, gains in ((Metric.LOSS, (1.7, 1.0)), (Metric.ACCURACY, (0.17, 0.10))):
        seeds.clear()
        config = SearchConfig(DEMO, resolution=32, seed=3, repeats=2, metric=metric, val_cap=1, shots=1)
        analysis = analyse_contributions(config, options=[head, bias])
        assert seeds == [3, 4] * 3  # classifier alone, biases, conv_head on top of the biases
        assert analysis.baseline_loss == pytest.approx(2.0) and analysis.baseline_accuracy == pytest.approx(
            0.5
        )
        by = {c.option: c for c in analysis.contributions}
        assert by[bias].gain == pytest.approx(gains[0]) and by[head].gain == pytest.approx(gains[1])
        assert by[head].loss == pytest.approx(2.0 - 2.7) and by[head].cost_bytes == 50
        assert by[bias].cost_bytes == 17


# --------------------------------------------------------------------------------------------- CLI
def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"weights": {"conv_head": "1/3"}}')
    assert cli_main(["adapt", "--mode", "sparse", "--sparse-scheme", str(bad), "--dataset", "digits"]) == 2
    assert "bad.json: layer 'conv_head': ratio must be one of" in capsys.readouterr().err
    good = tmp_path / "good.json"
    good.write_text('{"bias_blocks": 2}')
    assert cli_main(["adapt", "--mode", "bias", "--sparse-scheme", str(good), "--dataset", "digits"]) == 2
    assert "needs mode sparse" in capsys.readouterr().err
    assert cli_main(["sparse-search", "--budget=-3MB"]) == 2
    assert "budget must be positive" in capsys.readouterr().err
    assert cli_main(["sparse-search", "--budget", "2MB", "--ratios", "1/3"]) == 2
    assert "ratio must be one of" in capsys.readouterr().err


def test_sparse_search_refuses_an_impossible_budget_before_training(tmp_path, capsys, monkeypatch):
    """The classifier alone (at 2 classes: the fewest) is the least any scheme peaks at: a budget below it
    is refused before the dataset loads or any short run trains."""
    import tinytl_core.sparse_search.search as search

    monkeypatch.setattr(search, "load_dataset", lambda *a, **k: pytest.fail("the dataset was loaded"))
    out = tmp_path / "s.json"
    args = ["sparse-search", "--budget", "1KB", "--resolution", "32", "--out", str(out)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no scheme fits 1.00 KB: the classifier alone peaks at")
    assert "MB or more" in err
    assert not out.exists()


def test_the_suggested_command_trains_at_the_searched_settings(tmp_path):
    """The printed `adapt` command carries every setting the scheme's peak was modelled at: without
    --resolution it trained at the model's own size, over the budget."""
    import shlex

    from tinytl_core.cli.sparse_search import train_command

    config = SearchConfig(DEMO, dataset="digits", resolution=32, batch_size=4, frozen_weight_bits=8)
    words = shlex.split(train_command(config, tmp_path / "my scheme.json"))
    for flag, value in (("--resolution", "32"), ("--batch-size", "4"), ("--frozen-weight-bits", "8")):
        assert words[words.index(flag) + 1] == value
    assert words[words.index("--sparse-scheme") + 1] == str(tmp_path / "my scheme.json")


# --------------------------------------------------------------------------------------------- app
def test_scheme_text_from_the_browser_is_checked():
    from tinytl_core.ui.sparse import check_scheme_text, default_scheme_check

    bad = check_scheme_text('{"weights": {"conv_hed": "1/4"}}', "mobilenetv2_050")
    assert not bad.ok and "unknown layer 'conv_hed'; did you mean conv_head" in bad.error
    assert "not valid JSON" in check_scheme_text(b"{oops", "mobilenetv2_050").error
    assert "empty" in check_scheme_text("  ", "mobilenetv2_050").error
    good = check_scheme_text('{"bias_blocks": 2, "weights": {"conv_head": "1/8"}}', "mobilenetv2_050")
    assert good.ok and good.description == "biases of the last 2 of 17 blocks; weights: conv_head (1/8)"
    assert default_scheme_check("mobilenetv2_050").scheme.bias_blocks == 9


@pytest.mark.slow
def test_adapt_page_takes_a_pasted_scheme(tinytl_home):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from tinytl_core.jobs import JobQueue

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=180)
    for key, value in {
        "backbone": "mobilenetv2_050",
        "resolution": 32,
        "batch_size": 2,
        "pretrained": False,
    }.items():
        at.session_state[key] = value
    at.run()
    at.switch_page("app_pages/adapt.py").run()
    at.selectbox(key="ad_dataset").set_value("digits")
    at.multiselect(key="ad_modes").set_value(["sparse"]).run()
    assert any(
        "Sparse update trains the classifier and biases of the last 9 of 17" in c.value for c in at.caption
    )
    at.radio(key="ad_scheme_source").set_value("Paste JSON").run()
    at.text_area(key="ad_scheme_text").set_value('{"bias_blocks": 2, "weights": {"conv_head": "1/8"}}')
    at.button(key="ad_start").click().run()
    assert not at.error and not at.exception
    (job,) = JobQueue().list_jobs()
    assert job.config.mode == "sparse"
    assert job.config.sparse_scheme == {"bias_blocks": 2, "weights": {"conv_head": "1/8"}}


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=300)
    | st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=30,
    ).map(json.dumps)
    | st.integers(1, 30_000).map(lambda n: "[" * n)
)
def test_any_scheme_text_is_a_scheme_or_a_scheme_error(text):
    """The class: whatever a user pastes, the answer is a scheme or a SchemeError (the page shows it)."""
    try:
        SparseScheme.from_json(text)
    except SchemeError:
        pass


def test_a_mode_that_does_not_apply_changes_nothing():
    """Regression: ``apply(strict=False)`` reported sparse + GroupNorm as not applicable after it had
    already swapped every BatchNorm for GroupNorm; and a scheme whose last layer could not be split left
    the earlier ones split. Everything is checked before any layer changes."""
    from tinytl_core.backbones import create_backbone

    model, _ = create_backbone(DEMO, 10, False)
    before = [(name, type(m)) for name, m in model.named_modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = MODES["sparse"].apply(model, group_norm=True, strict=False)
    assert not result.applicable and "GroupNorm" in result.reason
    assert [(name, type(m)) for name, m in model.named_modules()] == before
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1][:2]
    bad = SparseScheme(weights=tuple(WeightUpdate(layer, Fraction(1, 2)) for layer in layers))
    model.get_submodule(layers[1]).padding_mode = "reflect"  # the second cannot be split
    with pytest.raises(ModeNotApplicable, match=f"{layers[1]}: a partial update needs a convolution"):
        sparse_mode(bad).apply(model, engine=False)
    assert [(name, type(m)) for name, m in model.named_modules()] == before  # the first not split either
    with pytest.raises(PartialUpdateError, match="whole number"):
        split_weight(model.get_submodule(layers[0]), True)
