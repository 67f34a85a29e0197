"""The search engine core (FHIR R4 search, https://hl7.org/fhir/R4/search.html).

Pipeline: :mod:`.registry` (parameters from the official definitions, plus custom
SearchParameters) -> :mod:`.extract` (typed index entries at write time, via the fast
path walker in :mod:`.paths` or the FHIRPath engine; full-text words by
:mod:`.fulltext`) -> :mod:`.parser` (query pairs -> the store-independent IR in
:mod:`.query`) -> a store's translation (SQLite:
``fhir_server.storage.sqlite.search_index``; MongoDB:
``fhir_server.storage.mongodb.query``) -> ``fhir_server.interactions.search`` (the
searchset Bundle).

Supported
---------
Parameter types
    string, token, reference, date, number, quantity, uri, composite; ``_id``,
    ``_lastUpdated``, ``_tag``, ``_profile``, ``_security``, ``_source`` and every other
    parameter of the R4 definitions that has an expression, and ``_text``/``_content``
    (below); ``_query``, ``_filter``, ``_list`` are not supported.
Full text (:mod:`.fulltext`)
    ``_text`` searches the narrative (``text.div`` without its markup), ``_content``
    every string value of the resource. Texts and values are cut into words (runs of
    letters and digits, lower-cased, accents removed); a value matches when each of its
    words starts some word of the text, in any order (``_content=diab mell`` finds
    "Diabetes mellitus"). Commas OR, repeated parameters AND; no phrase, boolean or
    fuzzy syntax, no modifiers. Indexed at write time (SQLite: an FTS5 table; MongoDB:
    two word strings matched by anchored regular expressions): resources stored before
    full-text indexing are found once rewritten (SQLite: ``search_index.reindex``).
Values
    comma = OR, repeated parameter = AND, escapes ``\\,`` ``\\$`` ``\\|`` ``\\\\``;
    token ``code``, ``system|code``, ``|code``, ``system|`` (a ``code`` element's
    system is the one its required binding implies, e.g. ``gender=http://hl7.org/fhir/
    administrative-gender|male``); reference ``Type/id``, ``Type/id/_history/v``,
    ``id``, absolute URL (one on this server's base is local -- known to the search
    interaction, not to conditional interactions), canonical ``url|version``;
    quantity ``[prefix]number|system|code`` and ``number||code`` (code or unit);
    composite ``a$b``. Contained resources are searched as part of their container
    only by ``_content``: ``_contained`` accepts only ``false`` (the default) and
    ``_containedType`` only ``container``; ``_contained=true|both`` is not supported.
Prefixes
    ``eq ne gt lt ge le sa eb ap`` on date (ranges from the precision, as the spec
    defines; ``ap``: widened by 10% of the distance to now), number and quantity
    (``eq 100`` is ``[99.5, 100.5)``; ``ap`` is +-10%; a Range value matches ``eq``
    when it overlaps). ``ne`` matches a resource having some value that is not equal.
Modifiers
    ``:missing`` (all), ``:exact`` ``:contains`` (string), ``:not`` ``:text``
    ``:of-type`` (token), ``:in`` ``:not-in`` (token; value sets the local terminology
    can expand), ``:above`` ``:below`` (token: ``system|code`` in a code system the
    local terminology knows, by its hierarchy; uri: by path), ``:[type]``
    ``:identifier`` (reference). Not supported: unit conversion of quantities (UCUM).
Custom parameters
    ``fhir_server.storage.sqlite.search_index.register_search_parameter`` adds a
    SearchParameter resource to the registry and indexes the existing resources of its
    base types for it (only that parameter's rows).
Query planning (SQLite)
    each single-condition clause is counted on its index (up to 4,000 rows) before the
    search; the most selective drives, the others are checked per candidate on the
    ``(rid, param)`` index; when all are broad, a page without ``_sort`` walks the
    type in rid order and stops at the page's end.
Chaining and reverse chaining
    ``subject:Patient.name=x``, multi-level ``a.b.c=x`` (up to 4 levels), ``_has``
    (nested).
Results
    ``_sort`` (several keys, ``-`` for descending; missing values last), ``_count``
    (default 20, max 1000, 0 = total only), ``_total`` (``accurate`` by default;
    ``estimate`` is accurate too; ``none``), keyset paging with an opaque ``_cursor``
    (``next``/``previous`` links), ``_include``/``_revinclude`` (``:iterate``, ``*``,
    target type), ``_summary`` (true, text, data, count, false), ``_elements``,
    system-level search with ``_type``, compartment search.
Errors
    lenient by default: unknown/unsupported/invalid parameters are ignored, left out of
    the ``self`` link and reported in an OperationOutcome entry; strict
    (``Prefer: handling=strict``): a 400 naming them. Conditional interactions use
    strict parsing.
Default order
    without ``_sort``: order of creation (stable under updates). Keyset paging never
    repeats or skips a resource whose sort keys did not change between pages, whatever
    is created, updated or deleted meanwhile (``tests/search/test_paging_concurrency``).
Extraction cost
    about 100 us for a Patient and 150-250 us for an Observation (its 48 parameters,
    8 of them composite), 80 us on average over the R4 examples (CPython 3.11).
"""
