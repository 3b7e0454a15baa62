"""The benchmark scripts refuse bad options with one argparse error line (exit 2) before
any timing, and bench_products.py counts the products the roofline counts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import bench_products  # noqa: E402
from _roofline import quadratic_ops  # noqa: E402


@pytest.mark.parametrize("argv, names", [
    (["--shapes", "1,2"], "--shapes"),
    (["--shapes", "2,x,3"], "--shapes"),
    (["--shapes", "0,4,4"], "--shapes"),
    (["--targets", "foo"], "--targets"),
    (["--dtypes", "float16"], "--dtypes"),
    (["--reps", "1"], "--reps"),
    (["--layers", "0"], "--layers"),
])
def test_bench_products_refuses_bad_options(argv, names, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_products.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert ": error: " in err[-1] and names in err[-1]


def test_bench_products_cli_error_is_one_line():
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "bench_products.py"), "--targets", "foo"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("bench_products.py: error: --targets")


@pytest.mark.parametrize("targets, terms", [("none", 0), ("learned", 4), ("learned", 0)])
def test_roofline_products_match_its_gemm_rows(targets, terms):
    ops = quadratic_ops(4, 8, 6, 2, targets, taylor_terms=terms)
    gemm = [r for r in ops.rows if r[0] == "gemm"]
    assert len(gemm) == len(ops.products)
    for row, (name, batch, M, K, N, layout) in zip(gemm, ops.products):
        assert row[1] == name and row[2] == 2.0 * batch * M * K * N
        assert layout in ("NN", "NT", "TN")
    layouts = {p[0]: p[5] for p in ops.products}
    # as fused_quadratic calls them: Y @ swap_last(Z), Z^T-stacked gram_sum, Q @ Y
    assert layouts["scores Y Z^T"] == "NT" and layouts["logits Y Z^T"] == "NT"
    assert layouts["theta_bar Z^T T"] == "TN" and layouts["Q Y"] == "NN"


def test_bench_products_groups_every_product_once():
    args = bench_products.parse_args(["--shapes", "4,8,6", "--targets", "none,learned", "--dtypes", "float64"])
    for name, dtype, products in bench_products.workloads(args):
        ops = quadratic_ops(4, 8, 6, args.layers, "learned" if "learned" in name else "none",
                            taylor_terms=args.taylor_terms)
        assert sum(rec["count"] for rec in products.values()) == len(ops.products)
        for key in products:
            A, B = bench_products.operands(key, dtype)
            batch, M, K, N, layout = key
            assert A.shape[-2:] == (M, K) and B.shape[-2:] == (K, N)
            assert A.flags.c_contiguous == (layout[0] == "N")
            assert B.flags.c_contiguous == (layout[1] == "N")
