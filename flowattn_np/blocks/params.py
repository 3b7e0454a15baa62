"""The parameters of one block: names and shapes, checks and initial values.

A block's parameters are those of its model (theta, phi or the memory's K and V), the
step h when learned, and those its label source declares (module ``sources``).
"""

from __future__ import annotations

from flowattn_np.backend import array_module
from flowattn_np.equations.sphere import check_nonzero_rows
from flowattn_np.validate import check_array, check_same_dtype, check_shape


def model_param_shapes(config, d, m, with_theta=True):
    """The model's own parameters: theta (m, d), phi (d, d) or K, V (slots, d); theta and
    phi are left out with ``with_theta=False`` (a tied network shares the head's)."""
    if config.model == "memory":
        return {"K": (config.slots, d), "V": (config.slots, d)}
    if not with_theta:
        return {}
    return {"theta": (m, d)} if config.model == "linear" else {"phi": (d, d)}


def block_param_shapes(config, d, m, with_theta=True):
    """Names and shapes of one block's parameters, in the order they are drawn.

    d: feature width, m: classes (linear model). theta (m x d) or phi (d x d) is left
    out with ``with_theta=False`` (a tied network shares the head's).
    """
    shapes = model_param_shapes(config, d, m, with_theta)
    for name, shape in config.source.param_shapes(config, d, m).items():
        if name in shapes:
            raise ValueError(f"targets: the source {config.targets!r} declares {name!r}, "
                             f"a parameter of the {config.model} model")
        shapes[name] = shape
    if config.learn_h:
        shapes["h"] = ()
    return shapes


def check_block_params(config, params, Z, m=None):
    """Every parameter ``block_param_shapes`` lists: present, finite, of Z's dtype and the
    right shape (d from Z; m from theta when not given). Returns theta or phi (or None)."""
    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict of arrays, got {type(params).__name__}")
    d = Z.shape[-1]
    key = "phi" if config.model == "quadratic" else "theta"
    if m is None:
        theta = params.get(key)
        m = theta.shape[0] if config.model == "linear" and getattr(theta, "ndim", 0) >= 1 else 0
    for name, shape in block_param_shapes(config, d, m).items():
        if name not in params:
            raise ValueError(f"params: missing {name!r} (this block needs "
                             f"{', '.join(block_param_shapes(config, d, m))})")
        label = f"params['{name}']"
        check_array(label, params[name], ndim=len(shape))
        check_shape(label, params[name], shape, f"from d = {d} features" + (
            f" and m = {m} classes" if config.model == "linear" else ""))
        check_same_dtype(Z=Z, **{label: params[name]})
    if config.normalised:  # the retraction needs a direction in every row
        check_nonzero_rows("Z", Z, centred=config.norm == "layer", what="a normalised block")
    return params.get(key)


def init_block_param(config, name, shape, d, rng, dtype, scale=None):
    """Initial value of one block parameter on the active backend (host RNG, then moved).

    theta ~ N(0, scale^2) with scale = 1/sqrt(d); phi = I / d^(1/4) so that
    theta = I / sqrt(d); K, V ~ N(0, 1/d); h = config.h; the label source's own
    parameters by its ``init_param``. A name the block does not have is a ValueError.
    """
    xp = array_module()
    if name == "h" and config.learn_h:
        return xp.asarray(config.h, dtype=dtype)
    if name not in model_param_shapes(config, d, 1):
        return config.source.init_param(config, name, shape, d, rng, dtype)
    if name == "phi":
        return xp.eye(d, dtype=dtype) / d ** 0.25
    std = scale if name == "theta" and scale is not None else 1.0 / d ** 0.5
    return xp.asarray(rng.normal(0, std, size=shape), dtype=dtype)


def init_block_params(config, d, m, rng, dtype, with_theta=True, scale=None):
    r"""Initial parameters of one block on the active backend (host RNG, then moved).

    $\theta\sim\mathcal N(0,\text{scale}^2)$ with scale $=1/\sqrt d$ (linear);
    $\phi=I/d^{1/4}$ so that $\theta=I/\sqrt d$ (quadratic); $K,V\sim\mathcal N(0,1/d)$;
    the label source's parameters as it says (e.g. $W\sim\mathcal N(0,1/d)$, $b=0$).

    Parameters
    ----------
    config : BlockConfig
        The block.
    d : int
        Feature dimension.
    m : int
        Number of classes.
    rng : numpy.random.Generator
        Host random generator.
    dtype : str or dtype
        Floating dtype of the parameters.
    with_theta : bool
        Include $\theta$ (False when the network ties it to the head).
    scale : float, optional
        Standard deviation of $\theta$; $1/\sqrt d$ by default.

    Returns
    -------
    dict
        The params, keyed as the block expects.
    """
    return {name: init_block_param(config, name, shape, d, rng, dtype, scale)
            for name, shape in block_param_shapes(config, d, m, with_theta).items()}
