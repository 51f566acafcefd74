"""Quanto's search attributes (registered on the server; see temporal-config/search-attributes.env)."""

from temporalio.common import SearchAttributeKey

KIND = SearchAttributeKey.for_keyword("QuantoKind")
CONFIG = SearchAttributeKey.for_keyword("QuantoConfig")
STAGE = SearchAttributeKey.for_keyword("QuantoStage")
ACCOUNT = SearchAttributeKey.for_keyword("QuantoAccount")
MODE = SearchAttributeKey.for_keyword("QuantoMode")
