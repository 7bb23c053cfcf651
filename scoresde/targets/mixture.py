"""The Gaussian-mixture oracle: exact score and density of every marginal (see :mod:`scoresde.targets`)."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch

from .._utils import NULL_CLASS, TimeLike, as_time, check_int, check_labels, check_x

ArrayLike = Union[torch.Tensor, Sequence]  # also numpy arrays

_LOG_2PI = math.log(2.0 * math.pi)

__all__ = ["GaussianMixture"]



def _as_float64(value, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a tensor, numpy array or nested list of numbers ({err})") from None
    t = t.detach().to("cpu").clone()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf; pass finite values")
    return t


class GaussianMixture:
    """A Gaussian mixture ``p(x) = sum_k w_k N(x; mu_k, diag(sigma_k^2))`` in ``D`` dimensions.

    Args:
        weights: ``(K,)`` positive mixture weights; they are divided by their sum, so any positive
            vector is accepted (a zero or negative weight raises: drop that component instead).
        means: ``(K, D)`` component means.
        stds: ``(K,)`` isotropic standard deviations (``Sigma_k = sigma_k^2 I``) or ``(K, D)``
            per-coordinate standard deviations (``Sigma_k = diag(sigma_k^2)``); all ``> 0``.

    Tensors, numpy arrays and nested lists are accepted; parameters are stored in float64 on the
    CPU and moved lazily (and cached) to the device and dtype of the data they meet.

    Data ``x`` are ``(B, *dims)`` with ``prod(dims) = D`` (e.g. ``(B, 16)`` or ``(B, 1, 4, 4)`` for
    ``D = 16``; ``(B,)`` is accepted for ``D = 1``): the mixture flattens internally and returns
    scores shaped like ``x``. Densities are in nats, per sample, shape ``(B,)``.

    Under an SDE with transition ``N(m(t) x0, s(t)^2 I)`` the time-``t`` marginal is the mixture
    with means ``m(t) mu_k`` and variances ``m(t)^2 sigma_k^2 + s(t)^2`` (Song et al. 2021):
    see :meth:`marginal_log_prob`, :meth:`score_fn` and :meth:`marginal`. For the VE SDE,
    whose ``s(0) = sigma_min > 0``, the marginal at ``t = 0`` is the data convolved with
    ``N(0, sigma_min^2 I)``, as in the SDE's own convention; :meth:`log_prob` is the bare data density.

    Class labels (optional): ``labels`` ``(K,)`` gives each component a class ``0 .. C-1`` (every
    class needs at least one component). Then the class prior is ``p(y) = sum_{k: l_k = y} w_k``
    and the class-conditional data are the mixture of that class's components with weights
    ``w_k / p(y)``, so ``p_t(x | y)`` is again a Gaussian mixture at every ``t`` and its score and
    log-density are exact, as are the marginal's. Every density and score method takes ``y=``: a
    ``(B,)`` tensor of labels (or an int for all rows), where the label ``-1``
    (:data:`~scoresde.guidance.NULL_CLASS`) and ``y=None`` mean the marginal ``p_t(x)``. Such
    oracles make classifier-free guidance (:mod:`scoresde.guidance`) exact to test.
    """

    def __init__(self, weights: ArrayLike, means: ArrayLike, stds: ArrayLike, labels: Optional[ArrayLike] = None):
        w = _as_float64(weights, "weights")
        mu = _as_float64(means, "means")
        sd = _as_float64(stds, "stds")
        if w.ndim != 1 or w.numel() == 0:
            raise ValueError(f"weights must be a non-empty 1-D vector (K,), got shape {tuple(w.shape)}")
        K = w.shape[0]
        if not bool((w > 0).all()):
            raise ValueError(
                f"weights must all be positive (got {w.tolist()}); drop zero-weight components "
                "and pass positive values (they are normalised to sum to 1)"
            )
        if mu.ndim != 2:
            raise ValueError(
                f"means must have shape (K, D) = ({K}, D), got shape {tuple(mu.shape)}; "
                "for 1-D data pass means.reshape(-1, 1)"
            )
        if mu.shape[0] != K:
            raise ValueError(f"means has {mu.shape[0]} rows but weights has {K} entries; pass one mean per component")
        D = mu.shape[1]
        if D == 0:
            raise ValueError("means must have at least one column (D >= 1)")
        if sd.ndim == 1 and sd.shape[0] == K:
            isotropic = True
            var = (sd * sd)[:, None].expand(K, D).clone()
        elif sd.ndim == 2 and tuple(sd.shape) == (K, D):
            isotropic = False
            var = sd * sd
        else:
            raise ValueError(
                f"stds must have shape ({K},) (isotropic) or ({K}, {D}) (diagonal), got shape {tuple(sd.shape)}"
            )
        if not bool((sd > 0).all()):
            raise ValueError(f"stds must all be > 0, got min {float(sd.min()):.6g}; pass positive standard deviations")
        self._w = w / w.sum()
        self._mu = mu
        self._sd = sd
        self._var = var
        self.isotropic = isotropic
        self._cache: dict = {}
        self._labels = None if labels is None else self._check_component_labels(labels, K)

    @staticmethod
    def _check_component_labels(labels: ArrayLike, K: int) -> torch.Tensor:
        lab = _as_float64(labels, "labels")
        if tuple(lab.shape) != (K,) or not bool((lab == lab.round()).all()) or (K and float(lab.min()) < 0):
            raise ValueError(f"labels must be {K} non-negative integers, one class per component, "
                             f"got {lab.tolist() if lab.numel() < 20 else tuple(lab.shape)}")
        lab = lab.long()
        missing = sorted(set(range(int(lab.max()) + 1)) - set(lab.tolist()))
        if missing:
            raise ValueError(f"classes {missing} have no component; number the classes 0..C-1 without gaps")
        return lab
    # -- parameters ----------------------------------------------------------------------------
    @property
    def n_components(self) -> int:
        """Number of components ``K``."""
        return self._w.shape[0]

    @property
    def dim(self) -> int:
        """Data dimension ``D``."""
        return self._mu.shape[1]

    @property
    def weights(self) -> torch.Tensor:
        """Normalised weights ``(K,)``, float64."""
        return self._w.clone()

    @property
    def means(self) -> torch.Tensor:
        """Component means ``(K, D)``, float64."""
        return self._mu.clone()

    @property
    def stds(self) -> torch.Tensor:
        """Standard deviations as given: ``(K,)`` if isotropic, else ``(K, D)``; float64."""
        return self._sd.clone()

    @property
    def variances(self) -> torch.Tensor:
        """Per-coordinate component variances ``(K, D)``, float64."""
        return self._var.clone()

    @property
    def labels(self) -> Optional[torch.Tensor]:
        """The class of each component ``(K,)`` long, or ``None`` (an unlabelled mixture)."""
        return None if self._labels is None else self._labels.clone()

    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` (0 for an unlabelled mixture)."""
        return 0 if self._labels is None else int(self._labels.max()) + 1

    def class_probs(self) -> torch.Tensor:
        """The class prior ``p(y) = sum_{k: l_k = y} w_k``, ``(C,)`` float64."""
        self._need_labels()
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self._labels, self._w)

    def conditional(self, y: int) -> "GaussianMixture":
        """The data distribution of class ``y``, ``p(x | y)``, as an unlabelled mixture of that class's
        components with weights ``w_k / p(y)``."""
        self._need_labels()
        check_int("y", y, 0)
        if y >= self.num_classes:
            raise ValueError(f"y={y} but the mixture has classes 0..{self.num_classes - 1}")
        keep = self._labels == y
        return GaussianMixture(self._w[keep], self._mu[keep], self._sd[keep])

    def _need_labels(self) -> None:
        if self._labels is None:
            raise ValueError("this mixture has no class labels; build it with labels=[class of each component]")

    def _class_term(self, y: Optional[torch.Tensor], joint: torch.Tensor) -> torch.Tensor:
        """``joint`` ``(B, K)`` restricted to the components of each row's class, minus ``log p(y)``
        (rows labelled :data:`NULL_CLASS` keep every component). Device ops only, no host sync."""
        if y is None:
            return joint
        key = ("labels", joint.device, joint.dtype)
        if key not in self._cache:
            self._cache[key] = (self._labels.to(joint.device),
                                torch.log(self.class_probs()).to(device=joint.device, dtype=joint.dtype))
        lab, log_py = self._cache[key]
        null = y == NULL_CLASS
        keep = (lab[None, :] == y[:, None]) | null[:, None]
        shift = torch.where(null, torch.zeros_like(log_py[:1]), log_py[y.clamp(min=0)])
        return joint.masked_fill(~keep, -math.inf) - shift[:, None]

    def _rows(self, y, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Checked labels of the rows of ``x`` (``None`` stays ``None``: the marginal)."""
        if y is None:
            return None
        self._need_labels()
        return check_labels(y, x.shape[0], x.device, self.num_classes)

    def _params(self, device, dtype):
        key = (device, dtype)
        p = self._cache.get(key)
        if p is None:
            p = (
                torch.log(self._w).to(device=device, dtype=dtype),
                self._mu.to(device=device, dtype=dtype),
                self._var.to(device=device, dtype=dtype),
            )
            self._cache[key] = p
        return p

    def __repr__(self):
        kind = "isotropic" if self.isotropic else "diagonal"
        classes = f", {self.num_classes} classes" if self._labels is not None else ""
        return f"GaussianMixture(K={self.n_components}, D={self.dim}, {kind}{classes})"

    # -- moments -------------------------------------------------------------------------------
    def mean(self) -> torch.Tensor:
        """Mixture mean ``sum_k w_k mu_k``, shape ``(D,)``, float64 on the CPU."""
        return self._w @ self._mu

    def covariance(self) -> torch.Tensor:
        """Mixture covariance ``sum_k w_k (Sigma_k + mu_k mu_k^T) - mean mean^T``, ``(D, D)``, float64."""
        m = self.mean()
        second = torch.diag(self._w @ self._var) + (self._mu * self._w[:, None]).T @ self._mu
        return second - torch.outer(m, m)

    # -- shapes --------------------------------------------------------------------------------
    def _flatten(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """``(B, *dims) -> (B, D)``; a cheap check using Python ints only (no host sync)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B, *dims), got {type(x).__name__}")
        if x.ndim < 1:
            raise ValueError(f"{name} must have shape (B, *dims), got a 0-d tensor")
        d = math.prod(x.shape[1:])
        if d != self.dim:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, i.e. {d} values per sample, but the mixture has "
                f"D={self.dim}; pass data of shape (B, *dims) with prod(dims) = {self.dim}"
            )
        return x.reshape(x.shape[0], self.dim)

    @staticmethod
    def _time_vector(t, x: torch.Tensor) -> torch.Tensor:
        """Unchecked broadcast of ``t`` (float, 0-d or ``(B,)`` tensor) to ``(B,)`` in ``x``'s dtype."""
        batch = x.shape[0]
        if not isinstance(t, torch.Tensor):
            return torch.full((batch,), float(t), device=x.device, dtype=x.dtype)
        if t.ndim == 0:
            t = t.expand(batch)
        elif t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape ({batch},), got shape {tuple(t.shape)}")
        return t.to(device=x.device, dtype=x.dtype)

    # -- core maths (unchecked) ----------------------------------------------------------------
    def _components(self, xf: torch.Tensor, m: Optional[torch.Tensor], s: Optional[torch.Tensor]):
        """Per-component log-density and whitened residual at ``(B, D)`` points.

        Returns ``log w_k + log N_k(x)`` of shape ``(B, K)`` and ``(x - m mu_k) / var_k`` of shape
        ``(B, K, D)``, with ``var_k = m^2 Sigma_k + s^2`` (``m = 1, s = 0`` when ``m is None``).
        """
        log_w, mu, var = self._params(xf.device, xf.dtype)
        if m is None:
            mean = mu[None]  # (1, K, D)
            var_t = var[None]
        else:
            m2 = (m * m)[:, None, None]
            mean = m[:, None, None] * mu[None]  # (B, K, D)
            var_t = m2 * var[None] + (s * s)[:, None, None]
        diff = xf[:, None, :] - mean
        z = diff / var_t
        log_n = -0.5 * ((diff * z).sum(-1) + torch.log(var_t).sum(-1) + self.dim * _LOG_2PI)
        return log_w + log_n, z

    def _log_prob_flat(self, xf, m=None, s=None, y=None) -> torch.Tensor:
        joint, _ = self._components(xf, m, s)
        return torch.logsumexp(self._class_term(y, joint), dim=1)

    def _score_flat(self, xf, m=None, s=None, y=None) -> torch.Tensor:
        joint, z = self._components(xf, m, s)
        r = torch.softmax(self._class_term(y, joint), dim=1)  # responsibilities (B, K)
        return -(r[:, :, None] * z).sum(1)

    # -- public densities ----------------------------------------------------------------------
    def log_prob(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """Log-density of the data distribution ``p_0`` at ``x`` ``(B, *dims)``: ``(B,)`` nats
        (``log p_0(x | y)`` for rows with a label ``y``)."""
        check_x(x)
        return self._log_prob_flat(self._flatten(x), y=self._rows(y, x))

    def marginal_log_prob(self, x: torch.Tensor, t: TimeLike, sde, y=None) -> torch.Tensor:
        """Exact ``log p_t(x)`` (nats, shape ``(B,)``) of the marginal of ``sde`` started from this mixture
        (``log p_t(x | y)`` for rows with a label ``y``).

        ``t`` is a float or a ``(B,)`` tensor in ``[0, sde.T]`` (checked).
        """
        check_x(x)
        xf = self._flatten(x)
        tt = as_time(t, x, sde.T)
        m, s = sde.coeffs_unchecked(tt)
        return self._log_prob_flat(xf, m, s, self._rows(y, x))

    def score(self, x: torch.Tensor, t: TimeLike, sde, y=None) -> torch.Tensor:
        """Exact ``grad_x log p_t(x)`` (or ``grad_x log p_t(x | y)`` for labelled rows) shaped like ``x``
        (checked version of :meth:`score_fn`)."""
        check_x(x)
        xf = self._flatten(x)
        m, s = sde.coeffs_unchecked(as_time(t, x, sde.T))
        return self._score_flat(xf, m, s, self._rows(y, x)).reshape(x.shape)

    def score_fn(self, sde) -> Callable[..., torch.Tensor]:
        """The exact score of the marginals of ``sde``: a callable ``(x, t, y=None) -> grad_x log p_t(x)``.

        For a labelled mixture, ``y`` (a ``(B,)`` long tensor on ``x``'s device, ``-1`` for the
        marginal) gives ``grad_x log p_t(x | y)`` per row; the labels are not range-checked here
        (no host sync), so check them once where they enter (:func:`scoresde.guidance.guided_score` does).

        ``x`` is ``(B, *dims)``, ``t`` a ``(B,)`` tensor (a float or 0-d tensor is broadcast); the
        result is shaped like ``x``. Closed form (responsibility-weighted component scores),
        built from differentiable torch ops only, so autograd (including ``create_graph=True``,
        as the likelihood's divergence needs) works through it. Made for solver loops: no host
        synchronisation and no check of ``t`` (solvers may probe slightly outside ``[0, T]``);
        only the shape of ``x`` is checked, with Python ints.
        """
        coeffs = sde.coeffs_unchecked

        def score(x: torch.Tensor, t, y: Optional[torch.Tensor] = None) -> torch.Tensor:
            xf = self._flatten(x)
            m, s = coeffs(self._time_vector(t, x))
            if y is not None:
                self._need_labels()
                y = check_labels(y, x.shape[0], x.device)
            return self._score_flat(xf, m, s, y).reshape(x.shape)

        score.mixture = self  # type: ignore[attr-defined]
        score.sde = sde  # type: ignore[attr-defined]
        score.num_classes = self.num_classes  # type: ignore[attr-defined]
        return score

    def marginal(self, t: float, sde) -> "GaussianMixture":
        """The time-``t`` marginal ``p_t`` of ``sde`` as a :class:`GaussianMixture` (``t`` a float in ``[0, T]``).

        Means ``m(t) mu_k``, standard deviations ``sqrt(m(t)^2 sigma_k^2 + s(t)^2)`` (isotropic
        stays isotropic), same weights (Song et al. 2021).
        """
        if isinstance(t, torch.Tensor):
            if t.numel() != 1:
                raise ValueError(f"marginal needs a single time, got a tensor of shape {tuple(t.shape)}")
            t = float(t)
        probe = torch.empty((1,), dtype=torch.float64)
        m, s = sde.coeffs_unchecked(as_time(t, probe, sde.T))
        m, s = m[0], s[0]
        sd = torch.sqrt(m * m * self._sd * self._sd + s * s)
        return GaussianMixture(self._w, m * self._mu, sd, self._labels)

    # -- components ----------------------------------------------------------------------------
    def responsibilities(self, x: torch.Tensor, t: Optional[TimeLike] = None, sde=None) -> torch.Tensor:
        """Posterior component probabilities ``r_k(x, t)``, shape ``(B, K)`` (``t = None``: the data, ``p_0``)."""
        check_x(x)
        xf = self._flatten(x)
        if t is None:
            m = s = None
        else:
            if sde is None:
                raise ValueError("pass the sde together with t (or neither, for the data distribution)")
            m, s = sde.coeffs_unchecked(as_time(t, x, sde.T))
        joint, _ = self._components(xf, m, s)
        return torch.softmax(joint, dim=1)

    def component_of(self, x: torch.Tensor, t: Optional[TimeLike] = None, sde=None) -> torch.Tensor:
        """Index of the most responsible component per sample (the Bayes classifier), ``(B,)`` long.

        With ``t = None`` it classifies against the data mixture; with ``t`` and ``sde`` against the
        time-``t`` marginal. For per-component moment checks of samplers on well-separated mixtures.
        """
        return self.responsibilities(x, t, sde).argmax(dim=1)

    # -- sampling ------------------------------------------------------------------------------
    def _sample(self, n, generator=None, device=None, dtype=None, shape=None, y=None):
        check_int("n", n)
        if shape is None:
            shape = (self.dim,)
        else:
            shape = tuple(int(d) for d in shape)
            if math.prod(shape) != self.dim:
                raise ValueError(f"shape {shape} has {math.prod(shape)} values but the mixture has D={self.dim}")
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        w = self._w.to(device=device)
        if y is None:
            k = torch.multinomial(w, n, replacement=True, generator=generator)
        else:  # each row from its class's components (the marginal's for NULL_CLASS)
            self._need_labels()
            y = check_labels(y, n, device, self.num_classes)
            keep = (self._labels.to(device)[None, :] == y[:, None]) | (y == NULL_CLASS)[:, None]
            k = torch.multinomial(w[None, :] * keep, 1, generator=generator).squeeze(1)
        z = torch.randn((n, self.dim), generator=generator, device=device, dtype=dtype)
        mu = self._mu.to(device=device, dtype=dtype)
        sd = torch.sqrt(self._var).to(device=device, dtype=dtype)
        x = mu[k] + sd[k] * z
        return x.reshape((n,) + shape), k

    def sample(self, n: int, generator: Optional[torch.Generator] = None, device=None,
               dtype: Optional[torch.dtype] = None, shape: Optional[Sequence[int]] = None,
               y=None) -> torch.Tensor:
        """Draw ``n`` samples, returned as ``(n, *shape)`` (default ``shape = (D,)``).

        Random numbers come from ``generator`` on ``device`` (by default the generator's device,
        else the CPU); ``dtype`` defaults to torch's default dtype. Components are drawn with
        ``torch.multinomial``, then ``x = mu_k + sigma_k * z``. With ``y`` (an int or ``(n,)``
        labels; ``-1`` for the marginal) row ``i`` is drawn from ``p(x | y_i)``.
        """
        return self._sample(n, generator, device, dtype, shape, y)[0]

    def sample_labelled(self, n: int, generator: Optional[torch.Generator] = None, device=None,
                        dtype: Optional[torch.dtype] = None) -> tuple:
        """``n`` draws ``(x, y)`` of the joint ``p(x, y)``: ``x`` ``(n, D)`` and its class ``y`` ``(n,)`` long."""
        self._need_labels()
        x, k = self._sample(n, generator, device, dtype)
        return x, self._labels.to(k.device)[k]
