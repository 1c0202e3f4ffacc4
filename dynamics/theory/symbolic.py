"""Symbolic derivations (sympy) of the theory's first-order forms, on small models.

Each function builds a model from symbols, differentiates its loss to get the plain-SGD step
``theta -> theta - eta grad``, and takes ``d/d eta`` at ``eta = 0`` of the quantity of interest by
the chain rule, ``-sum_p (d q / d theta_p) grad_p`` (the *derived* expression). Next to it stands the theory's *closed form* (``-A K G``, Proposition 1, the
DPO gradient). A :class:`Derivation` holds both and the claims that they are equal;
:meth:`Derivation.verify` proves a claim by simplification, :meth:`Derivation.function` lambdifies
any expression for numerical checks against :mod:`dynamics.theory`.

Keep the sizes small (V = 3): the expressions grow fast.

Example::

    >>> from dynamics.theory.symbolic import dpo_single_token
    >>> d = dpo_single_token()
    >>> d.claims
    (('grad', 'closed_form'),)
    >>> d.verify()
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy as sp

__all__ = [
    "Derivation",
    "dpo_single_token",
    "linear_softmax",
    "sign_conditions",
    "squeezing_boundary",
    "two_head",
]


@dataclass(frozen=True)
class Derivation:
    """Symbolic inputs, named expressions, and the claims (pairs of names) that two of them are equal.

    ``inputs`` lists every free symbol in a fixed order; :meth:`function` returns a numpy function of
    those inputs (a flat sequence of numbers) for any expression.
    """

    name: str
    inputs: tuple
    exprs: dict
    claims: tuple
    notes: dict = field(default_factory=dict)

    def function(self, key: str):
        """``f(values) -> float or ndarray`` evaluating ``exprs[key]`` at ``inputs = values``.

        Example::

            >>> d = dpo_single_token()
            >>> [str(s) for s in d.inputs]
            ['z_0', 'z_1', 'z_2', 'beta', 'r_plus', 'r_minus']
            >>> d.function("margin")([1.0, 0.0, 0.0, 2.0, 0.5, 0.0])   # h = (z_0 - r_plus) - (z_1 - r_minus)
            0.5
        """
        if key not in self.exprs:
            raise KeyError(f"{self.name}: no expression {key!r}; have {sorted(self.exprs)}")
        expr = self.exprs[key]
        fn = sp.lambdify(self.inputs, expr, modules="numpy")

        def call(values):
            values = list(np.asarray(values, dtype=np.float64).ravel())
            if len(values) != len(self.inputs):
                raise ValueError(f"{self.name}.{key}: expected {len(self.inputs)} input values, got {len(values)}")
            out = fn(*values)
            return np.asarray(out, dtype=np.float64) if isinstance(expr, sp.MatrixBase) else float(out)

        return call

    def residual(self, a: str, b: str):
        """``simplify(exprs[a] - exprs[b])`` (a matrix for matrix expressions)."""
        diff = self.exprs[a] - self.exprs[b]
        return sp.simplify(diff)

    def verify(self, claims=None) -> bool:
        """Prove every claim (or the given ones) by simplifying the difference to zero."""
        for a, b in claims or self.claims:
            r = self.residual(a, b)
            zero = r.is_zero_matrix if isinstance(r, sp.MatrixBase) else r == 0
            if not zero:
                return False
        return True


def _symbols_matrix(prefix: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{prefix}_{i}{j}", real=True))


def _symbols_vector(prefix: str, n: int) -> sp.Matrix:
    return sp.Matrix(n, 1, lambda i, _: sp.Symbol(f"{prefix}_{i}", real=True))


def _log_softmax(z: sp.Matrix) -> sp.Matrix:
    lse = sp.log(sum(sp.exp(v) for v in z))
    return z.applyfunc(lambda v: v - lse)


def _softmax(z: sp.Matrix) -> sp.Matrix:
    total = sum(sp.exp(v) for v in z)
    return z.applyfunc(lambda v: sp.exp(v) / total)


def _onehot(n: int, i: int) -> sp.Matrix:
    e = sp.zeros(n, 1)
    e[i] = 1
    return e


def _first_order(expr: sp.Expr, params: list, grads: list) -> sp.Expr:
    """``d/d eta expr(theta - eta grad) |_{eta=0} = -sum_p (d expr / d p) grad_p`` (the chain rule)."""
    return -sum(sp.diff(expr, p) * g for p, g in zip(params, grads) if g != 0)


def linear_softmax(vocab: int = 3, width: int = 2, prompts: int = 2, x0: int = 0, xu: int = 1) -> Derivation:
    """Single-token linear softmax ``z(y) = W phi_y``: first-order Delta G and Delta U under SFT.

    Inputs: ``W`` (V x d), the prompt features ``phi_0..phi_{N-1}`` (prompt 0 is the probe's) and
    ``phi_u`` (the training prompt). One SGD step on ``-log pi(xu | phi_u)``.

    Expressions (per unit step size):

    - ``dG_direct_i``: ``d/d eta log pi(x0 | phi_i)`` of the stepped model, for every prompt i;
    - ``kernel_i``: the eNTK ``J_i J_u^T`` and ``kernel_iso_i = <phi_i, phi_u> I`` (claimed equal);
    - ``dG_prop1_i``: ``-(e_{x0} - pi_i)^T K_i (pi_u - e_{xu})`` (Proposition 1, M = 1);
    - ``dU_direct``: ``d/d eta log pi(y0 | x0)`` with understanding the Bayes posterior (uniform prior);
    - ``dU_prop1``: ``sum_{i != 0} w_i (dG_prop1_0 - dG_prop1_i)``.

    Example::

        >>> d = linear_softmax(vocab=2, width=1, prompts=2)
        >>> d.verify([("kernel_0", "kernel_iso_0")])
        True
    """
    w = _symbols_matrix("w", vocab, width)
    phis = [_symbols_vector(f"phi{i}", width) for i in range(prompts)]
    phi_u = _symbols_vector("phiu", width)
    params = list(w)
    z_u = w * phi_u
    loss = -_log_softmax(z_u)[xu]
    grads = [sp.diff(loss, p) for p in params]
    g_u = _softmax(z_u) - _onehot(vocab, xu)
    exprs: dict = {}
    j_u = z_u.jacobian(params)
    log_gen = []
    for i, phi in enumerate(phis):
        z = w * phi
        lg = _log_softmax(z)[x0]
        log_gen.append(lg)
        exprs[f"dG_direct_{i}"] = _first_order(lg, params, grads)
        exprs[f"kernel_{i}"] = z.jacobian(params) * j_u.T
        exprs[f"kernel_iso_{i}"] = (phi.T * phi_u)[0, 0] * sp.eye(vocab)
        a = _onehot(vocab, x0) - _softmax(z)
        exprs[f"dG_prop1_{i}"] = -(a.T * exprs[f"kernel_iso_{i}"] * g_u)[0, 0]
    u = log_gen[0] - sp.log(sum(sp.exp(v) for v in log_gen) / prompts)
    exprs["dU_direct"] = _first_order(u, params, grads)
    total = sum(sp.exp(v) for v in log_gen)
    exprs["dU_prop1"] = sum(
        sp.exp(log_gen[i]) / total * (exprs["dG_prop1_0"] - exprs[f"dG_prop1_{i}"]) for i in range(1, prompts)
    )
    inputs = tuple(params) + tuple(s for phi in phis for s in phi) + tuple(phi_u)
    claims = tuple((f"kernel_{i}", f"kernel_iso_{i}") for i in range(prompts))
    claims += tuple((f"dG_direct_{i}", f"dG_prop1_{i}") for i in range(prompts)) + (("dU_direct", "dU_prop1"),)
    return Derivation("linear_softmax", inputs, exprs, claims,
                      notes={"vocab": vocab, "width": width, "prompts": prompts, "x0": x0, "xu": xu})


def two_head(vocab: int = 3, vocab_und: int = 2, width: int = 2, feat: int = 2, x0: int = 0, xu: int = 1,
             answer: int = 0) -> Derivation:
    """A shared linear trunk with two heads: first-order Delta G and Delta U of a generation-only SFT step.

    ``z_G(f) = H_g T f`` (generation), ``z_U(c) = H_u T c`` (understanding, its own input features c);
    the step trains T and H_g on ``-log pi_G(xu | f_u)``. Expressions (per unit step size):

    - ``dG_direct`` / ``dU_direct``: ``d/d eta`` of ``log pi_G(x0 | f_0)`` and ``log pi_U(answer | c_0)``;
    - ``K_GG`` = ``J_G(f_0) J_G(f_u)^T`` and its closed form ``K_GG_closed = <T f_0, T f_u> I +
      <f_0, f_u> H_g H_g^T`` (head block + trunk block);
    - ``K_UG`` = ``J_U(c_0) J_G(f_u)^T`` and ``K_UG_closed = <c_0, f_u> H_u H_g^T`` (the trunk alone:
      the branches share only T);
    - ``dG_akg = -a_G^T K_GG G_u`` and ``dU_akg = -a_U^T K_UG G_u`` (the ``-A K G`` form).

    Example::

        >>> d = two_head(vocab=2, vocab_und=2, width=1, feat=1)
        >>> d.verify([("K_UG", "K_UG_closed")])
        True
    """
    t = _symbols_matrix("t", width, feat)
    hg = _symbols_matrix("hg", vocab, width)
    hu = _symbols_matrix("hu", vocab_und, width)
    f0, fu, c0 = _symbols_vector("f0", feat), _symbols_vector("fu", feat), _symbols_vector("c0", feat)
    params = list(t) + list(hg) + list(hu)
    zg0, zgu, zu0 = hg * t * f0, hg * t * fu, hu * t * c0
    loss = -_log_softmax(zgu)[xu]
    grads = [sp.diff(loss, p) for p in params]
    g_u = _softmax(zgu) - _onehot(vocab, xu)
    j_gu = zgu.jacobian(params)
    k_gg = zg0.jacobian(params) * j_gu.T
    k_ug = zu0.jacobian(params) * j_gu.T
    a_g = _onehot(vocab, x0) - _softmax(zg0)
    a_u = _onehot(vocab_und, answer) - _softmax(zu0)
    exprs = {
        "dG_direct": _first_order(_log_softmax(zg0)[x0], params, grads),
        "dU_direct": _first_order(_log_softmax(zu0)[answer], params, grads),
        "K_GG": k_gg,
        "K_GG_closed": ((t * f0).T * (t * fu))[0, 0] * sp.eye(vocab) + (f0.T * fu)[0, 0] * hg * hg.T,
        "K_UG": k_ug,
        "K_UG_closed": (c0.T * fu)[0, 0] * hu * hg.T,
        "dG_akg": -(a_g.T * k_gg * g_u)[0, 0],
        "dU_akg": -(a_u.T * k_ug * g_u)[0, 0],
    }
    inputs = tuple(params) + tuple(f0) + tuple(fu) + tuple(c0)
    claims = (("K_GG", "K_GG_closed"), ("K_UG", "K_UG_closed"), ("dG_direct", "dG_akg"), ("dU_direct", "dU_akg"))
    return Derivation("two_head", inputs, exprs, claims,
                      notes={"vocab": vocab, "vocab_und": vocab_und, "width": width, "feat": feat,
                             "x0": x0, "xu": xu, "answer": answer})


def dpo_single_token(vocab: int = 3, x_plus: int = 0, x_minus: int = 1) -> Derivation:
    """Single-token sigmoid DPO with a shared prompt: ``dL/dz = beta sigma(-beta h) (e_{x-} - e_{x+})``.

    Inputs: the logits ``z`` (V), ``beta``, the reference log-probabilities ``r_plus``, ``r_minus``.
    ``grad`` is sympy's gradient of ``-log sigma(beta h)`` with
    ``h = (log pi(x+) - r_plus) - (log pi(x-) - r_minus)``; ``closed_form`` the stated fact.

    Example::

        >>> d = dpo_single_token(vocab=2)
        >>> d.verify()
        True
    """
    z = _symbols_vector("z", vocab)
    beta = sp.Symbol("beta", positive=True)
    r_plus, r_minus = sp.symbols("r_plus r_minus", real=True)
    logp = _log_softmax(z)
    h = (logp[x_plus] - r_plus) - (logp[x_minus] - r_minus)
    def sigma(v):
        return 1 / (1 + sp.exp(-v))

    loss = -sp.log(sigma(beta * h))
    grad = sp.Matrix([sp.diff(loss, v) for v in z])
    closed = beta * sigma(-beta * h) * (_onehot(vocab, x_minus) - _onehot(vocab, x_plus))
    inputs = tuple(z) + (beta, r_plus, r_minus)
    return Derivation("dpo_single_token", inputs, {"grad": grad, "closed_form": closed, "margin": h},
                      (("grad", "closed_form"),), notes={"vocab": vocab, "x_plus": x_plus, "x_minus": x_minus})


def sign_conditions(vocab: int = 3, x0: int = 0, xu: int = 1, prompts: int = 3) -> Derivation:
    """Sign conditions for co-improvement and co-degradation with isotropic kernels ``K_i = kappa_i I``.

    Inputs: ``p0`` (V, the probe's distribution after ``y0``), ``pu`` (V, the training input's),
    ``kappa`` (for ``K(Y0, Yu) = kappa I``), then for the understanding part ``w_1..w_{N-1}`` (posterior
    weights of the competing prompts), ``kappa_1..`` and ``s_1..`` (their kernels' scales and sign terms).

    Expressions:

    - ``dG_iso = -kappa (e_{x0} - p0)^T (pu - e_{xu})`` (Delta G per unit step) and
      ``dG_squeeze = -kappa * squeeze`` with ``squeeze = pu_{x0} + p0_{xu} - <p0, pu>`` (claimed equal,
      clean target ``xu != x0``): co-improvement of G iff ``kappa * squeeze > 0``;
    - ``dG_bad = -kappa (e - p0)^T (pu - e)`` for a bad positive (``xu = x0``) and its form
      ``dG_bad_sum = kappa [(1 - p0_x)(1 - pu_x) + sum_{j != x} p0_j pu_j]``, a sum of non-negative terms
      on the simplex (claimed equal): co-degradation of G whenever ``kappa > 0``;
    - ``dU_iso = -[(1 - w_0) kappa s_0 - sum_{i != 0} w_i kappa_i s_i]`` (the first-order Bayes form
      with ``s_0 = squeeze``), ``co_improvement`` the conjunction ``kappa s_0 > 0`` and
      ``(1 - w_0) kappa s_0 > sum_{i != 0} w_i kappa_i s_i`` (then Delta G < 0 and Delta U < 0), and
      ``co_degradation`` the mirror image.

    Example::

        >>> d = sign_conditions()
        >>> d.verify()
        True
    """
    if x0 == xu:
        raise ValueError(f"sign_conditions needs a clean target xu != x0, got x0 = xu = {x0}")
    p0, pu = _symbols_vector("p0", vocab), _symbols_vector("pu", vocab)
    kappa = sp.Symbol("kappa", real=True)
    e0, eu = _onehot(vocab, x0), _onehot(vocab, xu)
    squeeze = pu[x0] + p0[xu] - (p0.T * pu)[0, 0]
    dg_iso = -kappa * ((e0 - p0).T * (pu - eu))[0, 0]
    dg_bad = -kappa * ((e0 - p0).T * (pu - e0))[0, 0]
    dg_bad_sum = kappa * ((1 - p0[x0]) * (1 - pu[x0]) + sum(p0[j] * pu[j] for j in range(vocab) if j != x0))
    ws = [sp.Symbol(f"w_{i}", nonnegative=True) for i in range(1, prompts)]
    kappas = [sp.Symbol(f"kappa_{i}", real=True) for i in range(1, prompts)]
    ss = [sp.Symbol(f"s_{i}", real=True) for i in range(1, prompts)]
    competing = sum(w * k * s for w, k, s in zip(ws, kappas, ss))
    mass = sum(ws)  # 1 - w_0
    d_u = -(mass * kappa * squeeze - competing)
    exprs = {
        "squeeze": squeeze,
        "dG_iso": sp.expand(dg_iso),
        "dG_squeeze": sp.expand(-kappa * squeeze),
        "dG_bad": sp.expand(dg_bad),
        "dG_bad_sum": sp.expand(dg_bad_sum),
        "dU_iso": d_u,
        "co_improvement": sp.And(kappa * squeeze > 0, mass * kappa * squeeze > competing),
        "co_degradation": sp.And(kappa * squeeze < 0, mass * kappa * squeeze < competing),
    }
    inputs = tuple(p0) + tuple(pu) + (kappa,) + tuple(ws) + tuple(kappas) + tuple(ss)
    return Derivation("sign_conditions", inputs, exprs, (("dG_iso", "dG_squeeze"), ("dG_bad", "dG_bad_sum")),
                      notes={"vocab": vocab, "x0": x0, "xu": xu, "prompts": prompts})


def squeezing_boundary() -> sp.Expr:
    """The third-token mass ``t*`` where a clean SFT target stops lowering the probe (isotropic kernel).

    With ``p0 = pu = ((1-t)/2, (1-t)/2, t)`` over ``(x0, xu, third)``, the squeezing term is
    ``s(t) = (1 - t^2)/2 - t^2``, which vanishes at ``t* = 1/sqrt(3)``: for ``t > t*`` the step raises
    ``log pi(x0)`` although its target is another token.

    Example::

        >>> squeezing_boundary()
        sqrt(3)/3
    """
    t = sp.Symbol("t", positive=True)
    p = sp.Matrix([(1 - t) / 2, (1 - t) / 2, t])
    s = p[0] + p[1] - (p.T * p)[0, 0]
    roots = [r for r in sp.solve(sp.Eq(s, 0), t) if r.is_positive and (r < 1) is sp.true]
    if len(roots) != 1:
        raise ArithmeticError(f"expected one boundary in (0, 1), got {roots}")
    return roots[0]
