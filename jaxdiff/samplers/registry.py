"""One entry point for every sampler: ``get_sampler(name, sde, score_fn, shape, **options)``.

Every sampler returns a jitted ``sample(params, key, cond=None) -> (x, nfe)`` (``x`` of ``shape``,
``nfe`` the int32 number of batched score evaluations; a non-None ``cond`` is passed to the score as
``score_fn(params, x, t, cond)``), is built by :func:`jaxdiff.samplers.base.make_sampler` (prior
draw from ``split(key)[0]``), takes ``dtype=`` and ``sharding=`` and runs its steps in ``lax.scan``
/ ``fori_loop`` / ``while_loop``. Each registered name declares its exact score-evaluation count
``nfe(num_steps, **options)`` (``None`` for the adaptive samplers), which
:func:`num_steps_for_nfe` inverts.

Names (``available_samplers()`` lists them; aliases fix some options):

====================  ==========================================================================
``pc``                :func:`~jaxdiff.samplers.pc_sampler` (predictor-corrector, Song et al.)
``euler_maruyama``    ``pc`` with ``predictor='euler_maruyama', corrector=None``
``ode``               :func:`~jaxdiff.samplers.ode_sampler` (adaptive RK45 on the probability flow)
``ddim``              :func:`~jaxdiff.samplers.ddim.ddim_sampler` (``eta`` option)
``dpm_solver++``      :func:`~jaxdiff.samplers.dpm_solver.dpm_solver_pp_sampler` (``order``, ``method``)
``dpm_solver++_2m``   ``order=2, method='multistep'``; ``_3m``, ``_2s``, ``_3s`` likewise
``edm``               :func:`~jaxdiff.samplers.edm.edm_sampler` (Heun; alias ``edm_heun``)
``unipc``             :func:`~jaxdiff.samplers.unipc.unipc_sampler` (``order``, ``variant``);
                      ``unipc_3``: ``order=3``
``dpm_solver++_sde``  :func:`~jaxdiff.samplers.dpm_solver_sde.dpm_solver_pp_sde_sampler`
                      (``order`` 1, 2); ``dpm_solver++_2m_sde``: ``order=2``
``adaptive``          :func:`~jaxdiff.samplers.adaptive.adaptive_sde_sampler` (alias ``gotta_go_fast``)
====================  ==========================================================================

Every fixed-step sampler but ``pc`` takes ``grid=`` (a name of
:data:`~jaxdiff.samplers.schedule.GRIDS` or an explicit descending array of times, see
:func:`~jaxdiff.samplers.schedule.time_grid`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from jaxdiff.samplers.adaptive import adaptive_sde_sampler
from jaxdiff.samplers.ddim import ddim_nfe, ddim_sampler
from jaxdiff.samplers.dpm_solver import dpm_solver_pp_nfe, dpm_solver_pp_sampler
from jaxdiff.samplers.dpm_solver_sde import dpm_solver_pp_sde_nfe, dpm_solver_pp_sde_sampler
from jaxdiff.samplers.edm import edm_nfe, edm_sampler
from jaxdiff.samplers.ode import ode_sampler
from jaxdiff.samplers.pc import pc_nfe, pc_sampler
from jaxdiff.samplers.unipc import unipc_nfe, unipc_sampler

__all__ = ["get_sampler", "register_sampler", "available_samplers", "num_steps_for_nfe",
           "sampler_options", "SamplerSpec"]


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """A sampler factory ``factory(sde, score_fn, shape, **options)``, the options its name fixes
    (an alias such as ``dpm_solver++_2m`` fixes ``order`` and ``method``) and its declared
    score-evaluation count ``nfe(num_steps, **options) -> int`` (``None``: adaptive, the count
    depends on tolerances and data)."""

    factory: Callable[..., Callable]
    fixed: dict = dataclasses.field(default_factory=dict)
    nfe: Callable[..., int] | None = None


_SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(name: str, factory: Callable[..., Callable], *,
                     nfe: Callable[..., int] | None = None, **fixed: Any) -> None:
    """Register ``factory`` under ``name``.

    Args:
      name: the name for :func:`get_sampler`.
      factory: ``factory(sde, score_fn, shape, **options) -> sample(params, key, cond=None)``.
      nfe: ``nfe(num_steps, **options) -> int``, the exact number of score evaluations with
        ``num_steps`` steps (it receives every option of the factory, defaults filled in); leave it
        ``None`` for adaptive samplers.
      **fixed: options set by the name; :func:`get_sampler` refuses other values for them.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"sampler name must be a non-empty string, got {name!r}")
    params = inspect.signature(factory).parameters
    bad = [k for k in fixed if k not in params]
    if bad:
        raise ValueError(f"{factory.__name__} has no option(s) {bad}")
    _SAMPLERS[name] = SamplerSpec(factory, dict(fixed), nfe)


def available_samplers() -> list[str]:
    """Sorted names accepted by :func:`get_sampler`."""
    return sorted(_SAMPLERS)


def _spec(name: str) -> SamplerSpec:
    try:
        return _SAMPLERS[name]
    except KeyError:
        raise ValueError(
            f"unknown sampler {name!r}; choose one of {available_samplers()}") from None


def get_sampler(name: str, sde, score_fn, shape: tuple[int, ...], **options: Any):
    """Build the sampler ``name`` for ``sde`` and ``score_fn``.

    Args:
      name: one of :func:`available_samplers` (e.g. ``'pc'``, ``'ode'``, ``'ddim'``,
        ``'dpm_solver++_2m'``, ``'edm'``, ``'adaptive'``).
      sde: the forward SDE.
      score_fn: ``score_fn(params, x, t) -> score``.
      shape: ``(B, *event_shape)`` of the samples.
      **options: keyword options of the underlying factory (``num_steps``, ``eta``, ``order``,
        ``grid``, ``eps``, ``dtype``, ``sharding`` ...). An unknown option raises a ``ValueError``
        naming it and listing the valid ones.

    Returns:
      ``sample(params, key, cond=None) -> (x, nfe)``, jitted.
    """
    spec = _spec(name)
    params = inspect.signature(spec.factory).parameters
    valid = [k for k, p in params.items()
             if p.kind == p.KEYWORD_ONLY and k not in spec.fixed]
    unknown = [k for k in options if k not in valid]
    if unknown:
        conflicting = [k for k in unknown if k in spec.fixed and options[k] != spec.fixed[k]]
        if conflicting:
            raise ValueError(f"sampler {name!r} fixes {conflicting[0]}={spec.fixed[conflicting[0]]!r}, "
                             f"got {conflicting[0]}={options[conflicting[0]]!r}")
        unknown = [k for k in unknown if k not in spec.fixed]
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for sampler {name!r}; valid: {sorted(valid)}")
    kwargs = {**options, **spec.fixed}
    return spec.factory(sde, score_fn, tuple(shape), **kwargs)


def sampler_options(name: str) -> dict[str, Any]:
    """The keyword options sampler ``name`` takes, with their defaults (the values its name fixes
    included: passing one of those with the same value is accepted)."""
    spec = _spec(name)
    params = inspect.signature(spec.factory).parameters
    opts = {k: p.default for k, p in params.items() if p.kind == p.KEYWORD_ONLY}
    return {**opts, **spec.fixed}


def num_steps_for_nfe(name: str, nfe: int, **options: Any) -> int:
    """The ``num_steps`` that makes sampler ``name`` use at most ``nfe`` score evaluations (for
    comparisons at equal NFE): the largest ``num_steps`` whose declared count
    ``spec.nfe(num_steps, **options)`` is ``<= nfe``. Not defined for the adaptive samplers
    (``'ode'``, ``'adaptive'``), whose NFE depends on their tolerances.

    ``pc``: ``nfe / (1 + n_corrector_steps)`` with a corrector; DDIM and multistep DPM-Solver++:
    ``nfe`` (minus 1 with ``denoise``); single-step DPM-Solver++: ``nfe // order``; EDM:
    ``(nfe + 1) // 2`` with ``denoise`` (``2 n - 1`` evaluations), ``nfe // 2`` without.
    """
    spec = _spec(name)
    if spec.nfe is None:
        raise ValueError(f"sampler {name!r} has no fixed step count (its NFE is adaptive)")
    opts = {**sampler_options(name), **options, **spec.fixed}
    opts.pop("num_steps", None)
    budget = int(nfe)
    count = lambda n: spec.nfe(n, **opts)  # noqa: E731
    if count(1) > budget:
        raise ValueError(f"nfe={budget} is too small for sampler {name!r} with options {options}")
    lo, hi = 1, 2  # the count grows with num_steps: bracket, then bisect
    while count(hi) <= budget and hi <= budget + 1:  # every step costs >= 1 (EDM: 2n - 1)
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= budget else (lo, mid)
    return lo


register_sampler("pc", pc_sampler, nfe=pc_nfe)
register_sampler("euler_maruyama", pc_sampler, nfe=pc_nfe, predictor="euler_maruyama",
                 corrector=None)
register_sampler("ode", ode_sampler)
register_sampler("ddim", ddim_sampler, nfe=ddim_nfe)
register_sampler("dpm_solver++", dpm_solver_pp_sampler, nfe=dpm_solver_pp_nfe)
for _order in (2, 3):
    register_sampler(f"dpm_solver++_{_order}m", dpm_solver_pp_sampler, nfe=dpm_solver_pp_nfe,
                     order=_order, method="multistep")
    register_sampler(f"dpm_solver++_{_order}s", dpm_solver_pp_sampler, nfe=dpm_solver_pp_nfe,
                     order=_order, method="singlestep")
register_sampler("edm", edm_sampler, nfe=edm_nfe)
register_sampler("edm_heun", edm_sampler, nfe=edm_nfe)
register_sampler("unipc", unipc_sampler, nfe=unipc_nfe)
register_sampler("unipc_3", unipc_sampler, nfe=unipc_nfe, order=3)
register_sampler("dpm_solver++_sde", dpm_solver_pp_sde_sampler, nfe=dpm_solver_pp_sde_nfe)
register_sampler("dpm_solver++_2m_sde", dpm_solver_pp_sde_sampler, nfe=dpm_solver_pp_sde_nfe,
                 order=2)
register_sampler("adaptive", adaptive_sde_sampler)
register_sampler("gotta_go_fast", adaptive_sde_sampler)
del _order
