"""flowattn_np: transformers derived as gradient flows of multinomial regression.

NumPy (optionally CuPy) implementation of Actor, Gruber & Cyr, *Deriving Transformer
Architectures as Implicit Multinomial Regression* (arXiv 2509.04653). Every forward
and backward pass is written by hand and checked against finite differences.
"""

__version__ = "0.1.0"

from flowattn_np.backend import (
    BackendError,
    array_module,
    asarray,
    get_array_module,
    get_backend,
    set_backend,
    synchronize,
    to_numpy,
    use_backend,
)
from flowattn_np.equations.ops import (
    cross_entropy,
    log_softmax,
    logsumexp,
    mean_cross_entropy,
    one_hot,
    softmax,
    softmax_vjp,
)
from flowattn_np.equations.attention import (
    cross_attention,
    cross_attention_forward,
    cross_attention_vjp,
    self_attention,
    self_attention_adjoint,
    self_attention_sum_forward,
    self_attention_sum_vjp,
)
from flowattn_np.equations.models import (
    LinearModel,
    QuadraticModel,
    linear_grad_theta,
    linear_grad_Z,
    linear_logits,
    linear_loss,
    quadratic_grad_phi,
    quadratic_grad_theta,
    quadratic_grad_Z,
    quadratic_logits,
    quadratic_loss,
    theta_from_phi,
)
from flowattn_np.equations.integrators import INTEGRATORS, Integrator, integrate, rk_step
from flowattn_np.equations.flows import (
    lie_step,
    linear_B_exact,
    linear_field,
    linear_flow,
    linear_flow_A,
    linear_flow_B,
    quadratic_field,
    quadratic_flow,
    quadratic_flow_A,
    quadratic_flow_B,
    strang_step,
)
from flowattn_np.equations.exact_b import quadratic_B_exact
from flowattn_np.equations.sphere import (
    layer_retract,
    layer_retract_vjp,
    layer_tangent_project,
    linear_B_exact_sphere,
    linear_flow_A_sphere,
    linear_flow_B_sphere,
    linear_flow_sphere,
    post_norm_step_size,
    quadratic_flow_A_sphere,
    quadratic_flow_B_sphere,
    quadratic_flow_sphere,
    retract,
    retract_vjp,
    tangent_project,
)
from flowattn_np.teaching.gradient_check import GradcheckResult, check_vjp, gradcheck, numerical_gradient
from flowattn_np.equations.mlp import (
    ACTIVATIONS,
    MLPCache,
    gelu,
    gelu_grad,
    mlp_logits,
    mlp_logits_vjp,
    mlp_oracle,
    mlp_oracle_vjp,
    relu,
    relu_grad,
)
from flowattn_np.blocks.config import BlockConfig
from flowattn_np.blocks.cross_attention import CrossAttentionBlock
from flowattn_np.blocks.implementations import make_block
from flowattn_np.blocks.memory import MemoryBlock
from flowattn_np.blocks.self_attention import SelfAttentionBlock
from flowattn_np.blocks.network import Network, NetworkConfig
from flowattn_np.blocks.mlp_classifier import MLPClassifier, MLPClassifierConfig
import flowattn_np.fast  # noqa: F401,E402  (registers the fast paths in blocks/implementations.py)
from flowattn_np.training.optim import SGD, Adam, Cosine
from flowattn_np.training.train import evaluate, fit, load_checkpoint, save_checkpoint
from flowattn_np.threads import available_cpus, set_threads
# the course's data, figures and experiment (none imports matplotlib until a figure is drawn)
from flowattn_np.experiments.data import CLASS_NAMES, add_noise, load_fashion_mnist, make_blobs, make_retrieval, random_spd
from flowattn_np.experiments.common import ReproduceConfig, lam_max
from flowattn_np.experiments.part2_feature_discovery import part2_feature_discovery
from flowattn_np.experiments import plotting
from flowattn_np.experiments.plotting import method_color
# the assignments' checkers, as a module: fa.checks.check_function(...)
from flowattn_np.teaching import checks

__all__ = [
    # backend
    "BackendError", "array_module", "asarray", "get_array_module", "get_backend", "set_backend",
    "synchronize", "to_numpy", "use_backend",
    # numerics
    "cross_entropy", "log_softmax", "logsumexp", "mean_cross_entropy", "one_hot", "softmax",
    "softmax_vjp",
    # attention (eqs. 4, 9), each VJP beside the forward that returns what it needs
    "cross_attention", "cross_attention_forward", "cross_attention_vjp", "self_attention",
    "self_attention_adjoint", "self_attention_sum_forward", "self_attention_sum_vjp",
    # models and their gradients (eqs. 1-5, 9)
    "LinearModel", "QuadraticModel", "linear_grad_theta", "linear_grad_Z", "linear_logits",
    "linear_loss", "quadratic_grad_phi", "quadratic_grad_theta", "quadratic_grad_Z",
    "quadratic_logits", "quadratic_loss", "theta_from_phi",
    # flows, splitting, integrators (eqs. 6-8, 10)
    "INTEGRATORS", "Integrator", "integrate", "lie_step", "linear_B_exact", "linear_field",
    "linear_flow", "linear_flow_A", "linear_flow_B", "quadratic_B_exact", "quadratic_field",
    "quadratic_flow", "quadratic_flow_A",
    "quadratic_flow_B", "rk_step", "strang_step",
    # normalisation as a sphere constraint (Riemannian flows, retractions)
    "layer_retract", "layer_retract_vjp", "layer_tangent_project", "linear_B_exact_sphere",
    "linear_flow_A_sphere", "linear_flow_B_sphere", "linear_flow_sphere", "post_norm_step_size",
    "quadratic_flow_A_sphere", "quadratic_flow_B_sphere", "quadratic_flow_sphere", "retract",
    "retract_vjp", "tangent_project",
    # gradient checking
    "GradcheckResult", "check_vjp", "gradcheck", "numerical_gradient",
    # the MLP oracle C_hat(Z) = softmax(act(Z W1^T + b1) W2^T + b2)
    "ACTIVATIONS", "MLPCache", "gelu", "gelu_grad", "mlp_logits", "mlp_logits_vjp",
    "mlp_oracle", "mlp_oracle_vjp", "relu", "relu_grad",
    # blocks, networks, training
    "BlockConfig", "CrossAttentionBlock", "MemoryBlock", "SelfAttentionBlock", "make_block",
    "Network", "NetworkConfig", "MLPClassifier", "MLPClassifierConfig", "SGD", "Adam", "Cosine",
    "fit", "evaluate", "save_checkpoint", "load_checkpoint",
    # the thread policy (threads.py)
    "available_cpus", "set_threads",
    # the course: data sets, the Fashion-MNIST experiment, figures, the assignments' checkers
    "CLASS_NAMES", "add_noise", "load_fashion_mnist", "make_blobs", "make_retrieval", "random_spd",
    "ReproduceConfig", "lam_max", "part2_feature_discovery", "plotting", "method_color", "checks",
]
