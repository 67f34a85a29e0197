"""The search suite (``tests/search/test_sqlite_search.py``) on the MongoDB store.

The same tests, with the ``store`` fixture replaced by a MongoDB store; left out: the
test that reads SQLite's query plans.
"""

from __future__ import annotations

from tests.search.test_sqlite_search import (
    loaded,
    test_a_custom_search_parameter,
    test_a_hostile_value_is_found_as_a_plain_string,
    test_a_tampered_cursor_is_a_bad_request,
    test_count_and_total,
    test_hostile_parameter_names_are_rejected,
    test_hostile_values_are_bound_not_injected,
    test_include_and_revinclude,
    test_keyset_paging_matches_a_single_page,
    test_number_uri_and_has,
    test_observation_searches,
    test_paging_stays_correct_while_data_changes,
    test_patient_searches,
    test_references_with_this_servers_base_are_local,
    test_searchset_bundle,
    test_sorting_on_several_keys_with_missing_values_last,
    test_strict_bundle_search_rejects,
    test_summary_and_elements,
    test_system_and_compartment_search,
    test_updates_and_deletes_keep_the_index_current,
)
from tests.storage.mongo_support import mongodb_uri, store

REUSED = (
    loaded,
    mongodb_uri,
    store,
    test_a_custom_search_parameter,
    test_a_hostile_value_is_found_as_a_plain_string,
    test_a_tampered_cursor_is_a_bad_request,
    test_count_and_total,
    test_hostile_parameter_names_are_rejected,
    test_hostile_values_are_bound_not_injected,
    test_include_and_revinclude,
    test_keyset_paging_matches_a_single_page,
    test_number_uri_and_has,
    test_observation_searches,
    test_paging_stays_correct_while_data_changes,
    test_patient_searches,
    test_references_with_this_servers_base_are_local,
    test_searchset_bundle,
    test_sorting_on_several_keys_with_missing_values_last,
    test_strict_bundle_search_rejects,
    test_summary_and_elements,
    test_system_and_compartment_search,
    test_updates_and_deletes_keep_the_index_current,
)
