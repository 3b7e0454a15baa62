"""Roofline of a training step: its FLOPs and bytes, the machine's GEMM peak and memory
bandwidth, and the attainable step time.

How the step is counted (``step_ops``): the operations of one forward + backward + SGD
step as the package arranges them, each a product or an element-wise pass.

* A product A[M,K] @ B[K,N] (``batch`` of them) costs 2 M K N FLOPs per matrix and moves
  (M K + K N + M N) elements: each operand read once, the result written once.
* An element-wise pass over k elements costs ``flops`` per element (exp, max, divide
  each count 1) and moves k elements per array it reads or writes.
* A symmetric eigendecomposition of an n x n matrix with eigenvectors costs 9 n^3 FLOPs
  (Golub & Van Loan, symmetric QR) and moves 2 n^2 elements.
Caches are ignored: bytes are what the unfused operation sequence streams, so the
memory bound is a lower bound on time for arrays larger than the caches and optimistic
for small ones.

The bound: each operation takes at least max(FLOPs / GEMM peak, bytes / bandwidth); the
step's attainable time is their sum, and ``fraction`` = attainable / measured (1 = at
the roofline). The peak is a large square matmul in the step's dtype and the bandwidth a
large copy (read + write), both measured on this machine in the same run.
"""

from __future__ import annotations

import time

import numpy as np


class Ops:
    """A list of (kind, name, flops, elements moved) for one step, and of its products with
    their shapes: (name, batch, M, K, N, layout), layout 'NN', 'NT' (A @ B^T with B stored
    (N, K)) or 'TN' (A^T @ B with A stored (K, M)), as the package calls them."""

    def __init__(self):
        self.rows = []
        self.products = []

    def gemm(self, name, M, K, N, batch=1, count=1, layout="NN"):
        for _ in range(count):
            self.rows.append(("gemm", name, 2.0 * batch * M * K * N, batch * (M * K + K * N + M * N)))
            self.products.append((name, batch, M, K, N, layout))

    def ew(self, name, elements, flops=1, arrays=2, count=1):
        for _ in range(count):
            self.rows.append(("elementwise", name, float(flops * elements), arrays * elements))

    def eigh(self, name, n, batch=1):
        self.rows.append(("eigh", name, 9.0 * batch * n ** 3, 2 * batch * n * n))

    def totals(self, itemsize):
        flops = sum(r[2] for r in self.rows)
        return flops, sum(r[3] for r in self.rows) * itemsize


def quadratic_ops(B, n, d, layers, targets, learn_h=False, first_input_grad=False, taylor_terms=5):
    """Operations of one step of the tied quadratic network (see module docstring); with the
    learned oracle, the exact B step by ``taylor_terms`` terms of its series per block."""
    o, N, nn = Ops(), B * n, B * n * n
    learned = targets == "learned"
    o.gemm("theta = phi phi^T", d, d, d, layout="NT")
    if learned:
        o.ew("W beside theta [theta | W]", d * d)
    for layer in range(layers):
        o.gemm("Z [theta | W]" if learned else "Y = Z theta", N, d, 2 * d if learned else d)
        o.gemm("scores Y Z^T", n, d, n, B, layout="NT")
        _gram_softmax_ops(o, B, n, d, "S", "Q = E (outer sum)")
        o.gemm("Q Y", n, n, d, B)
        o.ew("Z - h Q Y", N * d, flops=2, arrays=3)
        # backward of the A step: S_sym = S_bar + S_bar^T, no S_bar^T Y
        o.gemm("Zb Y^T", n, d, n, B, layout="NT")
        o.ew("P_bar = U + U^T", nn, arrays=3)
        o.ew("a = r^2 rowsum(E P_bar)", nn, flops=2, arrays=2)
        o.gemm("outer sum a 1^T + 1 a^T (rank 2)", n, 2, n, B)
        o.ew("S_sym = Q P_bar - E (outer sum)", nn, flops=3, arrays=9)
        o.gemm("Q Zb, S_sym Z", n, n, d, B, count=2)
        o.ew("T = Q Zb + S_sym Z / 2", N * d, flops=2, arrays=5)
        o.gemm("theta_bar Z^T T", d, N, d, layout="TN")
        if layer > 0 or first_input_grad:
            o.ew("T + S_sym Z / 2", N * d, arrays=3)
            o.gemm("(Q Zb + S_sym Z) theta", N, d, d)
            o.ew("Z_bar assembly", N * d, flops=2, arrays=3)
        if learn_h:
            o.ew("h_bar", N * d, flops=2, arrays=2)
        if learned:
            m = taylor_terms  # 0: the eigenbasis method (flows.quadratic_B_eigh_*)
            o.gemm("oracle scores ZW Z^T", n, d, n, B, layout="NT")
            o.ew("softmax C, M = C + C^T", nn, flops=6, arrays=4)
            o.ew("rho: |M| row sums, Frobenius", nn, flops=3, arrays=2)
            o.eigh("eigvalsh(theta) for rho", d)
            if m:
                _taylor_B_ops(o, B, n, d, m, learn_h)
            else:
                _eigh_B_ops(o, B, n, d)
            o.ew("C_bar = M_bar + M_bar^T", nn, arrays=3)
            o.ew("softmax VJP of C", nn, flops=4, arrays=3)
            o.gemm("S_C Z", n, n, d, B)
            o.gemm("W_bar", d, N, d, layout="TN")
            if layer > 0:
                o.gemm("(S_C Z) W^T", N, d, d, layout="NT")
                o.gemm("S_C^T ZW", n, n, d, B, layout="TN")
                o.ew("oracle Z_bar", N * d, flops=2, arrays=3)
    o.gemm("head Y = Z theta", N, d, d)
    o.gemm("logits Y Z^T", n, d, n, B, layout="NT")
    _gram_softmax_ops(o, B, n, d, "logits", "G + G^T = E (outer sum) - O - O^T")
    o.gemm("head Gs Z", n, n, d, B)
    o.gemm("head theta_bar Z^T (Gs Z)", d, N, d, layout="TN")
    o.gemm("head Z_bar = (Gs Z) theta", N, d, d)
    o.gemm("phi_bar = tril(S phi)", d, d, d)
    params = d * d * (2 if learned else 1)
    o.ew("SGD momentum update", params, flops=4, arrays=5)
    return o


def _gram_softmax_ops(o, B, n, d, scores, product):
    """The Gram softmax of a (B, n, n) score array (gram_softmax): exp_is_safe's read of the
    tokens' norms, the unshifted exponential and its row sums, and E times the outer sum
    r 1^T + 1 r^T (a rank-2 product, then one multiplication)."""
    o.ew("exp_is_safe: row norms of Z", B * n * d, flops=2, arrays=1)
    o.ew(f"E = exp({scores}), row sums", B * n * n, flops=2, arrays=3)
    o.gemm("outer sum r 1^T + 1 r^T (rank 2)", n, 2, n, B)
    o.ew(product, B * n * n, arrays=3)


def _taylor_B_ops(o, B, n, d, m, learn_h):
    """The exact B step by m terms of its series (flows.quadratic_B_taylor_*)."""
    N, nn = B * n, B * n * n
    o.gemm("Taylor R_k = M X_{k-1}", n, n, d, B, count=m)
    o.gemm("Taylor X_k = R_k theta_k", N, d, d, count=m)
    o.ew("Taylor sum of the terms", N * d, arrays=3, count=m)
    o.ew("h_bar: sum of R_k", N * d, arrays=3, count=m if learn_h else 0)
    o.gemm("theta_bar += R_k^T X_bar", d, N, d, count=m, layout="TN")
    o.gemm("T_k = X_bar theta_k", N, d, d, count=m)
    o.gemm("M_bar += T_k X_{k-1}^T", n, d, n, B, count=m, layout="NT")
    o.ew("M_bar accumulation", nn, arrays=3, count=m)
    o.gemm("M T_k", n, n, d, B, count=m, layout="TN")
    o.ew("X_bar = Z_bar + M T_k", N * d, arrays=3, count=m)


def _eigh_B_ops(o, B, n, d):
    """The exact B step in eigenbases (flows.quadratic_B_eigh_*), divided differences as products."""
    N, nn = B * n, B * n * n
    o.eigh("eigh(theta)", d)
    o.eigh("eigh(M)", n, B)
    o.gemm("U^T Z", n, n, d, B, layout="TN")
    o.gemm("U (E * Zt)", n, n, d, B)
    o.gemm("(.) V", N, d, d)
    o.gemm("(.) V^T", N, d, d, layout="NT")
    o.ew("E = exp(h lam mu^T), E * Zt", N * d, flops=3, arrays=3)
    o.gemm("U^T Zb", n, n, d, B, layout="TN")
    o.gemm("U (E * Yb)", n, n, d, B)
    o.gemm("(.) V", N, d, d)
    o.gemm("(.) V^T", N, d, d, layout="NT")
    o.ew("E * Yb, sqrt(E), scaled copies", N * d, flops=8, arrays=8)
    o.gemm("theta side: 4 products over (B n)", d, N, d, count=4, layout="TN")
    o.gemm("V G^T", d, d, d, layout="NT")
    o.gemm("(V G^T) V^T", d, d, d, layout="NT")
    o.gemm("M side: 4 batched products", n, d, n, B, count=4, layout="TN")
    o.ew("near/far select, 1/dx", nn, flops=6, arrays=5)
    o.gemm("U H", n, n, n, B)
    o.gemm("(U H) U^T", n, n, n, B, layout="NT")


def linear_ops(n, d, m, layers):
    """Operations of one step of the tied learned-oracle linear network (eq. 8)."""
    o = Ops()
    for _ in range(layers):
        o.gemm("Z [W; theta]^T", n, d, 2 * m)
        o.ew("softmax C, P; R = C - P", 2 * n * m, flops=6, arrays=3)
        o.gemm("(h R) theta", n, m, d)
        o.ew("Z + (.)", n * d, arrays=3)
        o.gemm("Zb theta^T", n, d, m)
        o.gemm("R^T Zb", m, n, d)
        o.ew("softmax VJPs, h_bar", 2 * n * m, flops=6, arrays=4)
        o.gemm("S_bar K", n, 2 * m, d)
        o.gemm("S_bar^T Z", 2 * m, n, d)
        o.ew("Z_bar + (.)", n * d, arrays=3)
    o.gemm("logits Z theta^T", n, d, m)
    o.ew("log-softmax, loss, G", n * m, flops=8, arrays=3)
    o.gemm("G^T Z", m, n, d)
    o.gemm("G theta", n, m, d)
    o.ew("SGD momentum update", 2 * m * d + m + 1, flops=4, arrays=5)
    return o


def bound(ops, itemsize, peak_flops, bandwidth):
    """Attainable seconds of the step: sum over operations of max(compute, memory)."""
    t = 0.0
    for _, _, flops, elems in ops.rows:
        t += max(flops / peak_flops, elems * itemsize / bandwidth)
    return t


def measure_peaks(gemm_n=2048, copy_mib=256, reps=5):
    """GEMM peak (FLOP/s, float32 and float64: a gemm_n square matmul into a preallocated
    output, best of ``reps``) and memory bandwidth (bytes/s: a copy of copy_mib MiB, read
    + write counted, best of ``reps``)."""
    rng = np.random.default_rng(0)
    out = {}
    for dt in ("float32", "float64"):
        a = rng.random((gemm_n, gemm_n)).astype(dt)
        b = rng.random((gemm_n, gemm_n)).astype(dt)
        c = np.empty_like(a)
        np.matmul(a, b, out=c)
        best = min(_timed(lambda: np.matmul(a, b, out=c)) for _ in range(reps))
        out[f"gemm_{dt}_flops"] = 2.0 * gemm_n ** 3 / best
    src = np.ones(copy_mib * 2 ** 20 // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(reps))
    out["bandwidth_bytes"] = 2.0 * src.nbytes / best
    out["gemm_n"], out["copy_mib"] = gemm_n, copy_mib
    return out


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
