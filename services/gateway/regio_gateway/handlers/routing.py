"""From a model name and the endpoint's region to a route and the caller's activation."""

from __future__ import annotations

from regio_common.catalogue import Catalogue, Route
from regio_common.config_records import ActivationRecord
from regio_common.errors import ModelNotFound, RegionMismatch
from regio_gateway.config_store import ConfigStore


def resolve_activation(
    catalogue: Catalogue, config: ConfigStore, account_id: str, model: str, region: str
) -> tuple[Route, ActivationRecord]:
    route = catalogue.route_for_model(model)
    if route is None:
        raise ModelNotFound(f"The model '{model}' does not exist.", param="model")
    activation = config.activation(account_id, route.name, region)
    if activation is not None:
        return route, activation
    elsewhere = sorted(a.region for a in config.activations_of(account_id) if a.route == route.name)
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
