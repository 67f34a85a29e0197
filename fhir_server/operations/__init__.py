"""Operations declared as data (see ``registry``); importing a module registers its
operations. One import per module that declares operations."""

from fhir_server.operations import (
    claims,  # noqa: F401
    everything,  # noqa: F401
    export,  # noqa: F401
    terminology,  # noqa: F401
    validate,  # noqa: F401
)
