"""SMART on FHIR authorization (App Launch 2.x): scopes and permissions (``scopes``),
signed tokens and key rotation (``tokens``), registered clients (``clients``), the
authorization server's routes (``server``), the CapabilityStatement security block
(``capability``), per-request access control (``access``) and settings (``config``)."""
