"""Write the teaching notebooks of flowattn_np (stored WITHOUT outputs).

    python notebooks/build_notebooks.py          # rewrites notebooks/0*.ipynb

The notebooks are generated from this file so that they stay reviewable as plain
Python; edit the cells here and re-run it. tests/test_notebooks.py executes every
notebook in this folder and checks that none is stored with outputs.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text):
    return new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text):
    return new_code_cell(textwrap.dedent(text).strip("\n"))


def notebook(cells):
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


# =============================================================================== 01

NB1 = [
    md(r"""
    # 1. Cross-attention from multinomial regression

    Take a multinomial regression with **fixed** parameters $\theta$ and turn the usual
    question around: instead of training $\theta$, ask which *features* $Z$ the model likes
    best, and walk $Z$ downhill on the cross-entropy. The gradient you have to follow is
    exactly **cross-attention** of the features to the rows of $\theta$. This notebook
    derives that gradient (eq. 4 of Actor, Gruber & Cyr, *Deriving Transformer Architectures
    as Implicit Multinomial Regression*, arXiv 2509.04653), checks it against finite
    differences, states the optimality condition (eq. 5), and draws the gradient flow
    (eq. 6) in the plane, where the cross-entropy visibly falls along every trajectory
    (eq. 7).
    """),
    code("""
    import numpy as np
    import matplotlib.pyplot as plt

    import flowattn_np as fa

    np.set_printoptions(precision=4, suppress=True)
    rng = np.random.default_rng(0)  # every random draw below comes from this seed
    """),
    md(r"""
    ## The linear model and its point-wise cross-entropy (eqs. 1–3)

    * features $Z \in \mathbb{R}^{n\times d}$: one row per sample (or token),
    * parameters $\theta \in \mathbb{R}^{m\times d}$: one row per class,
    * logits $N = Z\theta^\top \in \mathbb{R}^{n\times m}$,
    * targets $C \in \mathbb{R}^{n\times m}$, rows are probability distributions (one-hot
      in the paper), $\sigma$ the **row-wise** softmax.

    The point-wise cross-entropy (3) is

    $$\ell(Z) = -\langle C, \log\sigma(Z\theta^\top)\rangle
              = -\langle C, Z\theta^\top\rangle + \sum_i \mathrm{LSE}(Z\theta^\top)_i ,$$

    where the second form uses $C\mathbf{1} = \mathbf{1}$. It is a sum over rows, so lowering
    it row by row lowers the global cross-entropy (2) greedily. Training minimises over
    $\theta$; here $\theta$ stays fixed and we minimise over $Z$.
    `fa.linear_loss` returns the **sum** over rows.
    """),
    code("""
    n, d, m = 6, 4, 3
    Z = rng.normal(size=(n, d))
    theta = rng.normal(size=(m, d))
    y = rng.integers(0, m, size=n)
    C = fa.one_hot(y, m)                       # float64 one-hot targets, n x m

    N = fa.linear_logits(Z, theta)             # N = Z theta^T
    loss = fa.linear_loss(Z, theta, C)         # eq. (3), summed over the n rows
    loss_lse = -(C * N).sum() + fa.logsumexp(N).sum()
    print(f"l(Z) = {float(loss):.6f}    LSE form: {float(loss_lse):.6f}")
    assert np.isclose(loss, loss_lse)
    """),
    code("""
    P = fa.softmax(N)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3), layout="constrained")
    for ax, M, title in [(axes[0], P, r"model $\\sigma(Z\\theta^\\top)$"), (axes[1], C, "targets $C$")]:
        im = ax.imshow(M, cmap="viridis", vmin=0, vmax=1)
        ax.set(title=title, xlabel="class k", ylabel="row i", xticks=range(m))
    fig.colorbar(im, ax=axes[:2].tolist(), shrink=0.8)
    axes[2].barh(range(n), -(C * fa.log_softmax(N)).sum(axis=1), color="C1")
    axes[2].invert_yaxis()
    axes[2].set(title="point-wise loss of each row", xlabel=r"$-\\log \\sigma(N)_{i, y_i}$", ylabel="row i");
    """),
    md(r"""
    ## Its gradient is cross-attention (eq. 4)

    Perturb the features by $dZ$ and follow the change through the model:

    1. logits: $dN = dZ\,\theta^\top$;
    2. the linear term: $d\big(-\langle C, N\rangle\big) = -\langle C, dZ\,\theta^\top\rangle = -\langle C\theta, dZ\rangle$;
    3. the log-sum-exp: $\partial\,\mathrm{LSE}(N)_i / \partial N_{ik} = \sigma(N)_{ik}$, so
       $d\sum_i \mathrm{LSE}(N)_i = \langle \sigma(N), dN\rangle = \langle \sigma(Z\theta^\top)\,\theta, dZ\rangle$;
    4. together $d\ell = \langle (\sigma(Z\theta^\top) - C)\,\theta,\ dZ\rangle$, that is

    $$\nabla_Z \ell = \underbrace{\sigma(Z\theta^\top)\,\theta}_{\mathrm{CA}(Z,\,\theta)} - C\theta. \tag{4}$$

    $\mathrm{CA}$ is **cross-attention** with queries $Z$ and keys = values = $\theta$: each
    row scores every class prototype, normalises the scores with a softmax, and returns the
    weighted average of the prototypes. The residual $G = \sigma(N) - C$ pushed back through
    the model gives every gradient in the package.
    """),
    code("""
    CA = fa.cross_attention(Z, theta)          # sigma(Z theta^T) theta
    grad = fa.linear_grad_Z(Z, theta, C)       # eq. (4)
    assert np.allclose(CA, fa.softmax(Z @ theta.T) @ theta)
    assert np.allclose(grad, CA - C @ theta)
    print("grad_Z l =\\n", grad)
    """),
    md(r"""
    Trust, but check: `fa.gradcheck` compares the formula with central finite differences,
    $(\ell(Z + \varepsilon E_{ij}) - \ell(Z - \varepsilon E_{ij}))/2\varepsilon$, entry by entry
    (in float64). The same residual also gives the training gradient
    $\nabla_\theta \ell = (\sigma(Z\theta^\top) - C)^\top Z$.
    """),
    code("""
    result = fa.gradcheck(lambda Z: fa.linear_loss(Z, theta, C), Z, grad)
    print(result)
    assert result.passed

    result_theta = fa.gradcheck(lambda th: fa.linear_loss(Z, th, C), theta, fa.linear_grad_theta(Z, theta, C))
    print("theta:", result_theta)
    assert result_theta.passed
    """),
    code("""
    fig, ax = plt.subplots(figsize=(3.6, 3.6), layout="constrained")
    lim = 1.1 * np.abs(result.analytic).max()
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=1)
    ax.plot(result.numerical.ravel(), result.analytic.ravel(), "o", color="C0")
    ax.set(xlabel="finite differences", ylabel=r"eq. (4): CA$(Z,\\theta) - C\\theta$",
           title=r"all $n \\times d$ entries of $\\nabla_Z \\ell$", aspect="equal");
    """),
    md(r"""
    ## Optimal features (eq. 5)

    The gradient vanishes where

    $$\mathrm{CA}(Z, \theta) = C\theta , \tag{5}$$

    i.e. where the attention output of every row equals its target mix of prototypes. The
    softmax is strictly positive, so for a **one-hot** target and prototypes in general
    position (5) has no finite solution: the cross-entropy only tends to 0 as the row runs
    off to infinity inside its class's cone. For a **soft** target in the interior of the
    simplex, (5) has a finite solution $z^\ast$ with $\sigma(z^\ast\theta^\top) = c$. We will
    see both below.

    ## The gradient flow in the plane (eq. 6)

    $$\frac{dZ}{dt} = -\nabla_Z\ell = C\theta - \mathrm{CA}(Z, \theta), \qquad Z(0) = Z_0. \tag{6}$$

    The rows do not interact (the linear model has no token-to-token term; that needs the
    quadratic model of notebook 2), so every row follows its own flow
    $\dot z = c\,\theta - \sigma(z\theta^\top)\,\theta$. A toy problem: $d = 2$, $m = 3$
    classes, prototypes of length 2 at 120° from each other. Because rows are independent,
    one call evaluates the field on a whole grid (625 rows), and `fa.integrate` with RK4
    moves 8 starting points (8 rows) at once.
    """),
    code("""
    angles = np.deg2rad([90, 210, 330])
    theta2 = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)   # 3 prototypes in R^2
    target = 0                                                           # the class we flow towards

    g = np.linspace(-4.5, 4.5, 25)
    grid = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)           # 625 grid points = 625 rows

    start = np.deg2rad(np.arange(8) * 45 + 10)
    Z0 = 3.0 * np.stack([np.cos(start), np.sin(start)], axis=1)          # 8 starting points
    C0 = fa.one_hot(np.full(len(Z0), target), 3)

    T, steps = 8.0, 800
    path = np.stack(fa.integrate(lambda Z: fa.linear_flow(Z, theta2, C0), Z0, T, steps,
                                 method="rk4", return_path=True))
    print("trajectories:", path.shape, "= (time steps + 1, rows, d)")
    """),
    md(r"""
    For the soft target $c = (0.6, 0.3, 0.1)$ the optimum of (5) is explicit: $\sigma(z\theta^\top) = c$
    means $z\theta^\top = \log c + \text{const}$, and since these prototypes sum to zero the
    constant drops out in a least-squares solve. The flow should end there from every start.
    """),
    code("""
    c_soft = np.array([0.6, 0.3, 0.1])
    log_c = np.log(c_soft)
    z_star = np.linalg.lstsq(theta2, log_c - log_c.mean(), rcond=None)[0]
    print("z* =", z_star, "   sigma(z* theta^T) =", fa.softmax(z_star[None] @ theta2.T)[0])

    C_soft = np.tile(c_soft, (len(Z0), 1))
    path_soft = np.stack(fa.integrate(lambda Z: fa.linear_flow(Z, theta2, C_soft), Z0, 20.0, 1000,
                                      method="rk4", return_path=True))
    Z_end = path_soft[-1]
    gap = np.abs(fa.cross_attention(Z_end, theta2) - C_soft @ theta2).max()
    print(f"after t = 20: max |Z - z*| = {np.abs(Z_end - z_star).max():.1e}, max |CA - C theta| = {gap:.1e}")
    assert np.allclose(Z_end, z_star, atol=1e-3)   # every trajectory reaches the optimum ...
    assert gap < 1e-3                              # ... where eq. (5) holds
    """),
    code("""
    def draw_flow(ax, c_row, paths, title):
        field = fa.linear_flow(grid, theta2, np.tile(c_row, (len(grid), 1))).reshape(len(g), len(g), 2)
        prob = fa.softmax(grid @ theta2.T)[:, target].reshape(len(g), len(g))
        ax.contourf(g, g, prob, levels=np.linspace(0, 1, 11), cmap="Blues", alpha=0.35)
        ax.streamplot(g, g, field[..., 0], field[..., 1], color="0.45", density=1.1, linewidth=0.7)
        for k, p in enumerate(theta2):
            ax.annotate("", xy=p, xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=f"C{k}", lw=2.5))
            ax.text(*(1.2 * p), rf"$\\theta_{k}$", color=f"C{k}", fontsize=12, ha="center", va="center")
        for j in range(paths.shape[1]):
            ax.plot(paths[:, j, 0], paths[:, j, 1], color="C3", lw=1.8)
            ax.plot(*paths[0, j], "o", color="C3", ms=4)
        ax.set(xlim=(g[0], g[-1]), ylim=(g[0], g[-1]), aspect="equal", title=title)

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), layout="constrained")
    draw_flow(axes[0], C0[0], path, f"one-hot target: class {target} (no finite optimum: creeps outward)")
    draw_flow(axes[1], c_soft, path_soft, "soft target c = (0.6, 0.3, 0.1): a finite optimum")
    axes[1].plot(*z_star, "*", color="k", ms=16, label=r"$z^\\ast$, eq. (5)")
    axes[1].legend(loc="lower right")
    fig.suptitle(r"gradient flow (6): $\\dot z = c\\,\\theta - \\sigma(z\\theta^\\top)\\theta$;"
                 r" shading: $\\sigma(z\\theta^\\top)_0$");
    """),
    md(r"""
    ## The cross-entropy only goes down (eq. 7)

    Along the flow, by the chain rule and (6),

    $$\frac{d}{dt}\,\ell(Z(t)) = \langle \nabla_Z\ell, \dot Z\rangle = -\|\nabla_Z \ell\|_F^2 \le 0 . \tag{7}$$

    We check it on the one-hot trajectories: the per-row loss $\ell_i(t)$, differentiated in
    time with central differences (error $O(\Delta t^2)$), against $-\|\nabla_{z_i}\ell\|^2$.
    """),
    code("""
    t = np.linspace(0.0, T, steps + 1)
    loss_t = np.stack([-(C0 * fa.log_softmax(Z @ theta2.T)).sum(axis=1) for Z in path])   # (time, row)
    grad_sq = np.stack([(fa.linear_grad_Z(Z, theta2, C0) ** 2).sum(axis=1) for Z in path])
    dloss_dt = np.gradient(loss_t, t, axis=0)

    rel_err = np.abs(dloss_dt[1:-1] + grad_sq[1:-1]).max() / grad_sq.max()
    print(f"max |dl/dt + ||grad||^2| / max ||grad||^2 = {rel_err:.1e}")
    assert rel_err < 1e-3
    assert np.all(np.diff(loss_t, axis=0) <= 1e-12)   # monotone along every trajectory
    """),
    code("""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
    axes[0].semilogy(t, loss_t, color="C3", lw=1.2)
    axes[0].set(xlabel="t", ylabel=r"$\\ell_i(Z(t))$", title="point-wise loss along the 8 trajectories")
    j = int(np.argmax(loss_t[0]))   # the trajectory that starts worst
    axes[1].plot(t, dloss_dt[:, j], lw=3, alpha=0.5, label=r"$\\frac{d}{dt}\\ell$ (finite differences)")
    axes[1].plot(t, -grad_sq[:, j], "k--", lw=1.2, label=r"$-\\|\\nabla_z \\ell\\|^2$")
    axes[1].set(xlabel="t", title=f"eq. (7) on trajectory {j}")
    axes[1].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    """),
    md(r"""
    ## One Euler step is already a residual block

    An explicit Euler step of (6) with step $h$ reads
    $z_{k+1} = z_k - h\,\mathrm{CA}(z_k,\theta) + h\,c\,\theta$: attention plus a residual
    connection, then a term driven by the labels. Notebook 3 makes this the transformer block
    of eq. (8). The Hessian of $\ell$ in one row is bounded by $\lambda_{\max}(\theta\theta^\top)/2$,
    so any $h < 4/\lambda_{\max}$ is a guaranteed descent step; here $h = 1/\lambda_{\max}$.
    """),
    code("""
    lam_max = np.linalg.eigvalsh(theta2 @ theta2.T).max()
    h = 1.0 / lam_max
    euler = np.stack(fa.integrate(lambda Z: fa.linear_flow(Z, theta2, C0), Z0, 12 * h, 12,
                                  method="euler", return_path=True))
    euler_loss = [float(fa.linear_loss(Z, theta2, C0)) for Z in euler]
    print(f"lam_max = {lam_max:.2f}, h = {h:.3f}; summed loss per step:", np.round(euler_loss, 3))
    assert all(b < a for a, b in zip(euler_loss, euler_loss[1:]))

    fig, ax = plt.subplots(figsize=(4.8, 4.8), layout="constrained")
    for j in range(len(Z0)):
        ax.plot(path[:, j, 0], path[:, j, 1], color="C3", lw=1, alpha=0.6)
        ax.plot(euler[:, j, 0], euler[:, j, 1], "o-", color="C0", ms=3, lw=0.6)
    ax.plot([], [], color="C3", label="flow (RK4)")
    ax.plot([], [], "o-", color="C0", ms=3, label=r"Euler steps, $h = 1/\\lambda_{\\max}$")
    ax.set(aspect="equal", title="discrete steps follow the flow")
    ax.legend();
    """),
    md(r"""
    ## What to take away

    * For the linear model $N = Z\theta^\top$, the gradient of the point-wise cross-entropy
      in the features is $\nabla_Z\ell = \mathrm{CA}(Z,\theta) - C\theta$ (eq. 4):
      cross-attention with keys = values = $\theta$, minus the target prototypes.
    * Optimal features satisfy $\mathrm{CA}(Z,\theta) = C\theta$ (eq. 5): reachable for soft
      targets, only approached at infinity for one-hot ones.
    * The gradient flow (6) moves each row independently, and the cross-entropy decreases at
      the rate $\|\nabla_Z\ell\|^2$ (eq. 7).
    * An Euler step of the flow is "attention + residual + label term": the seed of a
      transformer block (notebook 3).
    """),
]

# =============================================================================== 02

NB2 = [
    md(r"""
    # 2. Self-attention from the quadratic model

    Replace the linear model by a quadratic one, $N = Z\theta Z^\top$: now every token scores
    every *other token*, and the targets say which token each token should pick. The
    gradient of the cross-entropy in the features becomes **self-attention plus its adjoint**
    (eq. 9 of Actor, Gruber & Cyr, arXiv 2509.04653). This notebook checks that formula,
    then trains $\theta = \phi\phi^\top$ on a synthetic retrieval task whose answer is a
    hidden matrix $\theta^\ast$, and shows that training recovers $\theta^\ast$ and turns the
    attention maps into the target maps.
    """),
    code("""
    import numpy as np
    import matplotlib.pyplot as plt

    import flowattn_np as fa
    from flowattn_np import BlockConfig, Network, NetworkConfig
    from flowattn_np.data import make_retrieval, random_spd
    from flowattn_np.optim import SGD, Adam, Cosine
    from flowattn_np.train import evaluate, fit

    np.set_printoptions(precision=4, suppress=True)
    rng = np.random.default_rng(0)
    """),
    md(r"""
    ## The quadratic model

    $Z \in \mathbb{R}^{n\times d}$ are $n$ tokens, $\theta = \phi\phi^\top$ is symmetric
    positive (semi-)definite with a lower-triangular factor $\phi$, and
    $N = Z\theta Z^\top \in \mathbb{R}^{n\times n}$: entry $(i, j)$ is how much token $i$
    likes token $j$. The targets $C$ are $n\times n$ (row $i$: which token $i$ should pick),
    and the loss is again the point-wise cross-entropy (3), $\ell = -\langle C, \log\sigma(Z\theta Z^\top)\rangle$.
    In transformer language $Q = K = V = Z\phi$ with output projection $\phi^\top$.
    """),
    code("""
    n, d = 6, 3
    Z = rng.normal(size=(n, d))
    phi = np.tril(rng.normal(size=(d, d)))
    theta = fa.theta_from_phi(phi)                      # phi phi^T: symmetric
    C = fa.one_hot(rng.integers(0, n, size=n), n)       # each token picks a token

    N = fa.quadratic_logits(Z, theta)                   # Z theta Z^T, n x n
    P = fa.softmax(N)                                   # the attention matrix
    print("loss l(Z) =", float(fa.quadratic_loss(Z, theta, C)))
    """),
    md(r"""
    ## Self-attention and its adjoint

    $$\mathrm{SA}(Z,\theta) = \sigma(Z\theta Z^\top)\,Z\theta, \qquad
      \mathrm{SA}^\ast(Z,\theta) = \sigma(Z\theta Z^\top)^\top Z\theta .$$

    $\mathrm{SA}$ is ordinary self-attention: token $i$ *reads* from the tokens it attends to
    (row $i$ of $P$). $\mathrm{SA}^\ast$ uses the same matrix transposed: token $j$ collects
    from the tokens that attend *to it* (column $j$ of $P$).
    """),
    code("""
    SA = fa.self_attention(Z, theta)
    SA_adj = fa.self_attention_adjoint(Z, theta)
    assert np.allclose(SA, P @ Z @ theta)
    assert np.allclose(SA_adj, P.T @ Z @ theta)

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), layout="constrained")
    axes[0].imshow(P, cmap="viridis", vmin=0, vmax=1)
    axes[0].set(title=r"$P = \\sigma(Z\\theta Z^\\top)$: rows sum to 1", xlabel="key token j", ylabel="query token i")
    axes[1].imshow(P.T, cmap="viridis", vmin=0, vmax=1)
    axes[1].set(title=r"$P^\\top$ used by SA$^\\ast$", xlabel="token i", ylabel="token j")
    axes[2].bar(range(n), P.sum(axis=0), color="C1")
    axes[2].axhline(1, color="k", ls="--", lw=1)
    axes[2].set(title="column sums of P: attention each token receives", xlabel="token j");
    """),
    md(r"""
    ## The gradient (eq. 9)

    With $G = \sigma(N) - C$ and $dN = dZ\,\theta Z^\top + Z\theta\,dZ^\top$:

    $$d\ell = \langle G, dN\rangle = \langle G Z\theta, dZ\rangle + \langle G^\top Z\theta, dZ\rangle
      \quad(\theta \text{ symmetric}),$$

    $$\nabla_Z\ell = (G + G^\top) Z\theta = \mathrm{SA}(Z,\theta) + \mathrm{SA}^\ast(Z,\theta) - (C + C^\top) Z\theta . \tag{9}$$

    The gradient flow $\dot Z = (C + C^\top)Z\theta - \mathrm{SA} - \mathrm{SA}^\ast$ is a
    self-attention layer plus a label term: the quadratic counterpart of eq. (6).
    """),
    code("""
    grad = fa.quadratic_grad_Z(Z, theta, C)
    assert np.allclose(grad, SA + SA_adj - (C + C.T) @ Z @ theta)

    result = fa.gradcheck(lambda Z: fa.quadratic_loss(Z, theta, C), Z, grad)
    print("Z:  ", result)
    assert result.passed
    """),
    md(r"""
    Training needs the gradient in the factor: $\nabla_\phi\ell = \mathrm{tril}\big((Z^\top G Z + Z^\top G^\top Z)\,\phi\big)$,
    kept lower-triangular because only the lower triangle of $\phi$ is a parameter. The finite
    differences therefore perturb $\phi$ through `np.tril`.
    """),
    code("""
    grad_phi = fa.quadratic_grad_phi(Z, phi, C)
    result_phi = fa.gradcheck(lambda p: fa.quadratic_loss(Z, fa.theta_from_phi(np.tril(p)), C), phi, grad_phi)
    print("phi:", result_phi)
    assert result_phi.passed

    fig, ax = plt.subplots(figsize=(3.6, 3.6), layout="constrained")
    for r, label in [(result, r"$\\nabla_Z$ (eq. 9)"), (result_phi, r"$\\nabla_\\phi$")]:
        ax.plot(r.numerical.ravel(), r.analytic.ravel(), "o", label=label)
    lim = 1.1 * max(np.abs(result.analytic).max(), np.abs(result_phi.analytic).max())
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=1)
    ax.set(xlabel="finite differences", ylabel="formula", aspect="equal")
    ax.legend();
    """),
    md(r"""
    ## A retrieval task with a hidden $\theta^\ast$

    `make_retrieval` draws sequences of $n = 8$ tokens in $\mathbb{R}^6$ and a hidden SPD
    matrix $\theta^\ast$; the target of token $i$ is the token it scores highest,
    $y_{bi} = \arg\max_j (Z_b\theta^\ast Z_b^\top)_{ij}$. A quadratic model that gets every
    target right must rank tokens like $\theta^\ast$, so training should recover $\theta^\ast$
    up to scale (the arg-max does not see the scale; the cross-entropy keeps sharpening it).
    Many tokens pick themselves (a positive-definite $\theta^\ast$ favours $z_i^\top\theta^\ast z_i$),
    so we also report the accuracy on the tokens whose target is another token.
    """),
    code("""
    d, tokens = 6, 8
    theta_star = random_spd(d, seed=1, condition=10.0)    # eigenvalues spread over [1, 10]
    X, y, theta_star = make_retrieval(num_seqs=2048, tokens=tokens, d=d, theta_star=theta_star, seed=0)
    X_test, y_test, _ = make_retrieval(num_seqs=512, tokens=tokens, d=d, theta_star=theta_star, seed=1)
    print("X:", X.shape, X.dtype, "  y:", y.shape, "(target token of every token)")
    print(f"share of tokens whose target is themselves: {(y == np.arange(tokens)).mean():.2f}")
    """),
    md(r"""
    The package's `Network` with `layers=0` and a quadratic block is exactly this model: its
    head computes $Z\theta Z^\top$ with $\theta = \phi\phi^\top$, its labels are token indices
    of shape (B, n), and its loss is the mean over tokens. Its $\phi$ gradient is
    `quadratic_grad_phi` divided by the number of tokens. Its default start is
    $\theta = I/\sqrt d$, which already resembles any well-conditioned SPD matrix; to make
    the comparison honest we start from a random factor instead.
    """),
    code("""
    def cosine(A, B):
        \"\"\"Cosine similarity of two matrices, flattened.\"\"\"
        a, b = np.ravel(A).astype(np.float64), np.ravel(B).astype(np.float64)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    net = Network(NetworkConfig(n_inputs=d, layers=0, block=BlockConfig(model="quadratic")), seed=0)
    print(net.describe())
    net.params["phi"][...] = np.tril(rng.normal(size=(d, d)) / np.sqrt(d))   # random lower-triangular start
    theta_init = fa.theta_from_phi(net.params["phi"]).copy()

    loss, grads, _ = net.loss_and_grads(X[:4], y[:4])
    C4 = net.target_matrix(y[:4], X.dtype)
    assert np.allclose(grads["phi"], fa.quadratic_grad_phi(X[:4], net.params["phi"], C4) / (4 * tokens), atol=1e-6)
    print(f"cosine(theta_init, theta*) = {cosine(theta_init, theta_star):.3f}")
    """),
    code("""
    epochs, batch = 30, 128
    opt = Adam(net.params, lr=0.03, schedule=Cosine(epochs * int(np.ceil(len(X) / batch))))
    history = fit(net, X, y, epochs=epochs, batch_size=batch, optimizer=opt, seed=0, progress=False)

    theta_learned = fa.theta_from_phi(net.params["phi"])
    test = evaluate(net, X_test, y_test)
    pred = net.predict(fa.asarray(X_test))
    other = y_test != np.arange(tokens)
    cos_sim = cosine(theta_learned, theta_star)
    print(f"test accuracy {test['accuracy']:.3f} (on tokens that pick another token: "
          f"{(pred == y_test)[other].mean():.3f}),  test loss {test['loss']:.3f}")
    print(f"cosine(theta_learned, theta*) = {cos_sim:.4f}")
    assert cos_sim > 0.9
    """),
    code("""
    fig = plt.figure(figsize=(12, 3.4), layout="constrained")
    ax0, ax1, ax2, ax3 = fig.subplots(1, 4, width_ratios=[1.3, 1, 1, 1])
    ax0.plot(history.column("epoch"), history.column("train_loss"), "o-", ms=3)
    ax0.set(xlabel="epoch", ylabel="training cross-entropy", yscale="log", title="training (Adam)")
    ax0.grid(alpha=0.3)
    mats = [(theta_init, "start (random $\\\\phi$)"), (theta_learned, "learned $\\\\theta = \\\\phi\\\\phi^\\\\top$"),
            (theta_star, "hidden $\\\\theta^\\\\ast$")]
    for ax, (M, title) in zip((ax1, ax2, ax3), mats):
        M = M / np.abs(M).max()                           # compare shapes: the scale is not identifiable
        im = ax.imshow(M, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set(title=f"{title}\\ncos to $\\\\theta^\\\\ast$ = {cosine(M, theta_star):.3f}", xticks=[], yticks=[])
    fig.colorbar(im, ax=[ax1, ax2, ax3], shrink=0.8, label="entry / max |entry|");
    """),
    md(r"""
    ## Attention maps before and after training

    For one test sequence: the attention matrix $\sigma(Z\theta Z^\top)$ at the start, after
    training, and the one-hot target map. Training has made each row put its mass on the
    target token.
    """),
    code("""
    b = 0
    Zb = X_test[b].astype(np.float64)
    target_map = fa.one_hot(y_test[b], tokens)
    before = fa.softmax(fa.quadratic_logits(Zb, theta_init.astype(np.float64)))
    after = fa.softmax(fa.quadratic_logits(Zb, theta_learned.astype(np.float64)))

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), layout="constrained")
    for ax, M, title in [(axes[0], before, "before training"), (axes[1], after, "after training"),
                         (axes[2], target_map, "target (one-hot)")]:
        im = ax.imshow(M, cmap="viridis", vmin=0, vmax=1)
        ax.set(title=title, xlabel="key token j", ylabel="query token i")
    fig.colorbar(im, ax=axes.tolist(), shrink=0.8)
    print(f"mass on the target token: before {(before * target_map).sum(1).mean():.2f}, "
          f"after {(after * target_map).sum(1).mean():.2f}")
    assert (after * target_map).sum(1).mean() > (before * target_map).sum(1).mean()
    """),
    md(r"""
    ## The same training by hand

    `fit` hides nothing essential: the loop below trains a fresh factor with plain SGD
    (momentum 0.9) and `quadratic_grad_phi`, divided by the number of tokens in the batch.
    """),
    code("""
    C_train = fa.one_hot(y.reshape(-1), tokens, "float32").reshape(len(X), tokens, tokens)
    params = {"phi": np.tril(rng.normal(size=(d, d)) / np.sqrt(d)).astype(np.float32)}
    sgd = SGD(params, lr=0.5, momentum=0.9)
    order_rng = np.random.default_rng(0)
    for epoch in range(30):
        order = order_rng.permutation(len(X))
        for start in range(0, len(X), batch):
            idx = order[start:start + batch]
            g = fa.quadratic_grad_phi(X[idx], params["phi"], C_train[idx]) / (len(idx) * tokens)
            sgd.step({"phi": g})
    cos_hand = cosine(fa.theta_from_phi(params["phi"]), theta_star)
    print(f"by hand with SGD: cosine(theta, theta*) = {cos_hand:.4f}")
    assert cos_hand > 0.9
    """),
    md(r"""
    ## What to take away

    * For the quadratic model $N = Z\theta Z^\top$ the feature gradient is
      $\mathrm{SA} + \mathrm{SA}^\ast - (C + C^\top)Z\theta$ (eq. 9): self-attention, its adjoint
      (the same attention matrix transposed), and a label term.
    * $\theta = \phi\phi^\top$ keeps the model symmetric positive semi-definite; its gradient
      through the lower-triangular factor is checked by finite differences.
    * Trained on a retrieval task, the model recovers the hidden scoring matrix $\theta^\ast$
      (cosine similarity close to 1) and its attention maps match the targets.
    """),
]

# =============================================================================== 03

NB3 = [
    md(r"""
    # 3. Splitting the flow: Lie vs Strang, and why a transformer block is first order

    The gradient flow $\dot Z = C\theta - \mathrm{CA}(Z,\theta)$ (eq. 6) has two parts: a
    nonlinear attention part and a label part that is trivial to solve. Splitting the flow
    into these two parts and alternating them gives discrete blocks; with one Euler step
    for the attention part, the Lie splitting is exactly the transformer block of eq. (8):
    attention + residual, then a linear map + residual. This notebook draws the split steps,
    **measures** the order of accuracy of Lie and Strang splitting against a fine reference
    solution, and shows that a single Euler step for attention makes both first order.
    """),
    code("""
    import numpy as np
    import matplotlib.pyplot as plt

    import flowattn_np as fa
    from flowattn_np import BlockConfig, make_block

    np.set_printoptions(precision=4, suppress=True)
    """),
    md(r"""
    ## Two sub-flows

    * **A** (attention): $\dot Z = -\mathrm{CA}(Z, \theta)$, nonlinear, integrated by an
      explicit one-step method (Euler, Heun or RK4);
    * **B** (label forcing): $\dot Z = C\theta$, constant in $Z$, solved exactly:
      $Z(t) = Z + t\,C\theta$.

    One step of size $h$:

    * Lie–Trotter: $B(h)\circ A(h)$ (`fa.lie_step`), first order;
    * Strang: $A(h/2)\circ B(h)\circ A(h/2)$ (`fa.strang_step`), second order when its
      sub-flows are at least second-order accurate.

    In the plane (the toy problem of notebook 1, target class 0) with a deliberately large
    step, each split step is a zig-zag: an attention move, then a label move.
    """),
    code("""
    angles = np.deg2rad([90, 210, 330])
    theta2 = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    c2 = fa.one_hot(np.array([0]), 3)
    z0 = np.array([[2.5, -2.0]])

    def step_A(Z, t, method="rk4"):
        return fa.rk_step(lambda Y: fa.linear_flow_A(Y, theta2), Z, t, method)

    def step_B(Z, t):
        return fa.linear_B_exact(Z, theta2, c2, t)

    h, L = 0.5, 6
    exact = np.concatenate(fa.integrate(lambda Z: fa.linear_flow(Z, theta2, c2), z0, h * L, 600,
                                        method="rk4", return_path=True))
    lie_pts, strang_pts = [z0], [z0]
    for _ in range(L):
        a = step_A(lie_pts[-1], h)
        lie_pts += [a, step_B(a, h)]                  # A(h), then B(h)
        a1 = step_A(strang_pts[-1], h / 2)
        b = step_B(a1, h)
        strang_pts += [a1, b, step_A(b, h / 2)]       # A(h/2), B(h), A(h/2)
    assert np.allclose(lie_pts[-1], fa.lie_step(step_A, step_B, lie_pts[-3], h))
    assert np.allclose(strang_pts[-1], fa.strang_step(step_A, step_B, strang_pts[-4], h))
    lie_pts, strang_pts = np.concatenate(lie_pts), np.concatenate(strang_pts)
    """),
    code("""
    fig, ax = plt.subplots(figsize=(6, 6), layout="constrained")
    for k, p in enumerate(theta2):
        ax.annotate("", xy=p, xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=f"C{k}", lw=2))
        ax.text(*(1.2 * p), rf"$\\theta_{k}$", color=f"C{k}", fontsize=12, ha="center")
    ax.plot(exact[:, 0], exact[:, 1], "k", lw=2.5, alpha=0.4, label="full flow (6)")
    ax.plot(lie_pts[:, 0], lie_pts[:, 1], "o-", color="C3", ms=4, lw=1, label="Lie: A(h), B(h)")
    ax.plot(strang_pts[:, 0], strang_pts[:, 1], "s--", color="C2", ms=3, lw=1, label="Strang: A(h/2), B(h), A(h/2)")
    for pts, every, color in [(lie_pts, 2, "C3"), (strang_pts, 3, "C2")]:
        ax.plot(pts[::every, 0], pts[::every, 1], "o", ms=8, mfc="none", color=color)
    ax.plot(*exact[-1], "k*", ms=14)
    ax.set(xlim=(-2.9, 3.1), ylim=(-2.6, 2.6), aspect="equal",
           title=f"split steps, h = {h}, {L} steps\\n(big circles: after each full step; star: exact)")
    ax.legend(loc="lower left");
    """),
    md(r"""
    ## The block of eq. (8)

    With one **Euler** step for A, the Lie step is

    $$Z_{l+\frac12} = Z_l - h\,\mathrm{CA}(Z_l, \theta), \qquad Z_{l+1} = Z_{l+\frac12} + h\,C\theta . \tag{8}$$

    `make_block(BlockConfig(...))` builds it (and its Strang / Heun / RK4 variants) with a
    hand-derived backward pass; `targets="labels"` says the block uses the true labels $C$
    (the theory). Here on a small problem: $n = 4$ rows in $\mathbb{R}^3$, $m = 5$ classes.
    """),
    code("""
    rng = np.random.default_rng(0)
    n, d, m = 4, 3, 5
    Z0 = rng.normal(size=(n, d))
    theta = rng.normal(size=(m, d))
    C = fa.one_hot(rng.integers(0, m, size=n), m)
    params = {"theta": theta}

    cfg = BlockConfig(scheme="lie", integrator="euler", b_flow="exact", targets="labels", h=0.1)
    block = make_block(cfg)
    Z1, _ = block.forward(Z0, params, C)
    by_hand = (Z0 - 0.1 * fa.cross_attention(Z0, theta)) + 0.1 * C @ theta       # eq. (8), line by line
    via_splitting = fa.lie_step(lambda Z, t: fa.rk_step(lambda Y: fa.linear_flow_A(Y, theta), Z, t, "euler"),
                                lambda Z, t: fa.linear_B_exact(Z, theta, C, t), Z0, 0.1)
    print(cfg.describe())
    assert np.allclose(Z1, by_hand) and np.allclose(Z1, via_splitting)
    """),
    md(r"""
    ## Measuring the order of accuracy

    Run $L$ blocks with $h = T/L$ from $Z_0$ and compare with a fine reference of the
    **full** flow on $[0, T]$ (RK4 with 4000 steps, error far below the splitting errors).
    If $\mathrm{err}(h) \approx K h^p$, then $\log\mathrm{err}$ against $\log h$ is a line of
    slope $p$: the order. We measure it for Lie and Strang, with RK4 for A (A solved almost
    exactly) and with a single Euler step for A (the transformer block).
    """),
    code("""
    T = 1.0
    Z_ref = fa.integrate(lambda Z: fa.linear_flow(Z, theta, C), Z0, T, 4000, "rk4")
    Ls = np.array([8, 16, 32, 64])
    hs = T / Ls

    def run_blocks(scheme, integrator, L):
        block = make_block(BlockConfig(scheme=scheme, integrator=integrator, b_flow="exact",
                                       targets="labels", h=T / L))
        Z = Z0
        for _ in range(L):
            Z, _ = block.forward(Z, params, C)
        return Z

    def order(errors):
        return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])

    errors, slopes = {}, {}
    for scheme in ("lie", "strang"):
        for integrator in ("rk4", "euler", "heun"):
            errors[scheme, integrator] = np.array([np.linalg.norm(run_blocks(scheme, integrator, L) - Z_ref)
                                                   for L in Ls])
            slopes[scheme, integrator] = order(errors[scheme, integrator])
    for key in [("lie", "rk4"), ("strang", "rk4"), ("lie", "euler"), ("strang", "euler")]:
        print(f"{key[0]:>6} with {key[1]:<5} for A: measured order {slopes[key]:.3f}")
    """),
    code("""
    fig, ax = plt.subplots(figsize=(6.5, 4.8), layout="constrained")
    styles = {("lie", "rk4"): "o-C0", ("strang", "rk4"): "s-C1", ("lie", "euler"): "o--C2",
              ("strang", "euler"): "s--C3"}
    for key, style in styles.items():
        ax.loglog(hs, errors[key], style[:-2], color=style[-2:], ms=6,
                  label=f"{key[0].capitalize()}, A by {key[1]}: slope {slopes[key]:.2f}")
    for p, anchor, ls in [(1, errors["lie", "rk4"][0], ":"), (2, errors["strang", "rk4"][0], "-.")]:
        ax.loglog(hs, 1.6 * anchor * (hs / hs[0]) ** p, ls, color="k", lw=1, label=f"reference slope {p}")
    ax.set(xlabel="step h = T / L", ylabel=r"$\\|Z_L - Z_{\\mathrm{ref}}(T)\\|_F$",
           title="error of L split blocks against the full flow")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8);

    assert abs(slopes["lie", "rk4"] - 1) < 0.2
    assert abs(slopes["strang", "rk4"] - 2) < 0.2
    assert abs(slopes["lie", "euler"] - 1) < 0.2
    assert abs(slopes["strang", "euler"] - 1) < 0.2
    """),
    md(r"""
    ## The effect of the A-integrator

    Strang's symmetry cancels the leading splitting error, but only if each half-step of A
    is itself accurate to second order. One Euler step has a local error $O(h^2)$ per
    half-step, which accumulates to $O(h)$ over $T/h$ blocks: Strang with Euler is first
    order (though with a smaller constant than Lie). Any A-integrator of order $\ge 2$
    (Heun, RK4) restores order 2. Accuracy is not free: the right panel counts the
    attention evaluations (RK stages) spent.
    """),
    code("""
    stages = {"euler": 1, "heun": 2, "rk4": 4}
    calls = {(s, i): Ls * stages[i] * (1 if s == "lie" else 2) for (s, i) in errors}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for k, integrator in enumerate(("euler", "heun", "rk4")):
        for scheme, ls in (("lie", "--"), ("strang", "-")):
            key = (scheme, integrator)
            label = f"{scheme.capitalize()}, A by {integrator} (slope {slopes[key]:.2f})"
            axes[0].loglog(hs, errors[key], ls, marker="os"[scheme == "strang"], color=f"C{k}", label=label)
            axes[1].loglog(calls[key], errors[key], ls, marker="os"[scheme == "strang"], color=f"C{k}")
    axes[0].set(xlabel="step h", ylabel="error", title="order: set by the scheme AND the A-integrator")
    axes[1].set(xlabel="attention evaluations over [0, T]", ylabel="error", title="error against cost")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7);
    assert abs(slopes["strang", "heun"] - 2) < 0.2
    assert np.all(errors["strang", "rk4"] < 0.1 * errors["lie", "rk4"])
    """),
    md(r"""
    ## The same for self-attention (eq. 10)

    The quadratic model splits the same way: A is $\dot Z = -(\mathrm{SA} + \mathrm{SA}^\ast)(Z)$,
    B is $\dot Z = (C + C^\top) Z\theta$, linear in $Z$ and solved exactly in the eigenbases of
    $C + C^\top$ and $\theta$ (`fa.quadratic_B_exact`). The block of eq. (10) is
    `BlockConfig(model="quadratic")`, and the measured orders are the same.
    """),
    code("""
    B, n_tok = 2, 4
    Zq0 = rng.normal(size=(B, n_tok, d))                          # 2 sequences of 4 tokens in R^3
    phi = np.tril(0.7 * rng.normal(size=(d, d)))
    theta_q = fa.theta_from_phi(phi)
    Cq = np.stack([fa.one_hot(rng.integers(0, n_tok, size=n_tok), n_tok) for _ in range(B)])
    Tq, Lq = 0.5, np.array([16, 32, 64, 128])
    Zq_ref = fa.integrate(lambda Z: fa.quadratic_flow(Z, theta_q, Cq), Zq0, Tq, 4000, "rk4")

    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for k, key in enumerate([("lie", "rk4"), ("strang", "rk4"), ("lie", "euler"), ("strang", "euler")]):
        block = make_block(BlockConfig(model="quadratic", scheme=key[0], integrator=key[1], targets="labels"))
        errs = []
        for L in Lq:
            block = make_block(block.config.replace(h=Tq / L))
            Z = Zq0
            for _ in range(L):
                Z, _ = block.forward(Z, {"phi": phi}, Cq)
            errs.append(np.linalg.norm(Z - Zq_ref))
        p = float(np.polyfit(np.log(Tq / Lq), np.log(errs), 1)[0])
        ax.loglog(Tq / Lq, errs, "o-" if key[1] == "rk4" else "s--", color=f"C{k}",
                  label=f"{key[0].capitalize()}, A by {key[1]}: slope {p:.2f}")
        assert abs(p - (2 if key == ("strang", "rk4") else 1)) < 0.2
    ax.set(xlabel="step h", ylabel="error", title="self-attention blocks (eq. 10) against the full flow")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8);
    """),
    md(r"""
    ## Why one Euler step of the split flow IS a transformer block, and why it is first order

    Read eq. (8) again with a transformer in mind:

    1. $Z_{l+\frac12} = Z_l - h\,\mathrm{CA}(Z_l,\theta)$ is one **cross-attention** call
       (queries $Z_l$, keys = values = $\theta$, a scaled output) added to its input: an
       attention layer with a **residual connection**. The residual connection is not a
       design choice here: it *is* the explicit Euler method, $Z + h\,f(Z)$.
    2. $Z_{l+1} = Z_{l+\frac12} + h\,C\theta$ is a **linear map** of the keys/values by the
       targets, again added to its input: the second residual sub-layer. For the linear model
       the B sub-flow is constant in $Z$, so its exact solution and its Euler step coincide.

    Stacking $L$ blocks with weights tied across blocks (one $\theta$) integrates the gradient
    flow (6) up to time $T = Lh$: depth is time.

    **Why first order.** Two errors enter each block, each $O(h^2)$ locally:

    * the *splitting* error: A and B do not commute, and $e^{hB}e^{hA} = e^{h(A+B) + \frac{h^2}{2}[B,A] + \dots}$
      (Baker–Campbell–Hausdorff), so Lie is off by $O(h^2)$ per step; Strang's symmetric
      arrangement cancels this term, leaving $O(h^3)$;
    * the *integration* error of A: one Euler step is exact only to $O(h^2)$ per step, in
      Lie and Strang alike.

    Over $L = T/h$ blocks, local errors $O(h^2)$ add up to a global error $O(h)$. So the plain
    transformer block (Lie + Euler) is a first-order method, and merely rearranging it into
    Strang form does not help: the Euler step for attention caps the order at 1. Only a
    better attention integrator (Heun, RK4: several attention calls per block) together with
    the symmetric splitting reaches order 2, as measured above.
    """),
    md(r"""
    ## What to take away

    * Splitting the gradient flow into attention (A) and label forcing (B) gives blocks; with
      one Euler step for A the Lie block is eq. (8): attention + residual, then a linear map
      + residual.
    * Measured against the full flow: Lie is first order, Strang second order **when A is
      integrated to at least second order**; with one Euler step for A both are first order.
    * A transformer block is a first-order time step of a gradient flow; the residual
      connection is the Euler method.
    """),
]

# =============================================================================== 04

NB4 = [
    md(r"""
    # 4. Fashion-MNIST: feature discovery with the true labels, and a label-free classifier

    The paper's experiment on the **real** Fashion-MNIST, at a notebook budget (a 20 000-image
    training subset, 3 epochs, one seed). Three parts:
    (1) a multinomial regression ($L = 0$) trained with SGD gives $\theta$;
    (2) with $\theta$ fixed, Lie blocks (eq. 8) driven by the **true test labels** move noisy test
    features downhill on the cross-entropy ("feature discovery", the paper's theory);
    (3) a network whose blocks never see a label (a *learned oracle* $\hat C(Z)$ in place of $C$)
    is trained end to end with noise augmentation and compared with $L = 0$.
    The full version (all 60 000 images, more epochs, several seeds, more variants) is
    `python -m flowattn_np reproduce` (about 4 minutes on a laptop CPU).
    """),
    code("""
    import math
    import time

    import numpy as np
    import matplotlib.pyplot as plt

    import flowattn_np as fa
    from flowattn_np import BlockConfig, Network, NetworkConfig, make_block, plotting
    from flowattn_np.data import CLASS_NAMES, add_noise, load_fashion_mnist
    from flowattn_np.experiment import ReproduceConfig, lam_max, part2_feature_discovery
    from flowattn_np.optim import SGD, Adam, Cosine
    from flowattn_np.train import evaluate, fit

    t_start = time.perf_counter()
    ds = load_fashion_mnist(progress=False)   # finds the data on disk, or downloads it once
    print(ds)
    N_TRAIN, EPOCHS, BATCH = 20_000, 3, 256
    X, y = ds.X_train[:N_TRAIN], ds.y_train[:N_TRAIN]
    NOISE = (0.0, 0.5, 1.0)
    tests = {f"{s:g}": add_noise(ds.X_test, s, seed=10 + i) for i, s in enumerate(NOISE)}   # seeded noisy test sets
    y_test = ds.y_test
    """),
    code("""
    fig, axes = plt.subplots(len(NOISE), 10, figsize=(11, 3.6), layout="constrained")
    first = [int(np.flatnonzero(y_test == k)[0]) for k in range(10)]
    for r, (key, Xs) in enumerate(tests.items()):
        for k, i in enumerate(first):
            axes[r, k].imshow(Xs[i].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            axes[r, k].set_xticks([]), axes[r, k].set_yticks([])
            if r == 0:
                axes[r, k].set_title(CLASS_NAMES[k], fontsize=8)
        axes[r, 0].set_ylabel(f"sigma = {key}")
    fig.suptitle("test images with additive Gaussian noise (not clipped)");
    """),
    md(r"""
    ## Part 1. Multinomial regression ($L = 0$)

    Features $Z = X$ (the pixels, $d = 784$), logits $Z\theta^\top$, $\theta \in \mathbb{R}^{10\times 784}$,
    trained with the package's SGD (momentum 0.9, cosine decay) on the batch-mean
    cross-entropy. The labels are used only by the loss.
    """),
    code("""
    net0 = Network(NetworkConfig(n_inputs=784, n_classes=10, layers=0), seed=0)
    print(net0.describe())
    opt = SGD(net0.params, lr=0.05, momentum=0.9, schedule=Cosine(EPOCHS * math.ceil(N_TRAIN / BATCH)))
    hist0 = fit(net0, X, y, epochs=EPOCHS, batch_size=BATCH, optimizer=opt, seed=0, progress=False)
    part1 = {k: evaluate(net0, Xs, y_test) for k, Xs in tests.items()}
    for k, r in part1.items():
        print(f"test sigma = {k}: accuracy {100 * r['accuracy']:.1f} %, cross-entropy {r['loss']:.3f}")
    assert part1["0"]["accuracy"] > 0.75
    """),
    code("""
    theta = net0.params["theta"]                      # 10 x 784, float32
    fig, axes = plt.subplots(1, 10, figsize=(11, 1.6), layout="constrained")
    for k, ax in enumerate(axes):
        lim = np.abs(theta[k]).max()
        ax.imshow(theta[k].reshape(28, 28), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(CLASS_NAMES[k], fontsize=8), ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(r"rows of $\\theta$: the keys and values of the cross-attention");
    """),
    md(r"""
    ## Part 2. Feature discovery with the TRUE labels (an oracle computation)

    Keep $\theta$ fixed and apply the Lie block of eq. (8),
    $Z_{l+1} = Z_l + h\,(C - \sigma(Z_l\theta^\top))\,\theta$, to the noisy **test** features, with
    $C$ the one-hot **test labels**. The step is $h = 1/\lambda_{\max}(\theta\theta^\top)$
    (a guaranteed descent step, since $h < 4/\lambda_{\max}$), so the cross-entropy must fall
    at every block (eq. 7).

    > **This is not a classifier's accuracy.** The test labels enter the features before the
    > prediction is read off; the accuracy that results is an *oracle upper bound* showing
    > what the theory does (features move to where the fixed model classifies them
    > correctly), never a result to compare with a classifier.
    """),
    code("""
    lam = lam_max(theta)
    h = 1.0 / lam
    print(f"lam_max(theta theta^T) = {lam:.2f},  h = 1/lam_max = {h:.4f}")

    one_block = make_block(BlockConfig(model="linear", scheme="lie", targets="labels", h=h))
    print(one_block.config.describe())
    Z0, C0 = tests["0.5"][:5], fa.one_hot(y_test[:5], 10, "float32")
    Z1, _ = one_block.forward(Z0, {"theta": theta}, C0)
    assert np.allclose(Z1, Z0 + h * (C0 - fa.softmax(Z0 @ theta.T)) @ theta, atol=1e-5)   # eq. (8)
    """),
    md(r"""
    `part2_feature_discovery` runs $L = 0, \dots, 8$ Lie and Strang blocks on every noisy test
    set and records the accuracy and cross-entropy after each block.
    """),
    code("""
    part2 = part2_feature_discovery(theta, tests, y_test, ReproduceConfig(max_layers=8, h_units=1.0),
                                    progress=False)
    print(part2["title"])
    for k, r in part2["schemes"]["lie"].items():
        print(f"Lie, sigma = {k}: accuracy % by L:", " ".join(f"{100 * a:.1f}" for a in r["accuracy"]))
        assert all(b < a for a, b in zip(r["loss"], r["loss"][1:]))     # eq. (7): down at every block
    assert part2["schemes"]["lie"]["0"]["accuracy"][-1] > part2["schemes"]["lie"]["0"]["accuracy"][0]
    plotting.accuracy_vs_layers(part2);
    """),
    md(r"""
    **Figure 1** of the paper: one noisy test image (the first shirt that the $L = 0$ model
    misclassifies at $\sigma = 0.5$) moving through the 8 true-label blocks. Top row: the
    iterates $Z^{(l)}$ and the class the fixed model reads off them;
    bottom row: what the blocks have added, $Z^{(l)} - Z^{(0)}$, a mix of the prototypes
    $\theta_k$ pulled towards the true class.
    """),
    code("""
    def iterates(net_or_block, z0, C=None, L=8):
        if isinstance(net_or_block, Network):
            return net_or_block.features(z0)
        Zs = [z0]
        for _ in range(L):
            Zs.append(net_or_block.forward(Zs[-1], {"theta": theta}, C)[0])
        return Zs

    wrong = net0.predict(tests["0.5"]) != y_test           # what the L = 0 model gets wrong at sigma = 0.5
    idx = int(np.flatnonzero((y_test == 6) & wrong)[0])    # the first such shirt
    x = ds.X_test[idx:idx + 1]
    z0 = tests["0.5"][idx:idx + 1]
    Zs = iterates(one_block, z0, fa.one_hot(y_test[idx:idx + 1], 10, "float32"))
    oracle_panel = {"title": f"true labels C (oracle), Lie, h = {h:.3g}",
                    "iterates": [z[0] for z in Zs],
                    "predictions": [int((z @ theta.T).argmax()) for z in Zs]}
    plotting.figure1(x[0], [oracle_panel], label=int(y_test[idx]), class_names=CLASS_NAMES, sigma=0.5);
    """),
    md(r"""
    ## Part 3. A label-free classifier: the learned oracle

    At test time a classifier has no labels. Part 3 networks **never see labels inside the
    blocks**: each tied block uses a learned oracle $\hat C(Z) = \mathrm{softmax}(ZW^\top + b)$ in
    place of $C$,

    $$Z_{l+1} = Z_l + h\,\big(\hat C(Z_l) - \sigma(Z_l\theta^\top)\big)\,\theta ,$$

    with $\theta$ shared by all blocks and the head, and $W$, $b$, $h$ learned end to end (by the
    package's hand-derived backward pass). The labels enter only through the training loss,
    exactly as for $L = 0$. Both are trained with Adam and noise augmentation
    ($\sigma = 0.5$ on every training batch) and tested on the clean and noisy test sets.
    The learned step $h$ is reported with its sign: nothing forces it to stay positive.
    """),
    code("""
    def train(layers, seed=0):
        block = BlockConfig(model="linear", targets="learned", h=0.1, learn_h=True)
        net = Network(NetworkConfig(n_inputs=784, n_classes=10, layers=layers, block=block), seed=seed)
        opt = Adam(net.params, lr=3e-3, schedule=Cosine(EPOCHS * math.ceil(N_TRAIN / BATCH)))
        fit(net, X, y, epochs=EPOCHS, batch_size=BATCH, optimizer=opt, seed=seed, noise=0.5, progress=False)
        return net

    nets = {0: train(0), 2: train(2)}
    print(nets[2].describe())
    part3 = {L: {k: evaluate(net, Xs, y_test) for k, Xs in tests.items()} for L, net in nets.items()}
    h_learned = nets[2].step_sizes()["h"]
    print(f"learned step h = {h_learned:+.3f} ({'positive' if h_learned > 0 else 'negative'})")
    print("test accuracy %        " + "  ".join(f"sigma = {k:>3}" for k in tests))
    for L, res in part3.items():
        name = "L = 0 (regression)" if L == 0 else f"L = {L}, learned oracle"
        print(f"{name:<22} " + "  ".join(f"{100 * r['accuracy']:>9.1f}" for r in res.values()))
    assert part3[2]["0"]["accuracy"] > 0.75           # a working classifier that never saw a label in its blocks
    """),
    code("""
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    width = 0.38
    for j, (L, res) in enumerate(part3.items()):
        acc = [100 * r["accuracy"] for r in res.values()]
        ax.bar(np.arange(len(NOISE)) + (j - 0.5) * width, acc, width,
               label="L = 0" if L == 0 else f"L = {L}, learned oracle (label-free)")
    lie = part2["schemes"]["lie"]
    ax.plot(np.arange(len(NOISE)), [100 * lie[k]["accuracy"][-1] for k in tests], "k*", ms=12,
            label="part 2, true labels, L = 8 (oracle bound)")
    ax.set(xticks=range(len(NOISE)), xticklabels=[f"test sigma = {k}" for k in tests], ylabel="accuracy (%)",
           ylim=(40, 100), title="trained with noise augmentation (sigma = 0.5), one seed")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2);
    """),
    code("""
    net2 = nets[2]
    Zs2 = net2.features(z0)                             # no labels passed: the blocks do not need them
    th2 = net2.params["theta"]
    learned_panel = {"title": f"learned oracle C_hat (label-free), L = 2, learned h = {h_learned:+.3g}",
                     "iterates": [z[0] for z in Zs2],
                     "predictions": [int((z @ th2.T).argmax()) for z in Zs2]}
    plotting.figure1(x[0], [oracle_panel, learned_panel], label=int(y_test[idx]), class_names=CLASS_NAMES, sigma=0.5)
    print(f"notebook ran in {time.perf_counter() - t_start:.0f} s")
    """),
    md(r"""
    ## What to take away

    * **Where the targets come from decides what a number means.** Part 2 puts the *test*
      labels inside the blocks: the features move until the fixed regression classifies them
      correctly, and the cross-entropy falls at every block (eq. 7). That is the theory at
      work and an oracle upper bound, never a classifier's test accuracy.
    * Part 3 networks never see labels inside the blocks; a learned oracle $\hat C(Z)$ stands
      in for $C$. Their accuracy is a real classifier's accuracy, to compare with $L = 0$,
      over several seeds before drawing conclusions (one seed here).
    * The full experiment, with all training images, more variants (attention-only blocks,
      key/value memory), clean and noise-augmented training and several seeds:
      `python -m flowattn_np reproduce`.
    """),
]

# =============================================================================== 05

NB5 = [
    md(r"""
    # 5. Going to the GPU

    Every array operation in `flowattn_np` goes through one switch: the **backend**, NumPy
    by default or CuPy on an NVIDIA GPU. The same code, the same seeds and the same
    hand-written backward passes run on both. This notebook shows the three ways to choose
    the backend, how arrays move between host and device, the error you get when CuPy or a
    GPU is missing, and times one training step on NumPy and (where a GPU is present) on
    CuPy. On a machine without a GPU it says so and runs only the NumPy half.
    """),
    code("""
    import os
    import subprocess
    import sys
    import time

    import numpy as np
    import matplotlib.pyplot as plt

    import flowattn_np as fa
    from flowattn_np import BlockConfig, Network, NetworkConfig
    from flowattn_np.backend import synchronize
    from flowattn_np.optim import Adam

    print("active backend:", fa.get_backend())
    """),
    md(r"""
    ## Three ways to choose the backend

    In order of precedence:

    1. `with fa.use_backend("cupy"): ...`: for one block of code; the previous backend comes
       back on exit, even after an exception;
    2. `fa.set_backend("cupy")`: for the rest of the session (returns the previous name);
    3. the environment variable `FLOWATTN_BACKEND=cupy`, read once, on first use.

    Asking for CuPy where it cannot work raises `fa.BackendError` at once, with the install
    hint, and leaves the active backend unchanged.
    """),
    code("""
    previous = fa.set_backend("numpy")
    print("set_backend('numpy'): previous backend was", previous)

    try:
        with fa.use_backend("cupy"):
            pass
        HAVE_GPU = True
        print("CuPy and a CUDA GPU are available.")
    except fa.BackendError as err:
        HAVE_GPU = False
        print("BackendError:", err)
    print("active backend afterwards:", fa.get_backend())
    assert fa.get_backend() == "numpy"
    """),
    md(r"""
    The environment variable is read by a fresh process (here a child Python), so it is the
    way to switch a script or `python -m flowattn_np reproduce` without touching its code.
    """),
    code("""
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(fa.__file__)))
    child_path = os.pathsep.join([pkg_root] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    for value in ("numpy", "cupy"):
        env = dict(os.environ, FLOWATTN_BACKEND=value, PYTHONPATH=child_path)
        run = subprocess.run([sys.executable, "-c", "import flowattn_np as fa; print(fa.get_backend())"],
                             env=env, capture_output=True, text=True)
        answer = run.stdout.strip() or run.stderr.strip().splitlines()[-1]
        print(f"FLOWATTN_BACKEND={value}: {answer}")
        if value == "numpy":
            assert answer == "numpy"
    """),
    md(r"""
    ## Moving arrays

    `fa.asarray(a)` moves an array to the active backend (a no-op if it is already there);
    `fa.to_numpy(a)` brings any array back to the host, e.g. for plotting. Every function
    takes its array module from its inputs, and mixing a host array with a device array
    raises a `BackendError` naming both, instead of failing somewhere deep inside.
    """),
    code("""
    rng = np.random.default_rng(0)
    host = rng.normal(size=(3, 4)).astype(np.float32)
    on_backend = fa.asarray(host)                 # NumPy here; a cupy.ndarray under use_backend("cupy")
    back = fa.to_numpy(on_backend)
    print(type(on_backend).__module__, type(back).__module__, back.dtype)
    assert np.array_equal(back, host)
    """),
    md(r"""
    ## Timing one training step

    The step we time: forward, hand-written backward and an Adam update
    (`net.loss_and_grads` + `opt.step`) of a label-free network with $L = 4$ tied
    learned-oracle blocks (eq. 8 with $\hat C(Z)$), on a batch of 256 random rows of
    Fashion-MNIST size (784 features, 10 classes), in float32.
    """),
    code("""
    BATCH, FEATURES, CLASSES = 256, 784, 10
    X_host = rng.random((BATCH, FEATURES), dtype=np.float32)
    y_host = rng.integers(0, CLASSES, size=BATCH)

    def make_step():
        \"\"\"A fresh network, optimiser and batch on the ACTIVE backend.\"\"\"
        block = BlockConfig(model="linear", targets="learned", h=0.1, learn_h=True)
        net = Network(NetworkConfig(n_inputs=FEATURES, n_classes=CLASSES, layers=4, block=block,
                                    tied=True, dtype="float32"), seed=0)
        return net, Adam(net.params, lr=1e-3), fa.asarray(X_host), fa.asarray(y_host)

    def train_step(net, opt, X, y):
        loss, grads, _ = net.loss_and_grads(X, y)
        opt.step(grads)
        return loss

    net, opt, X, y = make_step()
    print(net.describe())
    first_loss = float(train_step(net, opt, X, y))
    for _ in range(3):                            # warm-up
        train_step(net, opt, X, y)
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        train_step(net, opt, X, y)
        times.append(time.perf_counter() - t0)
    numpy_ms = 1e3 * np.median(times)
    print(f"NumPy: {numpy_ms:.2f} ms per step (median of 30), {BATCH / np.median(times):.0f} rows/s; "
          f"dtype {net.params['theta'].dtype}")
    assert net.params["theta"].dtype == np.float32 and np.isfinite(first_loss)
    """),
    md(r"""
    ## On the GPU: synchronise before you read the clock

    GPU calls are **asynchronous**: a CuPy operation only *queues* a kernel on the device and
    returns to Python at once. Reading `time.perf_counter()` right after the step measures
    how long it took to *launch* the work, not to do it. So either synchronise the device
    before each clock reading (`flowattn_np.backend.synchronize()`, which waits for the
    current CUDA stream), or use `cupyx.profiler.benchmark`, which records CUDA events around
    every repetition and reports the GPU time. Both appear below; the first GPU calls also
    compile and cache kernels, hence the warm-up.
    """),
    code("""
    if not HAVE_GPU:
        print("No usable CuPy/GPU on this machine: skipping the CuPy half (only the NumPy timing above ran).")
    else:
        from cupyx.profiler import benchmark

        with fa.use_backend("cupy"):
            net_g, opt_g, X_g, y_g = make_step()
            gpu_first_loss = float(fa.to_numpy(train_step(net_g, opt_g, X_g, y_g)))   # a copy to the host: a sync
            print(f"same seed, same first loss: NumPy {first_loss:.6f}, CuPy {gpu_first_loss:.6f}")
            assert abs(gpu_first_loss - first_loss) < 1e-4 * max(1.0, abs(first_loss))

            result = benchmark(train_step, (net_g, opt_g, X_g, y_g), n_repeat=50, n_warmup=5)
            print(result)
            cupy_ms = 1e3 * float(np.median(result.gpu_times[0]))

            synchronize()                          # wait for the queue to empty ...
            t0 = time.perf_counter()
            for _ in range(50):
                train_step(net_g, opt_g, X_g, y_g)
            synchronize()                          # ... and for the last step to finish
            synced_ms = 1e3 * (time.perf_counter() - t0) / 50
        print(f"CuPy: {cupy_ms:.2f} ms per step (benchmark, GPU time), {synced_ms:.2f} ms (synchronised wall clock)")
        print(f"speed-up over NumPy: {numpy_ms / cupy_ms:.1f}x")
    """),
    code("""
    labels, values = ["NumPy (CPU)"], [numpy_ms]
    if HAVE_GPU:
        labels += ["CuPy (GPU)"]
        values += [cupy_ms]
    fig, ax = plt.subplots(figsize=(5, 2.2 + 0.4 * len(values)), layout="constrained")
    ax.barh(labels, values, color=["C0", "C2"][:len(values)])
    ax.set(xlabel="ms per training step (lower is better)",
           title="L = 4 learned-oracle blocks, batch 256 x 784, float32")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f} ms", va="center");
    """),
    md(r"""
    ## What to take away

    * One switch: `fa.set_backend`, `with fa.use_backend(...)` or `FLOWATTN_BACKEND`; the same
      code, seeds and backward passes run on NumPy and CuPy.
    * `fa.asarray` / `fa.to_numpy` move arrays; a missing CuPy or GPU raises
      `fa.BackendError` with the fix, and the active backend stays as it was.
    * GPU work is asynchronous: time it with `cupyx.profiler.benchmark` or synchronise before
      reading the clock, and warm up first.
    """),
]


NOTEBOOKS = {
    "01_cross_attention_from_multinomial_regression.ipynb": NB1,
    "02_self_attention_from_the_quadratic_model.ipynb": NB2,
    "03_splitting_lie_vs_strang.ipynb": NB3,
    "04_fashion_mnist.ipynb": NB4,
    "05_going_to_the_gpu.ipynb": NB5,
}


def main():
    for name, cells in NOTEBOOKS.items():
        nb = notebook(cells)
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
