"""The CUDA paths: the engine, the measurement and adaptation on a GPU (skipped where none is present).

CI has no GPU; these run on a machine with one (`python -m pytest tests/test_cuda.py`). TF32 is turned off
so that the engine and stock PyTorch are compared at float32 precision, as on the CPU."""

import copy

import pytest
import torch
from test_adapt import tiny
from test_engine_models import BATCH, SIZE, _train_step, _worst_error
from test_engine_working_set import Case, _input, _layer, _params

from tinytl_core.adapt import StepEvent, adapt
from tinytl_core.engine import convert
from tinytl_core.engine.bitmask import pack_bits, unpack_bits
from tinytl_core.layer_kinds import uses_sign_mask
from tinytl_core.memory import MemoryLimitError, analyze, measure, measure_stock_and_engine
from tinytl_core.modes import MODES, prepare_model
from tinytl_core.quantities import MB
from tinytl_core.results import ResultsStore

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")
# cuBLAS and cuDNN keep workspaces in PyTorch's allocator, which max_memory_allocated counts and the memory
# model does not: about 70 MB on an H200 (README, "On a GPU").
CUDA_WORKSPACES = 128 * MB


@pytest.fixture(autouse=True)
def _float32_precision():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("numel", [1, 9, 4099])
def test_bit_masks_round_trip_on_cuda(numel):
    flags = torch.rand(numel, device=CUDA) > 0.5
    packed = pack_bits(flags)
    assert packed.device.type == "cuda" and packed.numel() == (numel + 7) // 8
    assert torch.equal(unpack_bits(packed, (numel,), torch.float32), flags.float())
    assert torch.equal(packed.cpu(), pack_bits(flags.cpu()))


def _grads_on(device: str, layer: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor):
    """Output and gradients (input, then trainable parameters) of one forward + backward on ``device``."""
    layer = copy.deepcopy(layer).to(device)
    leaf = x.to(device).requires_grad_(True)
    # a non-leaf input, as in a network: in-place layers may write over it
    y = layer(leaf.clone(memory_format=torch.preserve_format))
    params = [p for p in layer.parameters() if p.requires_grad]
    # a copy: own_grad kernels write over the output gradient, as the one consumer they are in a network
    grads = torch.autograd.grad(y, [leaf, *params], grad.to(device, copy=True))
    return [t.detach().cpu() for t in (y, *grads)]


@pytest.mark.parametrize(("case", "channels_last"), _params())
def test_every_engine_kernel_computes_on_cuda_what_it_computes_on_the_cpu(case: Case, channels_last: bool):
    """The class behind a CUDA-only bug: each engine kernel (every case of the working-set test, both
    layouts) gives the same output and gradients on the GPU as on the CPU, where the other tests check it
    against stock PyTorch. (The frozen-statistics norm once passed one buffer as both of the CUDA kernel's
    save_mean and save_invstd, so it subtracted the inverse std instead of the mean.)"""
    layer, x = _layer(case, channels_last), _input(case, channels_last)
    with torch.no_grad():
        grad = torch.randn_like(layer(x.clone()))
    cpu, cuda = _grads_on("cpu", layer, x, grad), _grads_on("cuda", layer, x, grad)
    assert [t.shape for t in cpu] == [t.shape for t in cuda]
    if case.kernel == "BitDropoutFn":
        return  # the GPU draws other random numbers
    for i, (a, b) in enumerate(zip(cpu, cuda)):
        # norm-wise: weight gradients sum thousands of products, which the GPU adds in another order (stock
        # convolutions differ elementwise by more than 1e-4 where a sum nearly cancels); a wrong kernel is
        # off by the whole tensor
        error = float((a - b).norm() / b.norm().clamp_min(1e-12))
        assert error <= 1e-4, (case.name, ["output", "input grad", "param grad"][min(i, 2)], error)


@pytest.mark.parametrize("backbone", ["mobilenetv2_100", "resnet18", "efficientnet_b0"])
def test_engine_gradients_equal_stock_on_cuda(backbone):
    x = torch.randn(BATCH, *SIZE, device=CUDA)
    target = torch.tensor([1, 7], device=CUDA)
    for mode in MODES:
        torch.manual_seed(0)
        model = prepare_model(backbone, mode, resolution=SIZE[-1], engine=False, device="cuda").model
        stock_out, stock_grads, stock_saved = _train_step(model, x, target)
        convert(model, input_size=SIZE)
        engine_out, engine_grads, engine_saved = _train_step(model, x, target)
        # cuDNN may pick other algorithms for the engine's kernels: equal to float32 rounding, not bitwise.
        assert torch.allclose(stock_out, engine_out, rtol=1e-4, atol=1e-5), mode
        assert stock_grads.keys() == engine_grads.keys(), mode
        if not (MODES[mode].approximate_gradients and any(uses_sign_mask(m) for m in model.modules())):
            assert _worst_error(engine_grads, stock_grads) <= 1e-4, mode
        assert engine_saved <= stock_saved, mode


@pytest.mark.parametrize("backbone", ["mobilenetv2_100", "resnet18"])
def test_modelled_activations_match_a_cuda_step(backbone):
    """What stock PyTorch and the engine save on the GPU is what the model says (the CPU's rules)."""
    for mode in MODES:
        model = prepare_model(backbone, mode, resolution=SIZE[-1], device="cuda").model
        report = analyze(model, input_size=SIZE, batch_size=BATCH)
        both = measure_stock_and_engine(
            model, input_size=SIZE, batch_size=BATCH, per_layer=False, modelled=report
        )
        totals = report.totals
        assert both.stock.device.startswith("cuda") and both.stock.peak_cuda_bytes is not None
        assert both.stock.saved_bytes == pytest.approx(totals.activations_stock_bytes, rel=0.02), mode
        assert both.engine is not None, both.engine_error
        assert both.engine.saved_bytes == pytest.approx(totals.activations_necessary_bytes, rel=0.05), mode


@pytest.mark.parametrize(("backbone", "mode"), [("mobilenetv2_100", "full"), ("mobilenetv2_100", "bias")])
def test_modelled_step_peak_matches_max_memory_allocated(backbone, mode):
    """The headline a user checks on a GPU, torch.cuda.max_memory_allocated, within 10 % of the model."""
    size, batch = (3, 224, 224), 8
    model = prepare_model(backbone, mode, resolution=224, device="cuda").model
    report = analyze(model, input_size=size, batch_size=batch)
    both = measure_stock_and_engine(
        model, input_size=size, batch_size=batch, per_layer=False, modelled=report
    )
    t = report.totals
    for measured, modelled in (
        (both.stock.step_peak, t.total_stock_bytes),
        (both.engine.step_peak, t.total_modelled_bytes),
    ):
        # never below the model; above it by at most 10 % and the CUDA libraries' workspaces
        assert 0.9 * modelled <= measured <= 1.1 * modelled + CUDA_WORKSPACES, (measured, modelled)


def test_a_step_larger_than_the_gpu_is_refused_before_allocating():
    model = prepare_model("resnet18", "full", resolution=224, device="cuda").model
    before = torch.cuda.memory_allocated()
    with pytest.raises(MemoryLimitError, match="only"):
        measure(model, input_size=(3, 1024, 1024), batch_size=100_000)
    assert torch.cuda.memory_allocated() <= before  # (an earlier test's garbage may be freed meanwhile)


@pytest.mark.parametrize("mode", ["bias", "lite_residual+bias"])
def test_adaptation_on_cuda_follows_the_cpu(mode, tmp_path, monkeypatch):
    """Same seed, same data: the GPU's training losses follow the CPU's (frozen-statistics norms, masks and
    lite residual branches on the engine), and the run records the GPU's measured step peak."""
    monkeypatch.setenv("TINYTL_HOME", str(tmp_path / "home"))
    store = ResultsStore(tmp_path / "r.sqlite")
    losses = {}
    for device in ("cpu", "cuda"):
        events = []
        config = tiny(mode=mode, device=device, steps=6, record_memory=device == "cuda")
        result = adapt(config, store=store, progress=events.append)
        assert result.status == "finished" and result.device.startswith(device)
        losses[device] = [e.loss for e in events if isinstance(e, StepEvent)]
    # the first loss comes before any update; later ones drift with float32 rounding, not by whole units
    assert losses["cuda"][0] == pytest.approx(losses["cpu"][0], rel=1e-4), losses
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=2e-2), losses
    memory = result.memory
    assert memory is not None and memory.total_measured_bytes is not None
    # max_memory_allocated holds what the model counts, plus the CUDA libraries' workspaces
    assert memory.total_measured_bytes >= 0.9 * memory.total_modelled_bytes


def test_free_memory_counts_what_the_caching_allocator_holds_unused():
    """A worker trains job after job: the blocks an earlier run freed stay reserved by PyTorch (the driver
    counts them as taken), and a fit check that ignored them refused runs that fit."""
    from tinytl_core.tracing import available_memory

    before = available_memory(CUDA)
    block = torch.empty(512 * 2**20, dtype=torch.uint8, device=CUDA)
    del block  # freed to PyTorch's cache, not to the driver
    assert torch.cuda.memory_reserved() >= 512 * 2**20
    assert available_memory(CUDA) >= before - 2**20
