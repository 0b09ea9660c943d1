"""The screened paths (int8, bfloat16 and float32 products): exact float64 statistics, on data chosen to
stress their error bound."""

import pytest
import torch

from metrictransfer.evaluation import knn, screened
from tests.evaluation.test_retrieval import _assert_stats_equal, _brute_force


@pytest.fixture(autouse=True, params=[torch.int8, torch.bfloat16, torch.float32], ids=["int8", "bfloat16", "float32"])
def precision(request, monkeypatch):
    """Every test with the screen's products in int8, bfloat16 and float32."""
    monkeypatch.setattr(knn, "screen_precision", lambda: request.param)
    return request.param


def _stats(x, labels, metric="euclidean", **kwargs):
    return knn.query_statistics(x, labels, metric=metric, screen=True, block_size=64, **kwargs)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_norms_over_six_orders_of_magnitude_match_float64(metric):
    """Catches a bound that assumed unit vectors: items from 1e-3 to 1e3 in norm, 256-d, in one block."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(30, 256, generator=g)
    labels = torch.randint(0, 30, (300,), generator=g)
    scale = 10 ** torch.empty(300, 1).uniform_(-3, 3, generator=g)
    x = (centers[labels] + 0.8 * torch.randn(300, 256, generator=g)) * scale
    _assert_stats_equal(_stats(x, labels, metric), _brute_force(x, labels, metric))


def test_near_duplicates_of_other_classes_match_float64():
    """Catches entries lost in the screen's band: every item has a copy of another class within 1e-4."""
    g = torch.Generator().manual_seed(1)
    base = torch.nn.functional.normalize(torch.randn(120, 128, generator=g), dim=1)
    x = torch.cat([base, base + 1e-4 * torch.randn(120, 128, generator=g)])
    labels = torch.cat([torch.arange(120) // 3, 1000 + torch.arange(120) // 3])
    _assert_stats_equal(_stats(x, labels), _brute_force(x, labels))


def test_a_far_offset_where_float32_misorders_is_decided_in_float64():
    """Items near 1,000 in every coordinate: float32 distances through |x|² + |y|² - 2x·y lose their last
    digits to cancellation, the float64 decision does not."""
    g = torch.Generator().manual_seed(2)
    x = 1000 + torch.randn(200, 8, generator=g).mul(0.05)
    labels = torch.randint(0, 20, (200,), generator=g)
    _assert_stats_equal(_stats(x, labels), _brute_force(x, labels))


def test_query_vs_gallery_with_hits_that_overflow_a_threads_buffer(monkeypatch):
    """Catches column hits dropped when a thread's buffer fills: a capacity of one row forces many rounds."""
    monkeypatch.setattr(screened, "_HIT_CAPACITY", 64)
    x = torch.randint(0, 3, (150, 16)).float()  # many exact ties; 16-d: int8 products too
    labels = torch.randint(0, 6, (150,))
    _assert_stats_equal(_stats(x, labels), _brute_force(x, labels))
    is_query = torch.arange(150) % 2 == 0
    stats = knn.query_statistics(x[is_query], labels[is_query], x[~is_query], labels[~is_query], screen=True, block_size=64)
    _assert_stats_equal(stats, _brute_force(x[is_query], labels[is_query], "euclidean", x[~is_query], labels[~is_query]))


def test_a_product_that_breaks_the_bound_is_refused(monkeypatch):
    """Catches a BLAS (or a change to block_error) whose products fall outside the bound: not trusted."""
    original = screened.block_products

    def broken(a, b, b_t=None):  # off by half the block's largest product, in its own units and type
        products = original(a, b, b_t)
        return products + (products.abs().max() / 2).to(products.dtype)

    monkeypatch.setattr(screened, "block_products", broken)
    x, labels = torch.randn(100, 16), torch.randint(0, 10, (100,))
    with pytest.raises(RuntimeError, match="broke its error bound"):
        _stats(x, labels)


def test_the_bound_holds_for_every_product_of_a_block(precision):
    """The whole block, not a sample: every product within block_error plus its output rounding."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(512, 384, generator=g) * 10 ** torch.empty(512, 1).uniform_(-2, 2, generator=g)
    shift = x.mean(0)
    side = screened._Operand(x, euclidean=True, precision=precision, shift=shift)
    products = screened.block_products(side.low, side.low).double() * side.scale.double()[:, None] * side.scale.double()
    exact = (x.double() - shift.double()) @ (x.double() - shift.double()).t()
    error = screened.block_error(side, side, slice(0, 512), slice(0, 512))
    error = error + screened.entry_error(side, side, torch.arange(512)[:, None], torch.arange(512)[None, :])
    assert bool(((products - exact).abs() <= error + screened.output_rounding(precision) * products.abs()).all())


class _Chosen(Exception):
    pass


def test_automatic_choice_needs_float32_embeddings_a_screen_precision_and_a_large_evaluation(monkeypatch):
    """Catches the screen run where it is slower (no precision named for this CPU) or less exact (float64 input)."""

    def chosen(*args, **kwargs):
        raise _Chosen

    monkeypatch.setattr(screened, "operands", chosen)
    monkeypatch.setattr(knn, "FUSED_KERNEL_MIN_PAIRS", 0)
    x, labels = torch.randn(40, 4), torch.randint(0, 4, (40,))
    monkeypatch.setattr(knn, "screen_precision", lambda: torch.bfloat16)
    with pytest.raises(_Chosen):
        knn.query_statistics(x, labels)
    knn.query_statistics(x.double(), labels)  # float64 embeddings keep the float64 path
    monkeypatch.setattr(knn, "FUSED_KERNEL_MIN_PAIRS", 2**62)
    knn.query_statistics(x, labels)  # small: not worth loading the kernels
    monkeypatch.setattr(knn, "FUSED_KERNEL_MIN_PAIRS", 0)
    monkeypatch.setattr(knn, "screen_precision", lambda: None)
    knn.query_statistics(x, labels)


def test_a_block_wider_than_the_hit_buffer_is_folded():
    """Catches an endless loop: a row of more columns than the default buffer holds must still be started."""
    g = torch.Generator().manual_seed(4)
    gallery = torch.randn(70_000, 16, generator=g)
    gallery_labels = torch.randint(0, 50, (70_000,), generator=g)
    queries, query_labels = gallery[:3] + 0.01, gallery_labels[:3]
    stats = knn.query_statistics(queries, query_labels, gallery, gallery_labels, screen=True, block_size=100_000)
    _assert_stats_equal(stats, _brute_force(queries, query_labels, "euclidean", gallery, gallery_labels))


def test_the_default_precision_is_int8_then_bfloat16_where_the_cpu_has_them_and_float32_elsewhere(monkeypatch):
    """Catches a CPU without bfloat16 instructions sent back to the slower float32 kernel (or to bfloat16),
    and one where int8 products are exact not given the fastest product."""
    monkeypatch.setattr(screened, "cpu_has_int8_products", lambda: False)
    monkeypatch.setattr(screened, "cpu_has_bfloat16_dot", lambda: False)
    assert screened.screen_precision() is torch.float32
    monkeypatch.setattr(screened, "cpu_has_bfloat16_dot", lambda: True)
    assert screened.screen_precision() is torch.bfloat16
    monkeypatch.setattr(screened, "cpu_has_int8_products", lambda: True)
    assert screened.screen_precision() is torch.int8


@pytest.mark.parametrize("dim", [1, 3, 15])
def test_int8_is_left_where_too_few_dimensions_would_screen_nothing(precision, dim):
    """Catches int8 products used below INT8_DIMS (torch's CPU int8 product is wrong for one dimension)."""
    x = torch.randn(50, dim)
    a, _ = screened.operands(x, x, True, "euclidean", precision)
    assert a.precision != torch.int8
    labels = torch.randint(0, 5, (50,))
    _assert_stats_equal(_stats(x, labels), _brute_force(x, labels))


_INT8_SUMS = """
import sys, torch
from metrictransfer.evaluation import screened
g, top = torch.Generator().manual_seed(5), screened.int8_levels()
for dim in (screened.INT8_DIMS[0], 17, 100, 512, 1031):
    a = torch.randint(-top, top + 1, (70, dim), dtype=torch.int8, generator=g)
    b = torch.randint(-top, top + 1, (45, dim), dtype=torch.int8, generator=g)
    signs = [(torch.randint(0, 2, (n, dim), generator=g) * 2 - 1).to(torch.int8) for n in (70, 45)]
    for left, right in ((a, b), (signs[0] * top, signs[1] * top), (torch.full_like(a, -top), torch.full_like(b, -top))):
        if not torch.equal(screened.block_products(left, right), left.int() @ right.int().t()):
            sys.exit(f"wrong int8 sums at {dim} dimensions")
"""


@pytest.mark.parametrize("isa", ["", "AVX512_CORE", "AVX2"])
def test_int8_sums_are_exact_with_and_without_vnni(precision, isa):
    """Catches 8-bit values where oneDNN sums pairs of products in int16: the screen's int8 products must be
    exact on this CPU, and with oneDNN held to AVX-512 without VNNI (Skylake) and to AVX2 (Zen 2 and 3,
    Haswell). With int8_levels ignoring the cap, this CPU's VNNI would choose 8-bit values and fail there."""
    if precision != torch.int8:
        pytest.skip("one check, not one per precision")
    import os
    import subprocess
    import sys

    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa} if isa else dict(os.environ)
    done = subprocess.run([sys.executable, "-c", _INT8_SUMS], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_int8_levels_are_8_bit_only_where_onednn_may_use_vnni(monkeypatch):
    monkeypatch.setattr(screened, "_cpu_features", lambda: {"avx2": True, "avx512vnni": True})
    for cap, levels in (("", 127), ("ALL", 127), ("avx512_core_bf16", 127), ("AVX512_CORE", 63), ("AVX2", 63)):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert screened.int8_levels() == levels, cap
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert screened.int8_levels() == 127
    monkeypatch.setattr(screened, "_cpu_features", lambda: {"avx2": True})
    assert screened.int8_levels() == 63


def test_a_large_common_offset_is_taken_out_before_the_screen(monkeypatch, precision):
    """Catches the shift not reaching the screen: items near 50 in every coordinate, 0.1 apart, would make int8's
    step (a 127th or 63rd of each item's largest coordinate) wider than the classes, and nearly every entry pass."""
    g = torch.Generator().manual_seed(6)
    centers = torch.randn(40, 64, generator=g)
    labels = torch.randint(0, 40, (400,), generator=g)
    x = 50 + 0.1 * (centers[labels] + 0.5 * torch.randn(400, 64, generator=g))
    built = []
    original = screened.operands
    monkeypatch.setattr(screened, "operands", lambda *args: built.append(original(*args)) or built[-1])
    _assert_stats_equal(_stats(x, labels), _brute_force(x, labels))
    assert float(built[0][0].rounding.max()) < 0.05  # unshifted, int8 rounds by 0.9 to 1.8 here
