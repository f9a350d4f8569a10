"""Job identities of the laws branch: the settings each job's output depends on (the rules fingerprint
these). Pure functions of the config, importing nothing heavy."""

from __future__ import annotations


def fit_settings(cfg: dict) -> dict:
    """fit_laws: the fitting settings; the rank-stability simulation's are not read by the fits."""
    return {k: v for k, v in cfg["laws"].items() if k != "rank_stability"}


def rank_stability_settings(cfg: dict) -> dict:
    """rank_stability: the simulation's own section."""
    return cfg["laws"]["rank_stability"]


def check(cfg: dict) -> list[str]:
    """The laws study's cross-key errors, each naming its key (registered with repro.config)."""
    rs = (cfg.get("laws") or {}).get("rank_stability") or {}
    if rs and rs.get("primary_optimizer") not in rs.get("optimizers", []):
        return [f"key 'laws.rank_stability.primary_optimizer': {rs.get('primary_optimizer')!r} is not one "
                f"of laws.rank_stability.optimizers {rs.get('optimizers')}"]
    return []
