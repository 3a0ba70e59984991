"""One entry point for every sampler: ``get_sampler(name, sde, score_fn, shape, **options)``.

Every sampler returns a jitted ``sample(params, key) -> (x, nfe)`` (``x`` of ``shape``, ``nfe`` the
int32 number of batched score evaluations), draws its prior sample from ``split(key)[0]``, takes
``dtype=`` and ``sharding=`` and runs its steps in ``lax.scan`` / ``fori_loop`` / ``while_loop``.

Names (``available_samplers()`` lists them; aliases fix some options):

====================  ==========================================================================
``pc``                :func:`~jaxdiff.samplers.pc_sampler` (predictor-corrector, Song et al.)
``euler_maruyama``    ``pc`` with ``predictor='euler_maruyama', corrector=None``
``ode``               :func:`~jaxdiff.samplers.ode_sampler` (adaptive RK45 on the probability flow)
``ddim``              :func:`~jaxdiff.samplers.ddim.ddim_sampler` (``eta`` option)
``dpm_solver++``      :func:`~jaxdiff.samplers.dpm_solver.dpm_solver_pp_sampler` (``order``, ``method``)
``dpm_solver++_2m``   ``order=2, method='multistep'``; ``_3m``, ``_2s``, ``_3s`` likewise
``edm``               :func:`~jaxdiff.samplers.edm.edm_sampler` (Heun; alias ``edm_heun``)
``adaptive``          :func:`~jaxdiff.samplers.adaptive.adaptive_sde_sampler` (alias ``gotta_go_fast``)
====================  ==========================================================================
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

from jaxdiff.samplers.adaptive import adaptive_sde_sampler
from jaxdiff.samplers.ddim import ddim_sampler
from jaxdiff.samplers.dpm_solver import dpm_solver_pp_sampler
from jaxdiff.samplers.edm import edm_sampler
from jaxdiff.samplers.ode import ode_sampler
from jaxdiff.samplers.pc import pc_sampler

__all__ = ["get_sampler", "register_sampler", "available_samplers", "num_steps_for_nfe",
           "SamplerSpec"]


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """A sampler factory ``factory(sde, score_fn, shape, **options)`` and the options its name
    fixes (an alias such as ``dpm_solver++_2m`` fixes ``order`` and ``method``)."""

    factory: Callable[..., Callable]
    fixed: dict = dataclasses.field(default_factory=dict)


_SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(name: str, factory: Callable[..., Callable], **fixed: Any) -> None:
    """Register ``factory`` under ``name``; ``fixed`` options are set by the name and may not be
    overridden with other values in :func:`get_sampler`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"sampler name must be a non-empty string, got {name!r}")
    params = inspect.signature(factory).parameters
    bad = [k for k in fixed if k not in params]
    if bad:
        raise ValueError(f"{factory.__name__} has no option(s) {bad}")
    _SAMPLERS[name] = SamplerSpec(factory, dict(fixed))


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
      ``sample(params, key) -> (x, nfe)``, jitted.
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


def num_steps_for_nfe(name: str, nfe: int, **options: Any) -> int:
    """The ``num_steps`` that makes sampler ``name`` use at most ``nfe`` score evaluations (for
    comparisons at equal NFE). Not defined for the adaptive samplers (``'ode'``, ``'adaptive'``),
    whose NFE depends on their tolerances.

    ``pc``: ``nfe / (1 + n_corrector_steps)`` with a corrector; DDIM and multistep DPM-Solver++:
    ``nfe`` (minus 1 with ``denoise``); single-step DPM-Solver++: ``nfe // order``; EDM:
    ``(nfe + 1) // 2`` with ``denoise`` (``2 n - 1`` evaluations), ``nfe // 2`` without.
    """
    spec = _spec(name)
    opts = {**options, **spec.fixed}
    factory = spec.factory
    defaults = {k: p.default for k, p in inspect.signature(factory).parameters.items()
                if p.default is not inspect.Parameter.empty}
    get = lambda k: opts.get(k, defaults.get(k))  # noqa: E731
    nfe = int(nfe)
    if factory is pc_sampler:
        per = (1 if get("predictor") else 0) + (get("n_corrector_steps") if get("corrector") else 0)
        steps = nfe // max(per, 1)
    elif factory is ddim_sampler:
        steps = nfe - (1 if get("denoise") else 0)
    elif factory is dpm_solver_pp_sampler:
        avail = nfe - (1 if get("denoise") else 0)
        steps = avail if get("method") == "multistep" else avail // get("order")
    elif factory is edm_sampler:
        steps = (nfe + 1) // 2 if get("denoise") else nfe // 2
    else:
        raise ValueError(f"sampler {name!r} has no fixed step count (its NFE is adaptive)")
    if steps < 1:
        raise ValueError(f"nfe={nfe} is too small for sampler {name!r} with options {options}")
    return steps


register_sampler("pc", pc_sampler)
register_sampler("euler_maruyama", pc_sampler, predictor="euler_maruyama", corrector=None)
register_sampler("ode", ode_sampler)
register_sampler("ddim", ddim_sampler)
register_sampler("dpm_solver++", dpm_solver_pp_sampler)
for _order in (2, 3):
    register_sampler(f"dpm_solver++_{_order}m", dpm_solver_pp_sampler, order=_order,
                     method="multistep")
    register_sampler(f"dpm_solver++_{_order}s", dpm_solver_pp_sampler, order=_order,
                     method="singlestep")
register_sampler("edm", edm_sampler)
register_sampler("edm_heun", edm_sampler)
register_sampler("adaptive", adaptive_sde_sampler)
register_sampler("gotta_go_fast", adaptive_sde_sampler)
del _order
