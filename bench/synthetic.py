"""Synthetic outpatient rehab clinic data, deterministic from a seed.

``generate(total, seed)`` yields exactly ``total`` resources in a plausible creation
order: the clinic's Organizations (the clinic and the payers), its Practitioners and
PractitionerRoles, then patients arriving over time, each with a Coverage, one or two
EpisodeOfCare (one per discipline: PT, OT or SLP) with a CarePlan, therapy sessions
(Encounter with ``serviceType`` = discipline, period, subject, participant), the billed
services of each session (Procedure with CPT code, encounter, performer and the
therapy-minutes extension for timed codes) and outcome measures (Observation) at the
evaluation, every fourth visit and discharge.

Proportions (per patient, on average): 1 Patient, 1 Coverage, 1.25 EpisodeOfCare and
CarePlan, 10.7 Encounters, 23 Procedures, 8 Observations -- about 47 resources, so
100,000 resources are ~2,100 patients and 1,000,000 are ~21,000; one therapist (with
one PractitionerRole) per 40 patients; the clinic and 5 payer Organizations. Encounters
are 62% PT, 25% OT, 13% SLP. Patients are generated in cohorts of 64 whose resources are interleaved by
date, so the resources of one patient are spread out in creation order as in a real
clinic rather than stored next to each other.

Identifiers are predictable so benchmarks can pick values: Patient ``pat-{i:07d}``
with MRN ``MRN{i:07d}`` (system :data:`MRN_SYSTEM`), Encounter ``enc-{n:08d}``...

Outputs: :func:`write_ndjson` (one ``<Type>.ndjson[.gz]`` per type, the bulk data
layout) and :func:`load_into_store` (straight into a SqliteStore, many resources per
unit of work). ``scripts/generate_clinic_data.py`` is the command line.
"""

from __future__ import annotations

import gzip
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

BASE = "http://rehabfhir.org/fhir"
DISCIPLINE = f"{BASE}/CodeSystem/therapy-discipline"
ROLE = f"{BASE}/CodeSystem/therapy-practitioner-role"
PERFORMER_FUNCTION = f"{BASE}/CodeSystem/performer-function"
OUTCOME_MEASURE = f"{BASE}/CodeSystem/outcome-measure"
THERAPY_MINUTES = f"{BASE}/StructureDefinition/therapy-minutes"
EPISODE_EXT = "http://hl7.org/fhir/StructureDefinition/workflow-episodeOfCare"
MRN_SYSTEM = f"{BASE}/sid/mrn"
MBI_SYSTEM = "http://hl7.org/fhir/sid/us-mbi"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
CPT = "http://www.ama-assn.org/go/cpt"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

DISCIPLINES = {"PT": "Physical therapy", "OT": "Occupational therapy", "SLP": "Speech-language pathology"}
DISCIPLINE_WEIGHTS = (("PT", 0.62), ("OT", 0.25), ("SLP", 0.13))
ROLES = {"PT": ("PT", "PTA"), "OT": ("OT", "OTA"), "SLP": ("SLP", "SLP")}
ROLE_DISPLAY = {
    "PT": "Physical therapist",
    "PTA": "Physical therapist assistant",
    "OT": "Occupational therapist",
    "OTA": "Occupational therapy assistant",
    "SLP": "Speech-language pathologist",
}
# (code, display, timed minutes per unit or None)
EVALUATIONS = {
    "PT": (("97161", "PT evaluation, low complexity"), ("97162", "PT evaluation, moderate complexity")),
    "OT": (("97165", "OT evaluation, low complexity"), ("97166", "OT evaluation, moderate complexity")),
    "SLP": (("92523", "Speech sound production evaluation with language evaluation"), ("92610", "Clinical swallowing evaluation")),
}
TREATMENTS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "PT": (
        ("97110", "Therapeutic exercise", True),
        ("97140", "Manual therapy techniques", True),
        ("97112", "Neuromuscular reeducation", True),
        ("97116", "Gait training", True),
        ("97530", "Therapeutic activities", True),
        ("97014", "Electrical stimulation, unattended", False),
    ),
    "OT": (
        ("97535", "Self-care/home management training", True),
        ("97530", "Therapeutic activities", True),
        ("97110", "Therapeutic exercise", True),
        ("97140", "Manual therapy techniques", True),
        ("97760", "Orthotic management and training", True),
    ),
    "SLP": (
        ("92507", "Speech, language, voice, communication or auditory treatment, individual", False),
        ("92526", "Swallowing and oral feeding treatment", False),
        ("97129", "Therapeutic interventions for cognitive function, first 15 minutes", True),
    ),
}
# (code, display, unit, low, high, category)
MEASURES = {
    "PT": (
        ("LEFS", "Lower Extremity Functional Scale", "{score}", 10, 80, "survey"),
        ("ODI", "Oswestry Disability Index", "%", 4, 70, "survey"),
        ("TUG", "Timed Up and Go", "s", 6, 30, "exam"),
        ("NPRS", "Numeric pain rating scale", "{score}", 0, 10, "survey"),
    ),
    "OT": (
        ("QUICKDASH", "QuickDASH", "{score}", 5, 90, "survey"),
        ("COPM-P", "Canadian Occupational Performance Measure, performance", "{score}", 1, 10, "survey"),
        ("GRIP", "Grip strength, dynamometer", "kg", 8, 50, "exam"),
    ),
    "SLP": (
        ("EAT-10", "Eating Assessment Tool", "{score}", 0, 40, "survey"),
        ("FOIS", "Functional Oral Intake Scale", "{score}", 1, 7, "exam"),
    ),
}
FAMILY = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Gomez", "Phillips", "Evans", "Turner", "Diaz", "Parker", "Cruz", "Edwards", "Collins", "Reyes", "Stewart", "Morris", "Morales", "Murphy", "Cook", "Rogers", "Gutierrez", "Ortiz", "Morgan", "Cooper", "Peterson", "Bailey", "Reed", "Kelly", "Howard", "Ramos", "Kim", "Cox", "Ward", "Richardson", "Watson", "Brooks", "Chavez", "Wood", "James", "Bennett", "Gray", "Mendoza", "Ruiz", "Hughes", "Price", "Alvarez", "Castillo", "Sanders", "Patel", "Myers", "Long", "Ross", "Foster", "Jimenez", "Powell", "Jenkins", "Perry", "Russell", "Sullivan", "Bell", "Coleman", "Butler", "Henderson", "Barnes", "Gonzales", "Fisher", "Vasquez", "Simmons", "Romero", "Jordan", "Patterson", "Alexander", "Hamilton", "Graham", "Reynolds", "Griffin", "Wallace", "Moreno", "West", "Cole", "Hayes", "Bryant", "Herrera", "Gibson", "Ellis", "Tran", "Medina", "Aguilar", "Stevens", "Murray", "Ford", "Castro", "Marshall", "Owens", "Harrison", "Fernandez", "McDonald", "Woods", "Washington", "Kennedy", "Wells", "Vargas", "Henry", "Chen", "Freeman", "Webb", "Tucker", "Guzman", "Burns", "Crawford", "Olson", "Simpson", "Porter", "Hunter", "Gordon", "Mendez", "Silva", "Shaw", "Snyder", "Mason", "Dixon", "Munoz", "Hunt", "Hicks", "Holmes", "Palmer", "Wagner", "Black", "Robertson", "Boyd", "Rose", "Stone", "Salazar", "Fox", "Warren", "Mills", "Meyer", "Rice", "Schmidt", "Garza", "Daniels", "Ferguson", "Nichols", "Stephens", "Soto", "Weaver", "Ryan", "Gardner", "Payne", "Grant", "Dunn", "Kelley", "Spencer", "Hawkins", "Arnold", "Pierce", "Vazquez", "Hansen", "Peters", "Santos", "Hart", "Bradley", "Knight", "Elliott", "Cunningham", "Duncan", "Armstrong", "Hudson", "Carroll", "Lane", "Riley", "Andrews", "Alvarado", "Ray", "Delgado", "Berry", "Perkins", "Hoffman", "Johnston", "Matthews", "Pena", "Richards", "Contreras", "Willis", "Carpenter", "Lawrence", "Sandoval", "Kowalski", "Lindqvist", "Okafor", "Haddad", "Novak", "Yamamoto", "Rossi", "Dubois", "Moller", "Kaur"]
GIVEN_F = ["Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah", "Karen", "Nancy", "Lisa", "Betty", "Margaret", "Sandra", "Ashley", "Dorothy", "Kimberly", "Emily", "Donna", "Michelle", "Carol", "Amanda", "Melissa", "Deborah", "Stephanie", "Rebecca", "Laura", "Sharon", "Cynthia", "Kathleen", "Amy", "Shirley", "Angela", "Helen", "Anna", "Brenda", "Pamela", "Nicole", "Ruth", "Katherine", "Samantha", "Christine", "Emma", "Catherine", "Debra", "Virginia", "Rachel", "Carolyn", "Janet", "Maria", "Heather", "Diane", "Julie", "Joyce", "Victoria", "Kelly", "Christina", "Joan", "Evelyn", "Lauren", "Judith", "Olivia", "Martha", "Cheryl", "Megan", "Andrea", "Hannah", "Jacqueline", "Ann", "Jean", "Alice", "Kathryn", "Gloria", "Teresa", "Doris", "Sara", "Janice", "Julia", "Marie", "Madison", "Grace", "Judy", "Theresa", "Beverly", "Denise", "Marilyn", "Amber", "Danielle", "Abigail", "Brittany", "Rose", "Diana", "Natalie", "Sophia", "Alexis", "Lori", "Kayla", "Jane", "Ada"]
GIVEN_M = ["James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas", "Charles", "Christopher", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven", "Paul", "Andrew", "Joshua", "Kenneth", "Kevin", "Brian", "George", "Timothy", "Ronald", "Edward", "Jason", "Jeffrey", "Ryan", "Jacob", "Gary", "Nicholas", "Eric", "Jonathan", "Stephen", "Larry", "Justin", "Scott", "Brandon", "Benjamin", "Samuel", "Gregory", "Alexander", "Frank", "Patrick", "Raymond", "Jack", "Dennis", "Jerry", "Tyler", "Aaron", "Jose", "Adam", "Nathan", "Henry", "Douglas", "Zachary", "Peter", "Kyle", "Ethan", "Walter", "Noah", "Jeremy", "Christian", "Keith", "Roger", "Terry", "Gerald", "Harold", "Sean", "Austin", "Carl", "Arthur", "Lawrence", "Dylan", "Jesse", "Jordan", "Bryan", "Billy", "Joe", "Bruce", "Gabriel", "Logan", "Albert", "Willie", "Alan", "Juan", "Wayne", "Elijah", "Randy", "Roy"]
CITIES = (
    ("Springfield", "IL", "627"),
    ("Chatham", "IL", "626"),
    ("Rochester", "IL", "626"),
    ("Sherman", "IL", "626"),
    ("Riverton", "IL", "625"),
    ("Petersburg", "IL", "626"),
    ("Auburn", "IL", "626"),
    ("Jacksonville", "IL", "626"),
)
STREETS = ["Oak", "Maple", "Cedar", "Pine", "Elm", "Walnut", "Lincoln", "Washington", "Lake", "Hill", "River", "Park", "Main"]
PAYERS = (
    ("medicare", "Medicare Part B", "medicare", 0.45),
    ("bcbs-il", "Blue Cross Blue Shield of Illinois", "commercial", 0.25),
    ("united", "UnitedHealthcare", "commercial", 0.15),
    ("medicaid-il", "Illinois Medicaid", "medicaid", 0.10),
    ("workcomp", "State Workers Compensation Fund", "workers-comp", 0.05),
)
START = date(2023, 1, 2)
PATIENTS_PER_THERAPIST = 40
COHORT = 64
AVERAGE_PER_PATIENT = 45


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"system": system, "code": code}
    if display:
        c["display"] = display
    return c


def _cc(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [_coding(system, code, display)]}


def _ref(rtype: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{rid}"}


def _instant(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S-06:00")


def _npi(rng: random.Random) -> str:
    return "1" + "".join(str(rng.randrange(10)) for _ in range(9))


@dataclass
class _Staff:
    role_id: str
    discipline: str
    licensed: bool


class ClinicGenerator:
    """Generates the resources; ``__iter__`` yields exactly ``total`` of them."""

    def __init__(self, total: int, seed: int = 7) -> None:
        self.total = total
        self.rng = random.Random(seed)
        self.patients = max(1, total // AVERAGE_PER_PATIENT)
        self.n_enc = self.n_proc = self.n_obs = self.n_eoc = 0
        self.staff: dict[str, list[_Staff]] = {d: [] for d in DISCIPLINES}

    # ------------------------------------------------------------------ setup

    def _organizations(self) -> Iterator[dict[str, Any]]:
        yield {
            "resourceType": "Organization",
            "id": "clinic",
            "identifier": [{"system": NPI_SYSTEM, "value": "1234567893"}],
            "active": True,
            "type": [_cc("http://terminology.hl7.org/CodeSystem/organization-type", "prov", "Healthcare Provider")],
            "name": "Riverside Rehab Clinic",
            "telecom": [{"system": "phone", "value": "+1 217 555 0100", "use": "work"}],
            "address": [{"line": ["100 River Rd"], "city": "Springfield", "state": "IL", "postalCode": "62701", "country": "US"}],
        }
        for pid, name, _, _ in PAYERS:
            yield {
                "resourceType": "Organization",
                "id": pid,
                "active": True,
                "type": [_cc("http://terminology.hl7.org/CodeSystem/organization-type", "pay", "Payer")],
                "name": name,
            }

    def _practitioners(self) -> Iterator[dict[str, Any]]:
        rng = self.rng
        n = max(3, self.patients // PATIENTS_PER_THERAPIST)
        for i in range(n):
            discipline = DISCIPLINES_ORDER[i % 8]
            licensed = i % 3 != 2 or discipline == "SLP"
            role_code = ROLES[discipline][0 if licensed else 1]
            female = rng.random() < 0.7
            pid = f"prac-{i:05d}"
            yield {
                "resourceType": "Practitioner",
                "id": pid,
                "identifier": [{"system": NPI_SYSTEM, "value": _npi(rng)}],
                "active": True,
                "name": [{"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN_F if female else GIVEN_M)]}],
                "gender": "female" if female else "male",
            }
            role_id = f"role-{i:05d}"
            yield {
                "resourceType": "PractitionerRole",
                "id": role_id,
                "active": True,
                "period": {"start": "2022-06-01"},
                "practitioner": _ref("Practitioner", pid),
                "organization": _ref("Organization", "clinic"),
                "code": [_cc(ROLE, role_code, ROLE_DISPLAY[role_code])],
            }
            self.staff[discipline].append(_Staff(role_id, discipline, licensed))

    # ------------------------------------------------------------------ patients

    def _patient(self, i: int, arrival: date) -> list[tuple[str, dict[str, Any]]]:
        """The resources of patient ``i`` as (sort key, resource)."""
        rng = self.rng
        pid = f"pat-{i:07d}"
        female = rng.random() < 0.56
        age = rng.choice((rng.randint(18, 64), rng.randint(65, 92), rng.randint(65, 92)))
        birth = date(arrival.year - age, rng.randint(1, 12), rng.randint(1, 28))
        city, state, zip3 = rng.choice(CITIES)
        payer = rng.choices(PAYERS, weights=[p[3] for p in PAYERS])[0]
        if age >= 65 and rng.random() < 0.85:
            payer = PAYERS[0]
        mbi = f"{rng.randint(1, 9)}EG{rng.randint(1, 9)}TE{rng.randint(1, 9)}MK{rng.randint(10, 99)}"
        identifiers: list[dict[str, Any]] = [
            {"type": _cc(V2_0203, "MR"), "system": MRN_SYSTEM, "value": f"MRN{i:07d}"}
        ]
        if payer[0] == "medicare":
            identifiers.append({"type": _cc(V2_0203, "MB"), "system": MBI_SYSTEM, "value": mbi})
        given = [rng.choice(GIVEN_F if female else GIVEN_M)]
        if rng.random() < 0.4:
            given.append(rng.choice(GIVEN_F if female else GIVEN_M))
        day0 = datetime(arrival.year, arrival.month, arrival.day, 8, 0)
        out: list[tuple[str, dict[str, Any]]] = []
        out.append(
            (
                _instant(day0),
                {
                    "resourceType": "Patient",
                    "id": pid,
                    "identifier": identifiers,
                    "active": True,
                    "name": [{"use": "official", "family": rng.choice(FAMILY), "given": given}],
                    "telecom": [{"system": "phone", "value": f"+1 217 555 {rng.randint(0, 9999):04d}", "use": "home"}],
                    "gender": "female" if female else "male",
                    "birthDate": birth.isoformat(),
                    "address": [
                        {
                            "line": [f"{rng.randint(1, 9999)} {rng.choice(STREETS)} St"],
                            "city": city,
                            "state": state,
                            "postalCode": f"{zip3}{rng.randint(0, 99):02d}",
                            "country": "US",
                        }
                    ],
                    "managingOrganization": _ref("Organization", "clinic"),
                },
            )
        )
        out.append(
            (
                _instant(day0),
                {
                    "resourceType": "Coverage",
                    "id": f"cov-{i:07d}",
                    "status": "active",
                    "subscriberId": mbi if payer[0] == "medicare" else f"S{rng.randint(10**8, 10**9 - 1)}",
                    "beneficiary": _ref("Patient", pid),
                    "relationship": _cc("http://terminology.hl7.org/CodeSystem/subscriber-relationship", "self"),
                    "period": {"start": f"{arrival.year}-01-01", "end": f"{arrival.year}-12-31"},
                    "payor": [_ref("Organization", payer[0])],
                    "order": 1,
                },
            )
        )
        first = rng.choices([d for d, _ in DISCIPLINE_WEIGHTS], weights=[w for _, w in DISCIPLINE_WEIGHTS])[0]
        disciplines = [first]
        if rng.random() < 0.25:
            disciplines.append(rng.choice([d for d in DISCIPLINES if d != first]))
        for k, discipline in enumerate(disciplines):
            out.extend(self._episode(pid, discipline, day0 + timedelta(days=3 * k)))
        return out

    def _episode(self, pid: str, discipline: str, start: datetime) -> list[tuple[str, dict[str, Any]]]:
        rng = self.rng
        self.n_eoc += 1
        eoc = f"eoc-{self.n_eoc:07d}"
        plan = f"poc-{self.n_eoc:07d}"
        staff = self.staff[discipline] or self.staff["PT"]
        therapist = rng.choice([s for s in staff if s.licensed] or staff)
        visits = max(2, min(24, int(rng.gauss(9, 4))))
        per_week = rng.choice((1, 2, 2, 3))
        weeks = (visits + per_week - 1) // per_week
        end = start + timedelta(weeks=weeks)
        finished = end.date() < date(2025, 6, 1)
        out: list[tuple[str, dict[str, Any]]] = []
        period: dict[str, str] = {"start": start.date().isoformat()}
        if finished:
            period["end"] = end.date().isoformat()
        out.append(
            (
                _instant(start),
                {
                    "resourceType": "EpisodeOfCare",
                    "id": eoc,
                    "status": "finished" if finished else "active",
                    "type": [_cc(DISCIPLINE, discipline, DISCIPLINES[discipline])],
                    "patient": _ref("Patient", pid),
                    "managingOrganization": _ref("Organization", "clinic"),
                    "period": period,
                    "careManager": _ref("PractitionerRole", therapist.role_id),
                },
            )
        )
        out.append(
            (
                _instant(start),
                {
                    "resourceType": "CarePlan",
                    "id": plan,
                    "extension": [{"url": EPISODE_EXT, "valueReference": _ref("EpisodeOfCare", eoc)}],
                    "status": "completed" if finished else "active",
                    "intent": "plan",
                    "category": [_cc(DISCIPLINE, discipline, DISCIPLINES[discipline])],
                    "title": f"{DISCIPLINES[discipline]} plan of care",
                    "subject": _ref("Patient", pid),
                    "period": {"start": start.date().isoformat(), "end": (start + timedelta(weeks=max(weeks, 4))).date().isoformat()},
                    "created": start.date().isoformat(),
                    "author": _ref("PractitionerRole", therapist.role_id),
                },
            )
        )
        day = start
        for v in range(visits):
            if v:
                day += timedelta(days=rng.choice((2, 3, 4)) if per_week > 1 else 7)
            hour = rng.randint(7, 17)
            begin = datetime(day.year, day.month, day.day, hour, rng.choice((0, 15, 30, 45)))
            provider = therapist if v == 0 or v == visits - 1 or rng.random() < 0.6 else rng.choice(staff)
            out.extend(self._visit(pid, discipline, eoc, plan, provider, begin, v, visits))
        return out

    def _visit(
        self,
        pid: str,
        discipline: str,
        eoc: str,
        plan: str,
        provider: _Staff,
        begin: datetime,
        v: int,
        visits: int,
    ) -> list[tuple[str, dict[str, Any]]]:
        rng = self.rng
        self.n_enc += 1
        enc = f"enc-{self.n_enc:08d}"
        length = rng.choice((45, 50, 55, 60))
        stamp = _instant(begin)
        out: list[tuple[str, dict[str, Any]]] = [
            (
                stamp,
                {
                    "resourceType": "Encounter",
                    "id": enc,
                    "status": "finished",
                    "class": _coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB", "ambulatory"),
                    "serviceType": _cc(DISCIPLINE, discipline, DISCIPLINES[discipline]),
                    "subject": _ref("Patient", pid),
                    "episodeOfCare": [_ref("EpisodeOfCare", eoc)],
                    "participant": [
                        {
                            "type": [_cc("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "PPRF", "primary performer")],
                            "individual": _ref("PractitionerRole", provider.role_id),
                        }
                    ],
                    "period": {"start": stamp, "end": _instant(begin + timedelta(minutes=length))},
                    "serviceProvider": _ref("Organization", "clinic"),
                },
            )
        ]
        services: list[tuple[str, str, bool]] = []
        if v == 0:
            code, display = rng.choice(EVALUATIONS[discipline])
            services.append((code, display, False))
            services.append(rng.choice(TREATMENTS[discipline]))
        else:
            n = rng.choice((1, 2, 2, 3, 3))
            services.extend(rng.sample(TREATMENTS[discipline], min(n, len(TREATMENTS[discipline]))))
        t = begin
        function = "therapist" if provider.licensed else "assistant"
        for code, display, timed in services:
            self.n_proc += 1
            minutes = rng.choice((8, 10, 12, 15, 15, 20, 23, 25, 30)) if timed else 0
            proc: dict[str, Any] = {"resourceType": "Procedure", "id": f"proc-{self.n_proc:08d}"}
            if timed:
                proc["extension"] = [
                    {"url": THERAPY_MINUTES, "valueQuantity": {"value": minutes, "unit": "min", "system": UCUM, "code": "min"}}
                ]
            proc.update(
                {
                    "basedOn": [_ref("CarePlan", plan)],
                    "status": "completed",
                    "category": _cc(DISCIPLINE, discipline, DISCIPLINES[discipline]),
                    "code": _cc(CPT, code, display),
                    "subject": _ref("Patient", pid),
                    "encounter": _ref("Encounter", enc),
                    "performer": [
                        {
                            "function": _cc(PERFORMER_FUNCTION, function, function.capitalize()),
                            "actor": _ref("PractitionerRole", provider.role_id),
                        }
                    ],
                }
            )
            if timed:
                proc["performedPeriod"] = {"start": _instant(t), "end": _instant(t + timedelta(minutes=minutes))}
                t += timedelta(minutes=minutes)
            else:
                proc["performedDateTime"] = _instant(t)
            out.append((stamp, proc))
        if v == 0 or v == visits - 1 or v % 4 == 0:
            measures = MEASURES[discipline]
            for code, display, unit, lo, hi, category in rng.sample(measures, min(2, len(measures))):
                self.n_obs += 1
                value = round(lo + (hi - lo) * rng.random() * (1 - 0.4 * v / visits), 1)
                out.append(
                    (
                        stamp,
                        {
                            "resourceType": "Observation",
                            "id": f"obs-{self.n_obs:08d}",
                            "status": "final",
                            "category": [
                                _cc("http://terminology.hl7.org/CodeSystem/observation-category", category, category.capitalize())
                            ],
                            "code": _cc(OUTCOME_MEASURE, code, display),
                            "subject": _ref("Patient", pid),
                            "encounter": _ref("Encounter", enc),
                            "effectiveDateTime": stamp,
                            "performer": [_ref("PractitionerRole", provider.role_id)],
                            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
                        },
                    )
                )
        return out

    # ------------------------------------------------------------------ all

    def __iter__(self) -> Iterator[dict[str, Any]]:
        produced = 0
        setup = [*self._organizations(), *self._practitioners()]
        for r in setup:
            if produced == self.total:
                return
            yield r
            produced += 1
        # patients arrive evenly over two years, in cohorts interleaved by date
        span_days = 730
        i = 0
        while produced < self.total:
            cohort: list[tuple[str, int, dict[str, Any]]] = []
            for _ in range(COHORT):
                arrival = START + timedelta(days=(i * span_days) // self.patients % span_days)
                cohort.extend((k, n, r) for n, (k, r) in enumerate(self._patient(i, arrival)))
                i += 1
            cohort.sort(key=lambda item: (item[0], item[1]))
            for _, _, r in cohort:
                if produced == self.total:
                    return
                yield r
                produced += 1


DISCIPLINES_ORDER = ("PT", "PT", "PT", "PT", "OT", "OT", "SLP", "PT")


def generate(total: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """Exactly ``total`` resources of a synthetic rehab clinic (same seed: same data)."""
    return iter(ClinicGenerator(total, seed))


STAMP = "2025-06-01T00:00:00.000000Z"


def _with_meta(resource: dict[str, Any]) -> dict[str, Any]:
    resource["meta"] = {"versionId": "1", "lastUpdated": STAMP}
    return resource


def write_ndjson(resources: Iterator[dict[str, Any]], directory: Path, *, gz: bool = True) -> dict[str, int]:
    """One ``<Type>.ndjson(.gz)`` per resource type in ``directory``; counts per type."""
    from fhir_server import jsonio

    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, IO[bytes]] = {}
    counts: dict[str, int] = {}
    try:
        for r in resources:
            rtype = r["resourceType"]
            f = files.get(rtype)
            if f is None:
                name = f"{rtype}.ndjson" + (".gz" if gz else "")
                path = directory / name
                f = gzip.open(path, "wb", compresslevel=5) if gz else path.open("wb")  # noqa: SIM115
                files[rtype] = f
            f.write(jsonio.dumps(r) + b"\n")
            counts[rtype] = counts.get(rtype, 0) + 1
    finally:
        for f in files.values():
            f.close()
    return counts


@dataclass
class LoadStats:
    resources: int = 0
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0


async def load_into_store(
    store: Any,
    resources: Iterator[dict[str, Any]],
    *,
    batch: int = 5000,
    progress: Any = None,
) -> LoadStats:
    """Write resources (all new) into an open SqliteStore through its units of work,
    ``batch`` resources per unit of work (one SQLite transaction each)."""
    from fhir_server import jsonio
    from fhir_server.storage.port import NewVersion

    stats = LoadStats()
    started = time.perf_counter()
    pending: list[dict[str, Any]] = []

    async def flush() -> None:
        async with store.unit_of_work() as uow:
            for r in pending:
                r = _with_meta(r)
                await uow.put(NewVersion(r["resourceType"], r["id"], 1, STAMP, "create", jsonio.dumps(r), r))
        stats.resources += len(pending)
        if progress is not None:
            progress(stats.resources)
        pending.clear()

    for r in resources:
        pending.append(r)
        if len(pending) >= batch:
            await flush()
    if pending:
        await flush()
    stats.seconds = time.perf_counter() - started
    return stats
