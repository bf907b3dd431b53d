"""From a model name and the endpoint's region to a route and the caller's activation."""

from __future__ import annotations

from regio_common.catalogue import Catalogue, Route
from regio_common.config_records import ActivationRecord, ApiKeyRecord
from regio_common.errors import ModelNotFound, RegionMismatch
from regio_gateway.config_store import ConfigStore
from regio_gateway.protocol.reasoning import SuffixEffort, split_effort_suffix


def route_and_suffix(catalogue: Catalogue, model: str) -> tuple[Route | None, SuffixEffort | None]:
    """The route a model name names, and its effort suffix. A name that names a route as it is
    keeps its colon (an alias may contain one); otherwise a known suffix is split off."""
    route = catalogue.route_for_model(model)
    if route is not None:
        return route, None
    base, suffix = split_effort_suffix(model)
    if suffix is None:
        return None, None
    return catalogue.route_for_model(base), suffix


def resolve_activation(
    catalogue: Catalogue,
    config: ConfigStore,
    account_id: str,
    model: str,
    region: str,
    key: ApiKeyRecord | None = None,
) -> tuple[Route, ActivationRecord]:
    """A key scoped to some activations sees the others as if they were not activated. A
    reasoning-effort suffix of the name is ignored here (see `route_and_suffix`)."""
    route, _ = route_and_suffix(catalogue, model)
    if route is None:
        raise ModelNotFound(f"The model '{model}' does not exist.", param="model")
    usable = key.may_use if key is not None else lambda route, region: True
    activation = config.activation(account_id, route.name, region)
    if activation is not None and usable(route.name, region):
        return route, activation
    elsewhere = sorted(
        a.region
        for a in config.activations_of(account_id)
        if a.route == route.name and usable(a.route, a.region)
    )
    if elsewhere:
        raise RegionMismatch(
            f"The model '{model}' is not available in region '{region}'; your activation "
            f"serves region(s): {', '.join(elsewhere)}. Call that region's endpoint.",
            param="model",
        )
    raise ModelNotFound(
        f"The model '{model}' does not exist or is not activated for your account.",
        param="model",
    )
