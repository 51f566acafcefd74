"""Quanto's search attributes (registered on the server; see temporal-config/search-attributes.env)."""

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

KIND = SearchAttributeKey.for_keyword("QuantoKind")
CONFIG = SearchAttributeKey.for_keyword("QuantoConfig")
STAGE = SearchAttributeKey.for_keyword("QuantoStage")
ACCOUNT = SearchAttributeKey.for_keyword("QuantoAccount")
MODE = SearchAttributeKey.for_keyword("QuantoMode")


def run_attributes(kind: str, config: str) -> TypedSearchAttributes:
    """QuantoKind and QuantoConfig of a run, set when it starts (the UI can filter on them at once)."""
    return TypedSearchAttributes([SearchAttributePair(KIND, kind), SearchAttributePair(CONFIG, config)])


def trading_attributes(account: str, mode: str) -> list:
    """QuantoAccount and QuantoMode of a trading day, upserted when it starts (filter runs by account)."""
    return [ACCOUNT.value_set(account), MODE.value_set(mode)]
