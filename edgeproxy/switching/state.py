"""The blue/green switch state of one app and its transitions. Pure: no I/O, no asyncio.

Everything that decides who gets traffic lives here. A state is a frozen value;
each transition is a small function that returns a new state with
`generation + 1`, or raises a `SwitchError` whose message names the state and
leaves the old one untouched. The runtime holder (`board.py`) swaps the pointer.

Vocabulary: `active` always receives `100 - weight` percent of new requests; an
optional `candidate` receives `weight` percent (0-99, a candidate at 100 becomes
the active color); `previous` is the last active color (rollback target);
`draining` maps colors that get no new requests to the deadline (epoch seconds)
after which their remaining requests are cut.

`released` is False only for an app that was never released on this server
(`apps.NAME.first_release: hold`, no state file yet): `active` then names the
color the first deploy will release, but visitors get a 503 maintenance answer
until a color is given weight 100 (`switchctl set COLOR --weight 100`, which is
what the first deploy's `go_live` does after its smoke checks). Tester overrides
still reach a color. A state saved before this field existed is released.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from dataclasses import Field as DataclassField
from types import MappingProxyType
from typing import Annotated, Any, Final, get_type_hints

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from edgeproxy.errors import EdgeproxyError, InvalidRequest, NotFoundError, SwitchError

STATE_VERSION = 1
FULL: Final = 100
"""The weight that makes a color the active one; a candidate has 0 to FULL - 1."""
_EMPTY: Mapping[str, float] = MappingProxyType({})

Weight = Annotated[int, Field(ge=0, le=FULL)]
"""A share of new requests asked for (`set COLOR --weight N`, the control API's SetBody)."""
CandidateWeight = Annotated[int, Field(ge=0, le=FULL - 1)]
Colors = Annotated[tuple[str, ...], Field(min_length=1)]
Generation = Annotated[int, Field(ge=0)]


class StateFormatError(EdgeproxyError):
    """Persisted switch state is malformed; the message says where."""


@dataclass(frozen=True, slots=True)
class Guard:
    """Why the canary guard took the candidate's traffic away, and when."""

    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class AppState:
    """One app's switch state. Its fields are declared here once: the state file's
    record (`record`, `from_json`, `restore`), the control API's view (`board.view`)
    and the per-field checks (`_bounds_problem`) all derive from this declaration.
    `app` is the key the record is saved under; `plain` is derived."""

    app: str
    colors: Colors
    active: str
    candidate: str | None = None
    weight: CandidateWeight = 0
    previous: str | None = None
    draining: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    paused: bool = False
    generation: Generation = 0
    changed_at: float = 0.0
    guard: Guard | None = None
    released: bool = True
    """False only before the first release (`first_release: hold`). Absent in files
    written before first_release existed: those apps were released."""
    plain: bool = field(init=False, repr=False, compare=False, default=False)
    """Derived: released, not paused, no candidate. The switch decision's fast path
    reads this one attribute instead of three (`switching/decide.py`)."""

    def __post_init__(self) -> None:
        problem = _bounds_problem(self) or _invariant_problem(self)
        if problem:
            raise ValueError(f"inconsistent switch state for {self.app}: {problem}")
        plain = self.released and not self.paused and self.candidate is None
        object.__setattr__(self, "plain", plain)
        if not isinstance(self.draining, MappingProxyType):
            object.__setattr__(self, "draining", MappingProxyType(dict(self.draining)))

    @property
    def live_candidate(self) -> str | None:
        """The candidate when it takes a share of new requests, else None."""
        return self.candidate if self.weight > 0 else None

    def summary(self) -> str:
        """One line for logs: `active=blue candidate=green@10 gen=7`."""
        parts = [f"active={self.active}"]
        if self.candidate:
            parts.append(f"candidate={self.candidate}@{self.weight}")
        if self.draining:
            parts.append("draining=" + ",".join(sorted(self.draining)))
        if self.paused:
            parts.append("paused")
        if not self.released:
            parts.append("not-released")
        parts.append(f"gen={self.generation}")
        return " ".join(parts)


# --- what derives from the declaration ------------------------------------------------------

_HINTS = get_type_hints(AppState, include_extras=True)
SAVED: Final[tuple[DataclassField[Any], ...]] = tuple(
    f for f in fields(AppState) if f.init and f.name != "app"
)
"""The fields of the state file's record (and of the view), in declaration order."""


def _bounds(hint: Any) -> tuple[int | None, int | None, int | None]:
    """(least, greatest, least length) an `Annotated` declaration allows (None: no bound)."""
    lo = hi = min_len = None
    for meta in getattr(hint, "__metadata__", ()):
        for c in getattr(meta, "metadata", ()):
            if isinstance(c, annotated_types.Ge):
                lo = int(c.ge)  # type: ignore[call-overload]
            elif isinstance(c, annotated_types.Le):
                hi = int(c.le)  # type: ignore[call-overload]
            elif isinstance(c, annotated_types.MinLen):
                min_len = c.min_length
    return lo, hi, min_len


_BOUNDED: Final = {
    f.name: _bounds(_HINTS[f.name]) for f in SAVED if _bounds(_HINTS[f.name]) != (None,) * 3
}
_WEIGHT_LO, _WEIGHT_HI, _ = _bounds(Weight)


def bounds_problem(what: str, value: int, lo: int | None, hi: int | None) -> str | None:
    """`what VALUE must be between LO and HI`, or None when `value` is in bounds."""
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if hi is None:
            return f"{what} {value} must be at least {lo}"
        return f"{what} {value} must be between {lo} and {hi}"
    return None


def _bounds_problem(s: AppState) -> str | None:
    """The first field of `s` outside the bounds its declaration gives."""
    for name, (lo, hi, min_len) in _BOUNDED.items():
        value = getattr(s, name)
        if min_len is not None and len(value) < min_len:
            return f"{name} must have at least {min_len} entries"
        if isinstance(value, int):
            problem = bounds_problem(name, value, lo, hi)
            if problem:
                return problem
    return None


def check_weight(weight: object) -> int:
    """A weight asked for (`set`): an integer within `Weight`'s bounds, 0 to FULL
    (InvalidRequest otherwise)."""
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int)
        or bounds_problem("weight", weight, _WEIGHT_LO, _WEIGHT_HI)
    ):
        raise InvalidRequest(
            f"weight: must be between {_WEIGHT_LO} and {_WEIGHT_HI}, got {weight!r}"
        )
    return weight


def _invariant_problem(s: AppState) -> str | None:
    """What breaks the rules between fields (each field's own bounds: `_bounds_problem`)."""
    if len(set(s.colors)) != len(s.colors):
        return f"colors {list(s.colors)!r} must be distinct names"
    if s.active not in s.colors:
        return f"active color {s.active!r} is not one of {list(s.colors)}"
    if s.candidate is None:
        if s.weight != 0:
            return "a weight needs a candidate color"
    elif s.candidate not in s.colors or s.candidate == s.active:
        return f"candidate {s.candidate!r} must be a configured color other than the active one"
    if s.previous is not None and (s.previous not in s.colors or s.previous == s.active):
        return f"previous color {s.previous!r} must be a configured color other than the active one"
    for color in s.draining:
        if color not in s.colors or color in (s.active, s.candidate):
            return f"draining color {color!r} must be configured and neither active nor candidate"
    if not s.released and (s.candidate is not None or s.previous is not None):
        return "an app never released has no candidate and no previous color"
    return None


def initial(
    app: str, colors: tuple[str, ...], active: str, now: float = 0.0, *, released: bool = True
) -> AppState:
    """A fresh app: all traffic on `active`, nothing else going on (`released=False`:
    no traffic at all until the first `set_color(..., 100)`)."""
    return AppState(app=app, colors=colors, active=active, changed_at=now, released=released)


def weights(state: AppState) -> dict[str, int]:
    """Each color's share of new requests; sums to 100, the active color has > 0
    (all 0 for an app never released: visitors get a maintenance answer)."""
    out = dict.fromkeys(state.colors, 0)
    if not state.released:
        return out
    out[state.active] = FULL - state.weight
    if state.candidate is not None:
        out[state.candidate] = state.weight
    return out


def _check_color(state: AppState, color: str) -> None:
    if color not in state.colors:
        raise NotFoundError(
            f"unknown color {state.app}/{color} (colors: {', '.join(state.colors)})"
        )


def _next(state: AppState, now: float, **changes: Any) -> AppState:
    return replace(state, generation=state.generation + 1, changed_at=now, **changes)


def _undrained(state: AppState, *colors: str | None) -> Mapping[str, float]:
    """`draining` without `colors`: sending traffic to a color cancels its drain."""
    return {c: d for c, d in state.draining.items() if c not in colors}


def set_color(state: AppState, color: str, weight: int, now: float) -> AppState:
    """Give `color` `weight` percent: 100 makes it active, less makes it the candidate."""
    _check_color(state, color)
    check_weight(weight)
    if not state.released:
        if weight != FULL:
            raise SwitchError(
                f"cannot set {state.app}/{color} to weight {weight}: {state.app} was never "
                "released, so there is no traffic to split; smoke-test the color with the "
                f"tester override, then release it with `switchctl set {color} --weight 100`"
            )
        return _next(
            state, now, active=color, released=True, draining=_undrained(state, color), guard=None
        )
    if color == state.active:
        if weight != FULL:
            raise SwitchError(
                f"cannot set {state.app}/{color} to weight {weight}: it is the active color; "
                "give the candidate a weight instead, or make another color active with weight 100"
            )
        return _next(state, now, candidate=None, weight=0, guard=None)
    if weight == FULL:
        return _next(
            state,
            now,
            active=color,
            previous=state.active,
            candidate=None,
            weight=0,
            draining=_undrained(state, color),
            guard=None,
        )
    return _next(
        state,
        now,
        candidate=color,
        weight=weight,
        draining=_undrained(state, color),
        guard=None,
    )


def promote(state: AppState, now: float) -> AppState:
    """The candidate becomes active at 100%; the old active color becomes `previous`."""
    if state.candidate is None:
        raise SwitchError(
            f"cannot promote {state.app}: no candidate color "
            "(start one with `switchctl set COLOR --weight N`)"
        )
    return _next(
        state,
        now,
        active=state.candidate,
        previous=state.active,
        candidate=None,
        weight=0,
        guard=None,
    )


def rollback(state: AppState, now: float) -> AppState:
    """`previous` becomes active at 100% (cancelling its drain); any candidate is dropped."""
    if state.previous is None:
        raise SwitchError(f"cannot roll back {state.app}: no previous color is recorded")
    return _next(
        state,
        now,
        active=state.previous,
        previous=state.active,
        candidate=None,
        weight=0,
        draining=_undrained(state, state.previous),
        guard=None,
    )


def drain(state: AppState, color: str, deadline: float, now: float) -> AppState:
    """Stop `color` taking new requests; what it is serving may run until `deadline`."""
    _check_color(state, color)
    if color == state.active:
        raise SwitchError(
            f"cannot drain {state.app}/{color}: it is the active color; switch traffic away first"
        )
    if color == state.candidate and state.weight > 0:
        raise SwitchError(
            f"cannot drain {state.app}/{color}: it is the candidate with weight {state.weight}; "
            f"set its weight to 0 first (`switchctl set {color} --weight 0`)"
        )
    extra: dict[str, Any] = {}
    if color == state.candidate:
        extra = {"candidate": None, "weight": 0}
    return _next(state, now, draining={**state.draining, color: deadline}, **extra)


def finish_drain(state: AppState, color: str, now: float) -> AppState:
    """`color` has nothing left in flight (or was cut at its deadline)."""
    _check_color(state, color)
    if color not in state.draining:
        raise SwitchError(f"cannot finish draining {state.app}/{color}: it is not draining")
    return _next(state, now, draining=_undrained(state, color))


def pause(state: AppState, now: float) -> AppState:
    """Hold new requests (they wait for resume, up to the app's pause_max_wait)."""
    if state.paused:
        raise SwitchError(f"cannot pause {state.app}: it is already paused")
    return _next(state, now, paused=True)


def resume(state: AppState, now: float) -> AppState:
    if not state.paused:
        raise SwitchError(f"cannot resume {state.app}: it is not paused")
    return _next(state, now, paused=False)


def guard_trip(state: AppState, reason: str, now: float) -> AppState:
    """The canary guard backs the candidate out: weight 0, reason recorded."""
    if state.live_candidate is None:
        raise SwitchError(
            f"cannot trip the canary guard for {state.app}: no candidate is taking traffic"
        )
    return _next(state, now, weight=0, guard=Guard(reason=reason, at=now))


def lost_roles(state: AppState, colors: tuple[str, ...]) -> list[tuple[str, str]]:
    """(color, role) for each color that serves or drains traffic and is not in `colors`.

    Roles: `active`, `candidate`, `draining`. A config reload that would drop one
    of these is refused unless forced (`previous` is only a rollback target).
    """
    lost = []
    if state.active not in colors:
        lost.append((state.active, "active"))
    if state.candidate is not None and state.candidate not in colors:
        lost.append((state.candidate, "candidate"))
    lost += [(c, "draining") for c in state.draining if c not in colors]
    return lost


def refit(state: AppState, colors: tuple[str, ...], fallback: str, now: float) -> AppState:
    """`state` fitted to a new list of configured colors (a config reload).

    A color that is gone loses its roles: without its active color the app
    moves to `fallback` at 100%; a gone candidate's share goes back to the
    active color; a gone draining color is no longer drained (nor cut); a gone
    previous color is forgotten. Pause and generation carry on: the result is
    `state` itself when nothing changes, else the next generation.
    """
    if colors == state.colors:
        return state
    active = state.active if state.active in colors else fallback
    candidate = state.candidate
    if candidate not in colors or candidate == active:
        candidate = None
    previous = state.previous if state.previous in colors and state.previous != active else None
    return _next(
        state,
        now,
        colors=colors,
        active=active,
        candidate=candidate,
        weight=state.weight if candidate is not None else 0,
        previous=previous,
        draining={c: d for c, d in state.draining.items() if c in colors and c != active},
        guard=state.guard if candidate is not None else None,
    )


# --- persistence ---------------------------------------------------------------------------

_STRICT: Final = ConfigDict(extra="forbid", strict=True)


def _default(f: DataclassField[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return Field(default_factory=f.default_factory)
    return ...  # required


_Record: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "_Record",
    __config__=_STRICT,
    **{f.name: (_HINTS[f.name], _default(f)) for f in SAVED},
)
"""One app's saved record, derived from `AppState`'s declaration (validated as JSON:
arrays are tuples there, objects mappings or a `Guard`)."""
_Apps: Any = dict[str, _Record]  # type: ignore[valid-type]  # a model built at import
_File: type[BaseModel] = create_model(
    "_File", __config__=_STRICT, version=(int, ...), apps=(_Apps, ...)
)


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    return value


def record(state: AppState) -> dict[str, Any]:
    """The state's saved fields as JSON values (the state file's record, the view's core)."""
    return {f.name: _json_value(getattr(state, f.name)) for f in SAVED}


def _state(name: str, r: BaseModel, **changes: Any) -> AppState:
    """The AppState of a validated record, with `changes` applied."""
    values = {f.name: getattr(r, f.name) for f in SAVED}
    return AppState(app=name, **{**values, **changes})


def to_json(states: Mapping[str, AppState]) -> str:
    """The versioned state file: `{"version": 1, "apps": {NAME: {...}}}`."""
    apps = {name: record(s) for name, s in sorted(states.items())}
    return json.dumps({"version": STATE_VERSION, "apps": apps}, indent=2, sort_keys=True) + "\n"


def _first_error(e: ValidationError) -> str:
    first = e.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def from_json(text: str | bytes) -> dict[str, AppState]:
    """Parse a state file; raise StateFormatError naming the first problem."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise StateFormatError(f"not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise StateFormatError("the top level must be an object with `version` and `apps`")
    if data.get("version") != STATE_VERSION:
        raise StateFormatError(
            f"unsupported version {data.get('version')!r} (this edgeproxy reads version "
            f"{STATE_VERSION})"
        )
    try:
        parsed = _File.model_validate_json(text)
    except ValidationError as e:
        raise StateFormatError(_first_error(e)) from e
    out: dict[str, AppState] = {}
    for name, r in parsed.apps.items():  # type: ignore[attr-defined]
        try:
            out[name] = _state(name, r)
        except ValueError as e:
            raise StateFormatError(f"apps.{name}: {e}") from e
    return out


# --- restoring what can be used -----------------------------------------------------------

_CORE = frozenset({"colors", "active"})
"""Fields without which a saved record cannot be used at all."""


@dataclass(frozen=True, slots=True)
class Restored:
    """A state file read record by record: what could be used, what was set aside."""

    states: dict[str, AppState]
    set_aside: dict[str, list[str]]
    """App → what of its saved record was not used, and why (one sentence each)."""
    problems: list[str]
    """About the file as a whole (its version, unknown top-level keys)."""
    generations: dict[str, int]
    """Saved generation of each record set aside whole (the app starts above it)."""


def restore(text: str | bytes) -> Restored:
    """Read a state file app by app: every record that is valid is restored as it was.

    Of a record whose active color is unusable nothing is used (only its
    generation, so the app's next one is higher); of the others, what breaks
    the rules (an unknown candidate, previous or draining color, a bad field,
    an unknown field) is set aside and the rest restored. A file of another
    `version` is read by this version's rules, record by record: the state
    file is written only by edgeproxy, so another version means an upgrade
    was rolled back, and refusing to start would turn that rollback into an
    outage; what this version cannot read is set aside and reported instead.
    Raises StateFormatError only when the file is not an object with `apps`.
    """
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise StateFormatError(f"not valid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("apps"), dict):
        raise StateFormatError("the top level must be an object with `version` and `apps`")
    problems = []
    if data.get("version") != STATE_VERSION:
        problems.append(
            f"the file has version {data.get('version')!r} and this edgeproxy writes version "
            f"{STATE_VERSION}: each app's record was read by version {STATE_VERSION}'s rules"
        )
    extra = sorted(set(data) - set(_File.model_fields))
    if extra:
        problems.append(f"unknown top-level keys set aside: {', '.join(map(str, extra))}")
    states: dict[str, AppState] = {}
    set_aside: dict[str, list[str]] = {}
    generations: dict[str, int] = {}
    for name, raw in data["apps"].items():
        state, notes = _restore_record(str(name), raw)
        if state is not None:
            states[name] = state
        elif isinstance(raw, dict):
            generation = raw.get("generation")
            if isinstance(generation, int) and not isinstance(generation, bool):
                generations[name] = max(generation, 0)
        if notes:
            set_aside[name] = notes
    return Restored(states, set_aside, problems, generations)


def _restore_record(name: str, raw: object) -> tuple[AppState | None, list[str]]:
    """The usable part of one saved record, and one sentence per part set aside."""
    if not isinstance(raw, dict):
        return None, [f"the saved record is not an object ({type(raw).__name__}); not used"]
    data = dict(raw)
    notes: list[str] = []
    for _ in range(len(_Record.model_fields) + len(data) + 1):
        try:
            r = _Record.model_validate_json(json.dumps(data))
            break
        except ValidationError as e:
            bad = {str(err["loc"][0]) for err in e.errors() if err["loc"]}
            found = [
                f"unknown field {'.'.join(map(str, err['loc']))}"
                if err["type"] == "extra_forbidden"
                else f"{'.'.join(map(str, err['loc']))}: {err['msg'][:1].lower()}{err['msg'][1:]}"
                for err in e.errors()
            ]
            if bad & _CORE or not bad:
                return None, [f"the saved record is not usable ({'; '.join(found)})"]
            notes += [f"{f} (set aside)" for f in found]
            for key in bad:
                data.pop(key, None)
    else:  # pragma: no cover - each round drops at least one field
        return None, ["the saved record is not usable"]
    colors: tuple[str, ...] = r.colors  # type: ignore[attr-defined]
    active: str = r.active  # type: ignore[attr-defined]
    if len(set(colors)) != len(colors) or active not in colors:
        why = f"active color {active!r} is not one of its colors {list(colors)}"
        if len(set(colors)) != len(colors):
            why = f"its colors {list(colors)} repeat a name"
        return None, [f"the saved record is not usable: {why}"]
    candidate: str | None = r.candidate  # type: ignore[attr-defined]
    weight: int = r.weight  # type: ignore[attr-defined]
    previous: str | None = r.previous  # type: ignore[attr-defined]
    if candidate is not None and (candidate not in colors or candidate == active):
        notes.append(
            f"candidate {candidate!r} (weight {weight}) set aside: it is not one of its "
            f"colors {list(colors)} other than the active one"
        )
        candidate, weight = None, 0
    if candidate is None and weight:
        notes.append(f"weight {weight} set aside: there is no candidate color")
        weight = 0
    released: bool = r.released  # type: ignore[attr-defined]
    if not released and (candidate is not None or previous is not None):
        notes.append("released: false set aside: the app had a candidate or previous color")
        released = True
    if previous is not None and (previous not in colors or previous == active):
        notes.append(f"previous color {previous!r} set aside: not one of its other colors")
        previous = None
    draining = {}
    for color, deadline in r.draining.items():  # type: ignore[attr-defined]
        if color in colors and color not in (active, candidate):
            draining[color] = deadline
        else:
            notes.append(f"draining color {color!r} set aside: not one of its idle colors")
    state = _state(
        name,
        r,
        candidate=candidate,
        weight=weight,
        previous=previous,
        draining=draining,
        released=released,
    )
    return state, notes
