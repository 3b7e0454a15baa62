"""The paper's equations: the models, their gradients, attention, the gradient flows,
their splitting, the integrators, the exact label sub-flows, the sphere constraint and the
MLP oracle. Functions only (a forward beside its VJP), no parameters held; everything
else in the package is built on these."""
