"""The learning-dynamics theory as code: closed forms, the Bayes link, sufficient conditions.

Example (one SGD step on a bias-free linear softmax head, predicted by ``-eta A K G``)::

    >>> import torch
    >>> from dynamics.theory import a_matrix, g_sft, first_order_delta
    >>> z = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64)
    >>> float(a_matrix(z).sum(-1).abs().max()) < 1e-15     # A 1 = 0
    True
    >>> float(first_order_delta(z, torch.tensor(1), torch.eye(3, dtype=torch.float64),
    ...                         g_sft(z, torch.tensor(1)), lr=0.01)) > 0
    True
"""

from ._bayes import (
    bayes_delta_u,
    bayes_delta_u_first_order,
    bayes_log_posterior,
    log_marginal,
    posterior_weights,
)
from ._closed_forms import (
    DPO_VARIANTS,
    a_matrix,
    dpo_coefficients,
    first_order_delta,
    g_dpo,
    g_dpo_shared_prompt,
    g_sft,
    predicted_delta_logits,
)
from ._conditions import (
    Condition,
    aligned_dynamics_condition,
    co_degradation_condition,
    co_improvement_condition,
    squeezing_term,
)
from ._propositions import (
    first_order_delta_prompts,
    lemma_dpo_delta_g,
    lemma_dpo_delta_u,
    prop1_delta_g,
    prop1_delta_u,
    sequence_logprob_of,
)

__all__ = [
    "DPO_VARIANTS",
    "Condition",
    "a_matrix",
    "aligned_dynamics_condition",
    "bayes_delta_u",
    "bayes_delta_u_first_order",
    "bayes_log_posterior",
    "co_degradation_condition",
    "co_improvement_condition",
    "dpo_coefficients",
    "first_order_delta",
    "first_order_delta_prompts",
    "g_dpo",
    "g_dpo_shared_prompt",
    "g_sft",
    "lemma_dpo_delta_g",
    "lemma_dpo_delta_u",
    "log_marginal",
    "posterior_weights",
    "predicted_delta_logits",
    "prop1_delta_g",
    "prop1_delta_u",
    "sequence_logprob_of",
    "squeezing_term",
]
