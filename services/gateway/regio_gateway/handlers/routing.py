"""From a model name and the endpoint's region to a route and the caller's activation."""

from __future__ import annotations

from regio_common.catalogue import Catalogue, Route
from regio_common.config_records import ActivationRecord, ApiKeyRecord
from regio_common.errors import ModelNotFound, RegionMismatch
from regio_gateway.config_store import ConfigStore


def resolve_activation(
    catalogue: Catalogue,
    config: ConfigStore,
    account_id: str,
    model: str,
    region: str,
    key: ApiKeyRecord | None = None,
) -> tuple[Route, ActivationRecord]:
    """A key scoped to some activations sees the others as if they were not activated."""
    route = catalogue.route_for_model(model)
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
