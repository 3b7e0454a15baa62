"""PyTorch references for the benchmarks: the same networks as flowattn_np, three ways.

* ``eager``:   idiomatic PyTorch, as a user writes it: the forward pass with autograd.
* ``compile``: the same model with its loss under ``torch.compile`` (forward and the
  AOT-autograd backward compiled by inductor).
* ``fused``:   PyTorch in the package's own arrangement: hand-written forward and
  backward (no autograd) with the same products, reshapes and shared factors as the
  NumPy code, so that the array library alone differs.

Every reference starts from the NumPy network's parameters and uses
``torch.optim.SGD(momentum=0.9)`` (the update rule of ``flowattn_np.training.optim.SGD``).
Not part of the package; imported by the benchmark scripts only.
"""

from __future__ import annotations

import numpy as np
import torch

from flowattn_np.equations.exact_b import taylor_terms
from flowattn_np.fast.gram_softmax import exp_is_safe

F = torch.nn.functional
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _leaf(a, dtype):
    return torch.tensor(np.array(a), dtype=dtype, requires_grad=True)


class Reference:
    """Parameters as torch leaves, an SGD optimiser, and ``loss_and_grads`` / ``step``.

    Subclasses define ``loss(X, y)`` (autograd) or override ``loss_and_grads``.
    """

    keys = ()

    def __init__(self, params, spec, dtype, lr, momentum=0.9):
        self.spec = spec
        self.dtype = TORCH_DTYPES[dtype] if isinstance(dtype, str) else dtype
        self.p = {k: _leaf(params[k], self.dtype) for k in self.keys if k in params}
        self.opt = torch.optim.SGD(list(self.p.values()), lr=lr, momentum=momentum)
        self.loss_fn = self.loss

    def compile(self):
        """Put the loss under torch.compile (raises what torch raises)."""
        self.loss_fn = torch.compile(self.loss)
        return self

    def loss_and_grads(self, X, y):
        for v in self.p.values():
            v.grad = None
        loss = self.loss_fn(X, y)
        loss.backward()
        return loss.detach(), {k: v.grad for k, v in self.p.items()}

    def step(self, X, y):
        self.opt.zero_grad(set_to_none=True)
        loss, grads = self.loss_and_grads(X, y)
        for k, v in self.p.items():
            v.grad = grads[k]
        self.opt.step()
        return loss

    def eval_loss(self, X, y):
        with torch.no_grad():
            return float(self.loss(X, y))


# ---------------------------------------------------------------- linear (cross-attention)

class LinearEager(Reference):
    """Tied learned-oracle eq. (8) network, as a user writes it:

        Z <- Z + h (softmax(Z W^T + b) - softmax(Z theta^T)) theta   (L blocks)
        logits = Z theta^T;  loss = mean cross-entropy
    """

    keys = ("theta", "W", "b", "h")

    def loss(self, X, y):
        theta, W, b, h = (self.p[k] for k in self.keys)
        Z = X
        for _ in range(self.spec["layers"]):
            C_hat = torch.softmax(Z @ W.T + b, dim=1)
            P = torch.softmax(Z @ theta.T, dim=1)
            Z = Z + h * ((C_hat - P) @ theta)
        return F.cross_entropy(Z @ theta.T, y)


class LinearFused(LinearEager):
    """The same network with the package's hand-written eq. (8) forward and backward:
    one product Z [W; theta]^T for both scores, h on the n x m factor, no autograd."""

    def loss_and_grads(self, X, y):
        with torch.no_grad():
            theta, W, b, h = (self.p[k].detach() for k in self.keys)
            m = theta.shape[0]
            K = torch.cat([W, theta])
            Z, caches = X, []
            for _ in range(self.spec["layers"]):
                S = Z @ K.T
                S[:, :m] += b
                C = torch.softmax(S[:, :m], dim=1)
                P = torch.softmax(S[:, m:], dim=1)
                R = C - P
                caches.append((Z, C, P, R))
                Z = torch.addmm(Z, h * R, theta)
            logits = Z @ theta.T
            loss = F.cross_entropy(logits, y)
            G = torch.softmax(logits, dim=1)
            G[torch.arange(len(y)), y] -= 1
            G /= len(y)
            g = {"theta": G.T @ Z, "W": torch.zeros_like(W), "b": torch.zeros_like(b),
                 "h": torch.zeros_like(h)}
            Zb = G @ theta
            for Z, C, P, R in reversed(caches):
                Gt = Zb @ theta.T
                g["h"] += (Gt * R).sum()
                Rb = h * Gt
                SC = C * (Rb - (C * Rb).sum(1, keepdim=True))
                SP = P * (-Rb + (P * Rb).sum(1, keepdim=True))
                Sb = torch.cat([SC, SP], dim=1)
                KS = Sb.T @ Z
                g["theta"] += h * (R.T @ Zb) + KS[m:]
                g["W"] += KS[:m]
                g["b"] += SC.sum(0)
                Zb = torch.addmm(Zb, Sb, K)
            return loss, g


# ---------------------------------------------------------------- quadratic (self-attention)

def _exp_is_safe(S, Z, theta):
    """The package's test for the unshifted exponential of Gram scores, on the tensors'
    memory (CPU tensors share it with NumPy: no copy)."""
    return exp_is_safe(S.numpy(), Z.numpy(), theta.numpy())


def _loss_and_symmetrised_grad(logits, y, unshifted):
    """Mean token cross-entropy and G + G^T of its gradient G = (softmax - onehot) / rows,
    as the package forms them (gram_softmax.label_cross_entropy_and_symmetric_grad where unshifted)."""
    Bsz, n, _ = logits.shape
    rows = Bsz * n
    labels = y.reshape(-1)
    if not unshifted:
        loss = F.cross_entropy(logits.reshape(-1, n), labels)
        G = torch.softmax(logits, dim=-1).reshape(-1, n)
        G[torch.arange(rows), labels] -= 1
        G = (G / rows).view(Bsz, n, n)
        return loss, G + G.mT
    E = logits.exp()
    s = E.sum(-1)
    loss = (s.log().reshape(-1) - logits.reshape(-1, n)[torch.arange(rows), labels]).sum() / rows
    r = 1 / (s * rows)
    Gs = E * (r[..., :, None] + r[..., None, :])
    first = torch.arange(0, rows * n, n)
    within = first % (n * n)
    flat = Gs.view(-1)
    flat[first + labels] -= 1.0 / rows
    flat[first - within + within // n + labels * n] -= 1.0 / rows
    return loss, Gs


def _sym_softmax_vjp(P, Pb):
    """Softmax VJP, in place on Pb: P * (Pb - rowsum(P * Pb))."""
    s = (P * Pb).sum(-1, keepdim=True)
    return Pb.sub_(s).mul_(P)


class QuadraticEager(Reference):
    """Tied self-attention network (eq. 10), as a user writes it with autograd:

        C = softmax(Z W Z^T)                          (learned oracle, if any)
        Z <- Z - h (P + P^T) Z theta,  P = softmax(Z theta Z^T)      (A: Euler)
        Z <- U [exp(h lam mu^T) * (U^T Z V)] V^T      (B exact; M = C + C^T = U lam U^T,
                                                       theta = V mu V^T)
        logits = Z theta Z^T;  loss = mean cross-entropy over tokens

    theta = tril(phi) tril(phi)^T. The exact B step is written as its closed form reads, in
    eigenbases (NumPy's host path evaluates the same exponential by its Taylor series; the
    ``fused`` reference does the same in PyTorch). PyTorch differentiates eigh through its
    eigenvector formula, which divides by eigenvalue gaps: theta must have distinct
    eigenvalues.
    """

    keys = ("phi", "W", "h")

    def _h(self):
        return self.p["h"] if "h" in self.p else self.spec["h"]

    def loss(self, X, y):
        phi = torch.tril(self.p["phi"])
        theta = phi @ phi.T
        h = self._h()
        Z = X
        for _ in range(self.spec["layers"]):
            if self.spec["targets"] == "learned":
                C = torch.softmax(Z @ self.p["W"] @ Z.mT, dim=-1)
            Y = Z @ theta
            P = torch.softmax(Y @ Z.mT, dim=-1)
            Z = Z - h * ((P + P.mT) @ Y)
            if self.spec["targets"] == "learned":
                lam, U = torch.linalg.eigh(C + C.mT)
                mu, V = torch.linalg.eigh(theta)
                E = torch.exp(h * lam[..., :, None] * mu)
                Z = U @ (E * (U.mT @ Z @ V)) @ V.T
        logits = Z @ theta @ Z.mT
        n = logits.shape[-1]
        return F.cross_entropy(logits.reshape(-1, n), y.reshape(-1))


class QuadraticFused(QuadraticEager):
    """The same network with a hand-written forward and backward in the package's
    arrangement: products sharing a weight as one 2-D GEMM over (B*n, d), Z theta
    computed once and shared by forward, backward and the head, the exact B step by its
    Taylor series (matrix products, the package's host method and number of terms),
    the Gram softmax where the package takes it (unshifted exp, Q = E (r 1^T + 1 r^T), the
    backward through S_bar + S_bar^T and the head through G + G^T), theta's gradient
    accumulated symmetrised and pushed to phi once."""

    def loss_and_grads(self, X, y):
        with torch.no_grad():
            return self._loss_and_grads(X, y)

    def _loss_and_grads(self, X, y):
        spec = self.spec
        learned = spec["targets"] == "learned"
        phi = self.p["phi"].detach()
        theta = phi @ phi.T
        h = self._h()
        h = h.detach() if torch.is_tensor(h) else h
        Bsz, n, d = X.shape
        K = torch.cat([theta, self.p["W"].detach()], dim=1) if learned else theta
        Z, caches = X, []
        for _ in range(spec["layers"]):
            YW = (Z.reshape(-1, d) @ K).view(Bsz, n, -1)
            Y = YW[..., :d]
            S = Y @ Z.mT
            if _exp_is_safe(S, Z, theta):  # the package's Gram softmax (gram_softmax.py)
                E = S.exp_()
                r = 1 / E.sum(-1)
                P, Q = None, E * (r[..., :, None] + r[..., None, :])
            else:
                E, r, P = None, None, torch.softmax(S, dim=-1)
                Q = P + P.mT
            Fq = Q @ Y
            Zh = Z - h * Fq
            c = {"Z": Z, "Y": Y, "P": P, "E": E, "r": r, "Q": Q, "F": Fq}
            if learned:
                ZW = YW[..., d:]
                C = torch.softmax(ZW @ Z.mT, dim=-1)
                Z = self._B_taylor(Zh, C, theta, h, c)
                c.update(ZW=ZW, C=C)
            else:
                Z = Zh
            caches.append(c)
        YL = (Z.reshape(-1, d) @ theta).view(Bsz, n, d)
        logits = YL @ Z.mT
        loss, Gs = _loss_and_symmetrised_grad(logits, y, _exp_is_safe(logits, Z, theta))
        GZ = Gs @ Z  # theta symmetric: Z_bar = (G + G^T) Z theta, theta_bar ~ Z^T (G + G^T) Z / 2
        Ssym = 0.5 * (Z.reshape(-1, d).T @ GZ.reshape(-1, d))
        Ssym = Ssym + Ssym.T  # theta_bar + theta_bar^T
        Zb = (GZ.reshape(-1, d) @ theta).view(Bsz, n, d)
        grads = {k: torch.zeros_like(v) for k, v in self.p.items()}
        for layer in reversed(range(spec["layers"])):
            c = caches[layer]
            if learned:
                Zb, Cb, th = self._B_vjp(Zb, c, theta, h, grads)
                Ssym += th
            Zb, th = self._A_vjp(Zb, c, theta, h, need_Z=layer > 0, grads=grads)
            Ssym += th
            if learned:
                Zb = self._oracle_vjp(Zb, Cb, c, grads, need_Z=layer > 0)
        grads["phi"] = torch.tril(Ssym @ phi)
        return loss, grads

    def _A_vjp(self, Zb, c, theta, h, need_Z, grads):
        Z, Y, Q = c["Z"], c["Y"], c["Q"]
        Bsz, n, d = Z.shape
        if "h" in grads:
            grads["h"] -= (Zb * c["F"]).sum()
        UYt = Zb @ Y.mT
        Pb = UYt + UYt.mT
        if c["E"] is not None:  # S_bar + S_bar^T = Q Pb - E (a 1^T + 1 a^T), a = r^2 rowsum(E Pb)
            E, r = c["E"], c["r"]
            a = (E * Pb).sum(-1) * r * r
            Ssym = Q * Pb - E * (a[..., :, None] + a[..., None, :])
        else:
            Sb = _sym_softmax_vjp(c["P"], Pb)
            Ssym = Sb + Sb.mT
        T = Q @ Zb
        T2 = Ssym @ Z
        th = Z.reshape(-1, d).T @ (T + 0.5 * T2).reshape(-1, d)
        th = -h * (th + th.T)
        if not need_Z:
            return None, th
        Zin = Zb - h * ((T + T2).reshape(-1, d) @ theta).view(Bsz, n, d)
        return Zin, th

    @staticmethod
    def _B_taylor(Z, C, theta, h, c):
        """The exact B step as the package takes it on the host: the Taylor series of
        exp(h theta (x) M) Z, M = C + C^T, with the package's number of terms."""
        Bsz, n, d = Z.shape
        M = C + C.mT
        rho = abs(float(h)) * float(torch.linalg.eigvalsh(theta).abs().max()) * float(M.abs().sum(-1).max())
        m = taylor_terms(rho, np.dtype(str(Z.dtype).replace("torch.", "")))
        if m is None:
            raise ValueError(f"the B step's generator norm {rho:.3g} is beyond the Taylor series' range")
        thetas = [theta * (h / k) for k in range(1, m + 1)]
        X, Zn, Xs, Rs = Z, Z.clone(), [], []
        for theta_k in thetas:
            Xs.append(X)
            Rs.append(M @ X)
            X = (Rs[-1].reshape(-1, d) @ theta_k).view(Bsz, n, d)
            Zn += X
        c.update(M=M, thetas=thetas, Xs=Xs, Rs=Rs)
        return Zn

    def _B_vjp(self, Zb, c, theta, h, grads):
        M, thetas, Xs, Rs = c["M"], c["thetas"], c["Xs"], c["Rs"]
        Bsz, n, d = Zb.shape
        if "h" in grads:
            grads["h"] += ((Zb.reshape(-1, d) @ theta).view(Bsz, n, d) * sum(Rs)).sum()
        Mb = torch.zeros_like(M)
        th = torch.zeros_like(theta)
        Xb = Zb
        for k in reversed(range(len(thetas))):
            th += (h / (k + 1)) * (Rs[k].reshape(-1, d).T @ Xb.reshape(-1, d))
            T = (Xb.reshape(-1, d) @ thetas[k]).view(Bsz, n, d)
            Mb += T @ Xs[k].mT
            Xb = Zb + M.mT @ T
        return Xb, Mb + Mb.mT, th + th.T

    def _oracle_vjp(self, Zb, Cb, c, grads, need_Z):
        Z, ZW, C = c["Z"], c["ZW"], c["C"]
        Bsz, n, d = Z.shape
        SC = _sym_softmax_vjp(C, Cb)
        SCZ = SC @ Z
        grads["W"] += Z.reshape(-1, d).T @ SCZ.reshape(-1, d)
        if not need_Z:
            return None
        W = self.p["W"].detach()
        return Zb + (SCZ.reshape(-1, d) @ W.T).view(Bsz, n, d) + SC.mT @ ZW


REFERENCES = {
    ("linear", "eager"): LinearEager, ("linear", "fused"): LinearFused,
    ("quadratic", "eager"): QuadraticEager, ("quadratic", "fused"): QuadraticFused,
}


def make_reference(impl, spec, params, lr):
    """The PyTorch reference ``impl`` ('eager', 'compile' or 'fused') of a workload."""
    cls = REFERENCES[(spec["model"], "fused" if impl == "fused" else "eager")]
    ref = cls(params, spec, spec["dtype"], lr)
    return ref.compile() if impl == "compile" else ref
