"""A subset of the API suite on the MongoDB store: the REST interactions, bundles
(transactions), conditional interactions and concurrent ``If-Match``/conditional
creates, with the ``store`` fixture replaced by a MongoDB store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fhir_server.storage.port import Store
from tests.api.test_bundles import (
    test_batch_entries_are_independent,
    test_transaction_is_all_or_nothing,
    test_transaction_processing_order,
    test_transaction_rejects_same_resource_twice,
    test_transaction_resolves_urn_uuid_references,
    test_transaction_unresolvable_reference,
)
from tests.api.test_concurrency import (
    test_concurrent_conditional_creates_make_one_resource,
    test_same_if_match_exactly_one_update_wins,
)
from tests.api.test_conditional import (
    test_conditional_create,
    test_conditional_delete,
    test_conditional_update,
    test_search_compartment_and_chain,
    test_transaction_conditional_reference,
)
from tests.api.test_rest import (
    test_create_assigns_id_and_meta_and_headers,
    test_delete_then_read_is_gone_and_history_keeps_it,
    test_history_levels_and_paging,
    test_if_match,
    test_patch_json_and_fhirpath,
    test_read_vread_and_lossless_round_trip,
    test_update_versions_and_update_as_create,
)
from tests.storage import mongo_support
from tests.storage.mongo_support import mongodb_uri

REUSED = (
    mongodb_uri,
    test_batch_entries_are_independent,
    test_concurrent_conditional_creates_make_one_resource,
    test_conditional_create,
    test_conditional_delete,
    test_conditional_update,
    test_create_assigns_id_and_meta_and_headers,
    test_delete_then_read_is_gone_and_history_keeps_it,
    test_history_levels_and_paging,
    test_if_match,
    test_patch_json_and_fhirpath,
    test_read_vread_and_lossless_round_trip,
    test_same_if_match_exactly_one_update_wins,
    test_search_compartment_and_chain,
    test_transaction_conditional_reference,
    test_transaction_is_all_or_nothing,
    test_transaction_processing_order,
    test_transaction_rejects_same_resource_twice,
    test_transaction_resolves_urn_uuid_references,
    test_transaction_unresolvable_reference,
    test_update_versions_and_update_as_create,
)


@pytest.fixture
async def store(mongodb_uri: str) -> AsyncIterator[Store]:
    s = mongo_support.make_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()
