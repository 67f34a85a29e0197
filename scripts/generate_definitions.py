#!/usr/bin/env python3
"""Generate the compact R4 definition tables in ``fhir_server/definitions/data``.

Source: the official FHIR R4 (4.0.1) package ``hl7.fhir.r4.examples`` (CC0), fetched
with ``npm pack`` into ``.cache/`` unless ``--package DIR`` points at an extracted copy
(the directory holding ``package.json``).

Outputs (all gzip-compressed, deterministic JSON):

* ``types.json.gz`` -- the base (``specialization``) StructureDefinitions of every
  resource, complex type and primitive type, reduced to an element table per type,
  plus a de-duplicated table of constraints the elements point into;
* ``valuesets.json.gz`` -- expansions of every value set used by a *required*
  binding in those definitions, or the reason it cannot be checked locally;
* ``search-parameters.json.gz`` -- every SearchParameter, trimmed for a search engine;
* ``compartments.json.gz`` -- the five base CompartmentDefinitions;
* ``profiles.json.gz`` -- the profiles and extension definitions of the core package
  (``derivation = constraint``) as differentials, trimmed to what validation and
  snapshot generation use (the snapshots are generated again from them);
* ``displays.json.gz`` -- the display of every concept of the package's complete
  CodeSystems, by code system URL and code (displays only: no designations,
  definitions or properties), for checking ``Coding.display``;

and ``tests/data/r4-examples.ndjson.gz``: every example instance in the package that
is not a conformance/terminology artifact (nor a Bundle made only of such artifacts),
one resource per line, numbers kept as written.

Run ``python scripts/generate_definitions.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fhir_server import jsonio  # noqa: E402

PACKAGE_NAME = "hl7.fhir.r4.examples"
PACKAGE_VERSION = "4.0.1"
FHIR_SD = "http://hl7.org/fhir/StructureDefinition/"
FHIRPATH_SYSTEM = "http://hl7.org/fhirpath/System."
SYSTEM_TYPES = {
    "String": "string",
    "Boolean": "boolean",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
}
EXT_FHIR_TYPE = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
EXT_REGEX = "http://hl7.org/fhir/StructureDefinition/regex"
EXT_BEST_PRACTICE = "http://hl7.org/fhir/StructureDefinition/elementdefinition-bestpractice"

# Resource types that are definitions/conformance or terminology artifacts: they are
# the source of the tables above, not example instances.
NOT_EXAMPLES = frozenset(
    {
        "StructureDefinition",
        "SearchParameter",
        "ValueSet",
        "CodeSystem",
        "ConceptMap",
        "OperationDefinition",
        "CompartmentDefinition",
        "CapabilityStatement",
        "NamingSystem",
        "ImplementationGuide",
        "StructureMap",
    }
)
COMPARTMENTS = ("Patient", "Encounter", "RelatedPerson", "Practitioner", "Device")
SEARCH_PARAMETER_KEYS = (
    "id",
    "url",
    "name",
    "code",
    "base",
    "type",
    "description",
    "expression",
    "xpathUsage",
    "target",
    "modifier",
    "comparator",
    "multipleOr",
    "multipleAnd",
    "chain",
    "component",
)


# --------------------------------------------------------------------------- package


def fetch_package(cache: Path) -> Path:
    """``npm pack`` the package into *cache* and extract it; return the package dir."""
    target = cache / f"{PACKAGE_NAME}-{PACKAGE_VERSION}"
    package_dir = target / "package"
    if (package_dir / "package.json").is_file():
        return package_dir
    cache.mkdir(parents=True, exist_ok=True)
    tgz = cache / f"{PACKAGE_NAME}-{PACKAGE_VERSION}.tgz"
    if not tgz.is_file():
        print(f"npm pack {PACKAGE_NAME}@{PACKAGE_VERSION} ...", file=sys.stderr)
        subprocess.run(
            ["npm", "pack", f"{PACKAGE_NAME}@{PACKAGE_VERSION}", "--silent"],
            cwd=cache,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    partial = cache / (target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(tgz, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and _safe_member(m.name)]
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
            tar.extractall(partial, members=members, filter="data")
        else:  # members were vetted by _safe_member
            tar.extractall(partial, members=members)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # complete extractions only
    return package_dir


def _safe_member(name: str) -> bool:
    parts = Path(name).parts
    return (
        bool(parts) and parts[0] == "package" and ".." not in parts and not Path(name).is_absolute()
    )


def read_package(package_dir: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(file name, original text, parsed JSON) for every resource file, sorted by name."""
    out = []
    for path in sorted(package_dir.glob("*.json")):
        if path.name in ("package.json", ".index.json"):
            continue
        text = path.read_text(encoding="utf-8-sig")
        data = json.loads(text)
        if isinstance(data, dict) and "resourceType" in data:
            out.append((path.name, text, data))
    return out


# --------------------------------------------------------------------------- types


class ConstraintTable:
    """De-duplicated constraints; elements refer to them by index."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._index: dict[str, int] = {}

    def add(self, constraint: dict[str, Any]) -> int:
        row: dict[str, Any] = {
            "key": constraint["key"],
            "severity": constraint.get("severity", "error"),
            "human": constraint.get("human", ""),
        }
        if "expression" in constraint:
            row["expression"] = constraint["expression"]
        if "source" in constraint:
            row["source"] = constraint["source"]
        if any(
            e.get("url") == EXT_BEST_PRACTICE and e.get("valueBoolean")
            for e in constraint.get("extension", ())
        ):
            row["bestPractice"] = True
        key = json.dumps(row, sort_keys=True)
        idx = self._index.get(key)
        if idx is None:
            idx = self._index[key] = len(self.rows)
            self.rows.append(row)
        return idx


def _type_code(element: dict[str, Any], t: dict[str, Any], type_name: str) -> str:
    code: str = t["code"]
    if code.startswith(FHIRPATH_SYSTEM):
        # The FHIRPath system type a primitive is implemented with; the FHIR type is
        # in an extension (xhtml.id has none: it is a plain string).
        fhir_type = next(
            (x["valueUrl"] for x in t.get("extension", ()) if x.get("url") == EXT_FHIR_TYPE),
            None,
        )
        code = fhir_type or SYSTEM_TYPES[code.removeprefix(FHIRPATH_SYSTEM)]
    # Resource.id is of type id (resource.html), although the snapshot lists the
    # System.String it is implemented with.
    if (
        element.get("base", {}).get("path") == "Resource.id"
        and element["path"] == f"{type_name}.id"
    ):
        code = "id"
    return code


def convert_structure(sd: dict[str, Any], constraints: ConstraintTable) -> dict[str, Any]:
    name = sd["type"]
    out: dict[str, Any] = {
        "kind": sd["kind"],
        "url": sd["url"],
        "abstract": bool(sd.get("abstract")),
    }
    base = sd.get("baseDefinition")
    if base:
        out["base"] = base.removeprefix(FHIR_SD)
    elements = []
    for e in sd["snapshot"]["element"]:
        row: dict[str, Any] = {"path": e["path"], "min": e.get("min", 0), "max": e.get("max", "*")}
        types = []
        for t in e.get("type", ()):
            tr: dict[str, Any] = {"code": _type_code(e, t, name)}
            if t.get("targetProfile"):
                tr["targetProfile"] = list(t["targetProfile"])
            if t.get("profile"):
                tr["profile"] = list(t["profile"])
            for ext in t.get("extension", ()):
                if ext.get("url") == EXT_REGEX:
                    out["regex"] = ext["valueString"]
            types.append(tr)
        if types:
            row["types"] = types
        if "contentReference" in e:
            row["contentReference"] = e["contentReference"]
        b = e.get("binding")
        if b:
            binding = {"strength": b["strength"]}
            if b.get("valueSet"):
                binding["valueSet"] = b["valueSet"]
            row["binding"] = binding
        if e.get("isSummary"):
            row["isSummary"] = True
        if e.get("isModifier"):
            row["isModifier"] = True
        cs = [constraints.add(c) for c in e.get("constraint", ())]
        if cs:
            row["constraints"] = cs
        elements.append(row)
    out["elements"] = elements
    if name == "xhtml":
        out.pop("regex", None)
    return out


def build_types(
    resources: list[dict[str, Any]],
) -> tuple[dict[str, Any], list[str]]:
    constraints = ConstraintTable()
    types: dict[str, Any] = {}
    for sd in resources:
        if sd["resourceType"] != "StructureDefinition":
            continue
        if sd.get("kind") not in ("resource", "complex-type", "primitive-type"):
            continue
        if sd.get("derivation") == "constraint":
            continue  # profiles (incl. extensions) are not base definitions
        if sd["url"] != FHIR_SD + sd["type"]:
            continue
        types[sd["type"]] = convert_structure(sd, constraints)
    resource_types = sorted(
        n for n, t in types.items() if t["kind"] == "resource" and not t["abstract"]
    )
    data = {
        "fhirVersion": PACKAGE_VERSION,
        "constraints": constraints.rows,
        "types": dict(sorted(types.items())),
        "resourceTypes": resource_types,
    }
    return data, resource_types


# --------------------------------------------------------------------------- value sets


class NotCheckable(Exception):
    pass


class Expander:
    def __init__(self, resources: list[dict[str, Any]]) -> None:
        self.value_sets: dict[str, dict[str, Any]] = {}
        self.code_systems: dict[str, dict[str, Any]] = {}
        for r in resources:
            if r["resourceType"] == "ValueSet":
                self.value_sets.setdefault(r["url"], r)
            elif r["resourceType"] == "CodeSystem":
                self.code_systems.setdefault(r["url"], r)
        self._cache: dict[str, dict[str, set[str]]] = {}

    # -- code systems

    def _code_system(self, system: str) -> dict[str, Any]:
        cs = self.code_systems.get(system)
        if cs is None:
            raise NotCheckable(f"code system {system} is not defined in the package")
        if cs.get("content") != "complete":
            raise NotCheckable(f"code system {system} content is '{cs.get('content')}'")
        return cs

    @staticmethod
    def _walk(
        concepts: Iterable[dict[str, Any]], parent: str | None = None
    ) -> Iterator[tuple[dict[str, Any], str | None]]:
        for c in concepts:
            yield c, parent
            yield from Expander._walk(c.get("concept", ()), c["code"])

    def _all_codes(self, system: str) -> set[str]:
        cs = self._code_system(system)
        return {c["code"] for c, _ in self._walk(cs.get("concept", ()))}

    def _descendants(self, system: str, code: str, include_self: bool) -> set[str]:
        cs = self._code_system(system)
        children: dict[str, set[str]] = {}
        for c, parent in self._walk(cs.get("concept", ())):
            if parent is not None:
                children.setdefault(parent, set()).add(c["code"])
            for prop in c.get("property", ()):
                if prop.get("code") in ("subsumedBy", "parent") and "valueCode" in prop:
                    children.setdefault(prop["valueCode"], set()).add(c["code"])
        out: set[str] = set()
        todo = [code]
        while todo:
            cur = todo.pop()
            for child in children.get(cur, ()):
                if child not in out:
                    out.add(child)
                    todo.append(child)
        if include_self:
            out.add(code)
        return out

    def _filter(self, system: str, flt: dict[str, Any]) -> set[str]:
        op, prop, value = flt.get("op"), flt.get("property"), flt.get("value", "")
        if op == "is-a" and prop == "concept":
            return self._descendants(system, value, True)
        if op == "descendent-of" and prop == "concept":
            return self._descendants(system, value, False)
        if op == "is-not-a" and prop == "concept":
            return self._all_codes(system) - self._descendants(system, value, True)
        if op == "in" and prop == "concept":
            return set(value.split(","))
        if op in ("=", "in"):
            wanted = set(value.split(",")) if op == "in" else {value}
            cs = self._code_system(system)
            out = set()
            for c, _ in self._walk(cs.get("concept", ())):
                for p in c.get("property", ()):
                    if p.get("code") == prop:
                        v = next((str(x) for k, x in p.items() if k.startswith("value")), None)
                        if v in wanted:
                            out.add(c["code"])
            return out
        raise NotCheckable(f"filter {prop} {op} {value} on {system} is not supported")

    # -- value sets

    def expand(self, url: str, stack: tuple[str, ...] = ()) -> dict[str, set[str]]:
        url = url.split("|", 1)[0]
        if url in self._cache:
            return self._cache[url]
        if url in stack:
            raise NotCheckable(f"value set {url} includes itself")
        vs = self.value_sets.get(url)
        if vs is None:
            raise NotCheckable(f"value set {url} is not defined in the package")
        compose = vs.get("compose")
        if not compose:
            raise NotCheckable(f"value set {url} has no compose")
        result: dict[str, set[str]] = {}
        for inc in compose.get("include", ()):
            for system, codes in self._include(inc, (*stack, url)).items():
                result.setdefault(system, set()).update(codes)
        for exc in compose.get("exclude", ()):
            for system, codes in self._include(exc, (*stack, url)).items():
                if system in result:
                    result[system] -= codes
        result = {s: c for s, c in result.items() if c}
        self._cache[url] = result
        return result

    def _include(self, inc: dict[str, Any], stack: tuple[str, ...]) -> dict[str, set[str]]:
        part: dict[str, set[str]] | None = None
        system = inc.get("system")
        if system:
            if inc.get("concept"):
                codes = {c["code"] for c in inc["concept"]}
            else:
                codes = self._all_codes(system)
            for flt in inc.get("filter", ()):
                codes &= self._filter(system, flt)
            part = {system: codes}
        for vs_url in inc.get("valueSet", ()):
            other = self.expand(vs_url, stack)
            if part is None:
                part = {s: set(c) for s, c in other.items()}
            else:
                part = {s: c & other.get(s, set()) for s, c in part.items()}
        return part or {}


def required_value_sets(types: dict[str, Any]) -> list[str]:
    urls = set()
    for t in types["types"].values():
        for e in t["elements"]:
            b = e.get("binding")
            if b and b["strength"] == "required" and b.get("valueSet"):
                urls.add(b["valueSet"].split("|", 1)[0])
    return sorted(urls)


def build_value_sets(resources: list[dict[str, Any]], urls: list[str]) -> dict[str, Any]:
    expander = Expander(resources)
    out: dict[str, Any] = {}
    for url in urls:
        vs = expander.value_sets.get(url, {})
        entry: dict[str, Any] = {}
        if vs.get("version"):
            entry["version"] = vs["version"]
        try:
            codes = expander.expand(url)
            entry["codes"] = {s: sorted(c) for s, c in sorted(codes.items())}
        except NotCheckable as exc:
            entry["notCheckable"] = str(exc)
        out[url] = entry
    return {"fhirVersion": PACKAGE_VERSION, "valueSets": out}


# --------------------------------------------------------------------------- search, compartments


def build_search_parameters(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in resources:
        if r["resourceType"] != "SearchParameter":
            continue
        out.append({k: r[k] for k in SEARCH_PARAMETER_KEYS if k in r})
    out.sort(key=lambda p: (p.get("url", ""), p.get("id", "")))
    return out


def build_compartments(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in resources:
        if r["resourceType"] != "CompartmentDefinition":
            continue
        code = r.get("code", "")
        if code not in COMPARTMENTS:
            continue
        # the base definitions, not the package's example CompartmentDefinition
        if r.get("url") != f"http://hl7.org/fhir/CompartmentDefinition/{code[0].lower()}{code[1:]}":
            continue
        out.append({k: r[k] for k in ("id", "url", "name", "code", "search", "resource") if k in r})
    out.sort(key=lambda c: COMPARTMENTS.index(c["code"]))
    return out


# --------------------------------------------------------------------------- displays


def build_displays(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """``{system: {code: display}}`` of every complete CodeSystem (the first one of a
    URL, as for expansions); concepts without a display are left out."""
    systems: dict[str, dict[str, str]] = {}
    for cs in resources:
        if cs["resourceType"] != "CodeSystem" or cs.get("content") != "complete":
            continue
        url = cs.get("url")
        if not isinstance(url, str) or url in systems:
            continue
        displays = {
            str(c["code"]): c["display"]
            for c, _ in Expander._walk(cs.get("concept", ()))
            if isinstance(c.get("display"), str)
        }
        systems[url] = dict(sorted(displays.items()))
    return {"fhirVersion": PACKAGE_VERSION, "codeSystems": dict(sorted(systems.items()))}


# --------------------------------------------------------------------------- profiles

PROFILE_KEYS = (
    "url",
    "version",
    "name",
    "type",
    "kind",
    "abstract",
    "baseDefinition",
    "derivation",
    "context",
    "contextInvariant",
)
# ElementDefinition properties validation and snapshot generation read.
ELEMENT_KEYS = (
    "id",
    "path",
    "sliceName",
    "slicing",
    "min",
    "max",
    "type",
    "contentReference",
    "binding",
    "constraint",
    "maxLength",
    "mustSupport",
    "isModifier",
)
ELEMENT_VALUE_PREFIXES = ("fixed", "pattern", "minValue", "maxValue")


def _trim_element(e: dict[str, Any]) -> dict[str, Any]:
    out = {k: e[k] for k in ELEMENT_KEYS if k in e}
    out.update({k: v for k, v in e.items() if k.startswith(ELEMENT_VALUE_PREFIXES)})
    if "binding" in out:
        out["binding"] = {k: v for k, v in out["binding"].items() if k in ("strength", "valueSet")}
    if "constraint" in out:
        keep = ("key", "severity", "human", "expression", "source")
        out["constraint"] = [{k: c[k] for k in keep if k in c} for c in out["constraint"]]
    if "slicing" in out:
        out["slicing"] = {k: v for k, v in out["slicing"].items() if k != "description"}
    return out


def build_profiles(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Core profiles and extension definitions, as trimmed differentials."""
    out = []
    for sd in resources:
        if sd["resourceType"] != "StructureDefinition" or sd.get("derivation") != "constraint":
            continue
        row = {k: sd[k] for k in PROFILE_KEYS if k in sd}
        row["resourceType"] = "StructureDefinition"
        elements = (sd.get("differential") or {}).get("element") or []
        row["differential"] = {"element": [_trim_element(e) for e in elements]}
        out.append(row)
    out.sort(key=lambda r: str(r["url"]))
    return out


# --------------------------------------------------------------------------- output


def write_json_gz(path: Path, data: Any) -> int:
    raw = json.dumps(data, ensure_ascii=False, sort_keys=False, separators=(",", ":"))
    blob = gzip.compress(raw.encode("utf-8"), compresslevel=9, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return len(blob)


def is_definition_artifact(resource: dict[str, Any]) -> bool:
    """Conformance/terminology resources, and Bundles made only of them (the spec's
    distribution bundles such as ``Bundle/resources`` or ``Bundle/valuesets``)."""
    rt = resource.get("resourceType")
    if rt in NOT_EXAMPLES:
        return True
    if rt == "Bundle":
        types = {e.get("resource", {}).get("resourceType") for e in resource.get("entry", ())}
        return bool(types) and types <= NOT_EXAMPLES
    return False


def write_examples(path: Path, files: list[tuple[str, str, dict[str, Any]]]) -> tuple[int, int]:
    lines = []
    for _name, text, data in files:
        if is_definition_artifact(data):
            continue
        lines.append(jsonio.dumps(jsonio.loads(text)))
    blob = gzip.compress(b"\n".join(lines) + b"\n", compresslevel=9, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return len(lines), len(blob)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package", type=Path, help="extracted package directory (with package.json)")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache", help="download cache")
    ap.add_argument("--out", type=Path, default=ROOT / "fhir_server" / "definitions" / "data")
    ap.add_argument(
        "--examples", type=Path, default=ROOT / "tests" / "data" / "r4-examples.ndjson.gz"
    )
    args = ap.parse_args(argv)

    package_dir: Path = args.package or fetch_package(args.cache)
    manifest = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
    if manifest.get("name") != PACKAGE_NAME or manifest.get("version") != PACKAGE_VERSION:
        ap.error(f"{package_dir} is not {PACKAGE_NAME}@{PACKAGE_VERSION}")
    files = read_package(package_dir)
    resources = [d for _, _, d in files]

    types, resource_types = build_types(resources)
    sizes = {
        "types.json.gz": write_json_gz(args.out / "types.json.gz", types),
    }
    value_sets = build_value_sets(resources, required_value_sets(types))
    sizes["valuesets.json.gz"] = write_json_gz(args.out / "valuesets.json.gz", value_sets)
    sizes["search-parameters.json.gz"] = write_json_gz(
        args.out / "search-parameters.json.gz", build_search_parameters(resources)
    )
    sizes["compartments.json.gz"] = write_json_gz(
        args.out / "compartments.json.gz", build_compartments(resources)
    )
    sizes["profiles.json.gz"] = write_json_gz(
        args.out / "profiles.json.gz", build_profiles(resources)
    )
    displays = build_displays(resources)
    sizes["displays.json.gz"] = write_json_gz(args.out / "displays.json.gz", displays)
    n_examples, ex_size = write_examples(args.examples, files)

    for name, size in sizes.items():
        print(f"{name}: {size:,} bytes")
    unchecked = {
        u: v["notCheckable"] for u, v in value_sets["valueSets"].items() if "notCheckable" in v
    }
    print(
        f"{len(types['types'])} types ({len(resource_types)} concrete resource types), "
        f"{len(value_sets['valueSets'])} required value sets ({len(unchecked)} not checkable)"
    )
    for url, why in unchecked.items():
        print(f"  not checkable: {url}: {why}")
    print(
        f"displays: {len(displays['codeSystems'])} code systems, "
        f"{sum(len(d) for d in displays['codeSystems'].values()):,} concepts"
    )
    print(f"examples: {n_examples} resources, {ex_size:,} bytes -> {args.examples.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
