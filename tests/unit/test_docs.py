"""The manual (README.md and docs/) against the code it describes.

- docs/configuration.md names exactly the config keys the parser accepts, at the levels where it
  accepts them. The accepted keys are found by asking `proxy.config.parse_config` itself: a key is
  accepted at a place unless the parser answers "unknown key" for it there. The candidate names
  come from the config modules' key tables and dataclasses (whatever their module layout), so a
  new key, or a split of proxy/config.py into a package, needs no change here. Documented
  defaults and every YAML example in docs/ go through the parser too.
- docs/metrics.md names exactly the metric families the collector exports, with their types and
  label names, every fixed label value, and one PromQL example per family that uses only
  exported series.
- README.md, docs/*.md and config/*.yaml never refer to a file outside the repository (the old
  DESIGN.md, ../shared), and every relative link (and #anchor) in README.md and docs/ resolves.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import importlib
import json
import pkgutil
import re
import types
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

import proxy.config
from proxy.config import parse_config

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README = REPO / "README.md"
CONFIG_DOC = DOCS / "configuration.md"
METRICS_DOC = DOCS / "metrics.md"


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def strip_code(text: str) -> str:
    """Markdown without fenced code blocks and inline code spans (links there are not links)."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def fenced_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M)


# =================================================================================== config keys

#: The base config every probe starts from (valid as it is).
BASE_LISTENERS = {
    "postgres": {"name": "pg", "protocol": "postgres", "listen": "127.0.0.1:16432",
                 "server": {"host": "127.0.0.1", "port": 5432}, "databases": {"app": {}},
                 "auth": {"type": "scram-sha-256"}, "users": [{"name": "app", "password": "x"}]},
    "mysql": {"name": "my", "protocol": "mysql", "listen": "127.0.0.1:16033",
              "server": {"host": "127.0.0.1", "port": 3306}, "databases": {"app": {}},
              "auth": {"type": "mysql_native_password"},
              "users": [{"name": "app", "password": "x"}]},
}
PROBE = "zz_no_such_key"

#: A place in the config: steps ("key", name), ("item",) = a list's element, ("name",) = the
#: value of any key of a mapping keyed by names (databases). Rendered as the docs write it:
#: listeners[].databases.<name>.dbname
Step = tuple[str, ...]
Location = tuple[Step, ...]


def render(location: Location, key: str | None = None) -> str:
    out = ""
    for step in location:
        if step[0] == "key":
            out += ("." if out else "") + step[1]
        elif step[0] == "item":
            out += "[]"
        else:
            out += ".<name>"
    if key is not None:
        out += ("." if out else "") + key
    return out


def base_config(protocol: str) -> dict[str, Any]:
    return {"listeners": [copy.deepcopy(BASE_LISTENERS[protocol])]}


def container_at(data: dict[str, Any], location: Location) -> dict[str, Any]:
    """The mapping at `location` in `data`, created (minimally) where missing."""
    node: Any = data
    for i, step in enumerate(location):
        following = location[i + 1] if i + 1 < len(location) else None
        if step[0] == "key":
            current = node.get(step[1])
            if following is not None and following[0] == "item":
                if not isinstance(current, list) or not current:
                    current = node[step[1]] = [{}]
            elif not isinstance(current, dict):
                current = node[step[1]] = {}
            node = current
        elif step[0] == "item":
            if not isinstance(node[0], dict):
                node[0] = {}
            node = node[0]
        else:
            if not node:
                node["somename"] = {}
            first = next(iter(node))
            if not isinstance(node[first], dict):
                node[first] = {}
            node = node[first]
    return node


def parse_error(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> str | None:
    """The parser's error for `data` (as YAML text), or None if it is valid."""
    try:
        parse_config(json.dumps(data), env=dict(env or {}), source="<probe>")
    except Exception as exc:  # ConfigError, or whatever a nested parser raises
        return str(exc)
    return None


def is_unknown(error: str | None, path_tail: str) -> bool:
    """Whether `error` says the key whose path ends with `path_tail` is unknown."""
    if error is None:
        return False
    return re.search(rf"(?:^|[.\]]){re.escape(path_tail)}: unknown key", error) is not None


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > 3:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping | types.MappingProxyType):
        for key, item in value.items():
            yield from _strings(key, depth + 1)
            yield from _strings(item, depth + 1)
    elif isinstance(value, tuple | list | set | frozenset):
        for item in value:
            yield from _strings(item, depth + 1)


def config_modules() -> list[types.ModuleType]:
    """proxy.config and, if it is a package, its submodules; proxy.tls if there is one."""
    modules = [proxy.config]
    if hasattr(proxy.config, "__path__"):
        for info in pkgutil.walk_packages(proxy.config.__path__, "proxy.config."):
            modules.append(importlib.import_module(info.name))
    try:
        modules.append(importlib.import_module("proxy.tls"))
    except ImportError:
        pass
    return modules


def candidate_keys() -> set[str]:
    """Every name that might be a config key: the strings of the config modules' key tables
    (module-level constants named like *KEYS* / *_NAMES), their dataclasses' fields, the public
    SETTING_NAMES, and every key the docs name."""
    names: set[str] = set(getattr(proxy.config, "SETTING_NAMES", ()))
    for module in config_modules():
        for attr, value in vars(module).items():
            if "KEYS" in attr.upper() or attr.upper().endswith("_NAMES"):
                names.update(_strings(value))
            if isinstance(value, type) and dataclasses.is_dataclass(value) \
                    and value.__module__ == module.__name__:
                names.update(f.name for f in dataclasses.fields(value))
    for path in documented_config_paths():
        names.add(re.split(r"[.\[\]]+", path.replace(".<name>", ""))[-1] or path)
    return {n for n in names if re.fullmatch(r"[a-z_][a-z0-9_]*", n)}


def _shape(data: dict[str, Any], location: Location, key: str) -> Location | None:
    """If `key` at `location` holds a section of keys the parser checks, its location."""
    here = location + (("key", key),)
    trials: list[tuple[Any, str, Location]] = [
        ({PROBE: "zz"}, f"{key}.{PROBE}", here),
        ({"somename": {PROBE: "zz"}}, f"{key}.somename.{PROBE}", here + (("name",),)),
        ([{PROBE: "zz"}], f"{key}[0].{PROBE}", here + (("item",),)),
    ]
    for value, tail, section in trials:
        probe = copy.deepcopy(data)
        container_at(probe, location)[key] = value
        if is_unknown(parse_error(probe), tail):
            return section
    return None


def explore(protocol: str, candidates: set[str]) -> set[str]:
    """Every config key path the parser accepts, starting from a `protocol` listener."""
    base = base_config(protocol)
    assert parse_error(base) is None, parse_error(base)
    accepted: set[str] = set()
    todo: list[Location] = [()]
    seen: set[Location] = set()
    while todo:
        location = todo.pop()
        if location in seen:
            continue
        seen.add(location)
        for key in sorted(candidates):
            probe = copy.deepcopy(base)
            container_at(probe, location)[key] = "zz"
            if is_unknown(parse_error(probe), key):
                continue
            accepted.add(render(location, key))
            section = _shape(base, location, key)
            if section is not None:
                todo.append(section)
    return accepted


@functools.cache
def accepted_config_paths() -> frozenset[str]:
    candidates = candidate_keys()
    found: set[str] = set()
    for protocol in BASE_LISTENERS:
        found |= explore(protocol, candidates)
    return frozenset(found)


#: The words docs/configuration.md uses in "Set at:" for the levels of a pool setting.
LEVELS = {"defaults": "defaults", "listener": "listeners[]",
          "database": "listeners[].databases.<name>", "user": "listeners[].users[]"}


def config_doc_entries() -> dict[str, str]:
    """Heading (`### \\`key\\``) -> the text under it, from docs/configuration.md."""
    text = CONFIG_DOC.read_text()
    entries: dict[str, str] = {}
    for match in re.finditer(r"^### `([^`]+)`[ \t]*\n(.*?)(?=^#{1,3} |\Z)", text, re.S | re.M):
        assert match.group(1) not in entries, f"{match.group(1)} documented twice"
        entries[match.group(1)] = match.group(2)
    return entries


def pool_setting_entries() -> dict[str, str]:
    """The entries under "## Pool settings" (bare setting names)."""
    text = CONFIG_DOC.read_text()
    section = re.search(r"^## Pool settings\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "docs/configuration.md has no '## Pool settings' section"
    names = re.findall(r"^### `([^`]+)`", section.group(1), re.M)
    entries = config_doc_entries()
    return {name: entries[name] for name in names}


def setting_levels(name: str, body: str) -> list[str]:
    match = re.search(r"Set at: ([^.\n]+)", body)
    assert match, f"docs/configuration.md: {name} has no 'Set at:' line"
    words = [w.strip() for w in match.group(1).split(",")]
    unknown = [w for w in words if w not in LEVELS]
    assert not unknown, f"{name}: unknown level(s) {unknown}; use {sorted(LEVELS)}"
    return words


@functools.cache
def documented_config_paths() -> frozenset[str]:
    settings = pool_setting_entries()
    paths: set[str] = set()
    for name, body in config_doc_entries().items():
        if name in settings:
            paths.update(f"{LEVELS[level]}.{name}" for level in setting_levels(name, body))
        else:
            paths.add(name)
    return frozenset(paths)


def test_config_doc_names_every_accepted_key() -> None:
    accepted = accepted_config_paths()
    documented = documented_config_paths()
    missing = sorted(accepted - documented)
    assert not missing, (
        "config keys the parser accepts but docs/configuration.md does not document "
        f"(add a '### `key`' entry, or a 'Set at:' level for a pool setting): {missing}")


def test_config_doc_names_no_key_the_parser_refuses() -> None:
    extra = sorted(documented_config_paths() - accepted_config_paths())
    assert not extra, f"docs/configuration.md documents keys the parser refuses: {extra}"


def test_explorer_finds_the_known_keys() -> None:
    """Guards the probing itself: it must find keys we know exist, at every level."""
    accepted = accepted_config_paths()
    for path in ("admin.listen", "logging.level", "workers", "defaults.pool_size",
                 "listeners[].server.host", "listeners[].auth.type",
                 "listeners[].databases.<name>.dbname", "listeners[].users[].password",
                 "listeners[].users[].pool_size", "listeners[].databases.<name>.pool_size",
                 "listeners[].query_wait_timeout"):
        assert path in accepted, path
    for name in proxy.config.SETTING_NAMES:
        assert f"defaults.{name}" in accepted, name
    assert "listeners[].zz_no_such_key" not in accepted


def test_every_config_key_has_type_default_and_example() -> None:
    for name, body in config_doc_entries().items():
        assert re.search(r"^- Type: ", body, re.M), f"{name}: no '- Type:' line"
        assert "```yaml" in body, f"{name}: no YAML example"
    for name, body in pool_setting_entries().items():
        assert "Default: `" in body, f"{name}: no default"


def _location_of(path: str) -> tuple[Location, str]:
    """'listeners[].users[].name' -> (location of the users item, 'name')."""
    steps: list[Step] = []
    parts = re.findall(r"[^.\[\]]+|\[\]", path)
    for part in parts[:-1]:
        if part == "[]":
            steps.append(("item",))
        elif part == "<name>":
            steps.append(("name",))
        else:
            steps.append(("key", part))
    return tuple(steps), parts[-1]


def _comparable(text: str) -> Any:
    """The parsed config, comparable with == (the config objects are frozen dataclasses)."""
    return parse_config(text, env={}, source="<doc>")


def test_documented_defaults_are_the_code_defaults() -> None:
    """A `Default: \\`value\\`` must change nothing when written into a config."""
    settings = pool_setting_entries()
    checked = 0
    for name, body in config_doc_entries().items():
        match = re.search(r"Default: `([^`]+)`(?:\.| \(|$)", body, re.M)
        if match is None:
            continue
        path = f"defaults.{name}" if name in settings else name
        location, key = _location_of(path)
        for protocol in BASE_LISTENERS:
            base = base_config(protocol)
            data = copy.deepcopy(base)
            container_at(data, location)[key] = yaml.safe_load(match.group(1))
            error = parse_error(data)
            assert error is None, f"{name}: the documented default {match.group(1)!r}: {error}"
            assert _comparable(json.dumps(data)) == _comparable(json.dumps(base)), (
                f"docs/configuration.md: {name}: documented default {match.group(1)!r} is not "
                "the default the code applies")
        checked += 1
    assert checked >= len(settings)


def _merge(base: Any, extra: Any) -> Any:
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for key, value in extra.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(extra, list):
        return [_merge(base[i], item) if i < len(base) else item for i, item in enumerate(extra)]
    return extra


def config_examples() -> list[tuple[str, str]]:
    """(file, YAML text) of every YAML block in docs/ and README.md that is (part of) a
    poolproxy config."""
    top = {path for path in accepted_config_paths() if re.fullmatch(r"\w+", path)}
    out = []
    for path in doc_files():
        for block in fenced_blocks(path.read_text(), "yaml"):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and data and set(data) <= top:
                out.append((path.name, block))
    return out


def test_every_config_example_in_the_docs_is_valid() -> None:
    examples = config_examples()
    assert len(examples) >= len(config_doc_entries()), "fewer YAML examples than config keys"
    for name, block in examples:
        data = yaml.safe_load(block)
        protocol = "postgres"
        for listener in data.get("listeners") or []:
            if isinstance(listener, dict) and listener.get("protocol") == "mysql":
                protocol = "mysql"
        merged = _merge(base_config(protocol), data)
        env = {var: "x" for var in re.findall(r"\$\{(\w+)", block)}
        error = parse_error(merged, env)
        assert error is None, f"{name}: invalid config example:\n{block}\n-> {error}"


# =================================================================================== metrics


class _Client:
    """What the collector reads of a client session."""

    def __init__(self, pool: Any, state: Any, pinned: str | None) -> None:
        self.pool, self.state, self.pinned = pool, state, pinned


def live_exposition() -> str:
    """/metrics text of the collector over one listener with a pool, an active pinned client
    and counters, so that every family has samples."""
    from prometheus_client import CollectorRegistry, generate_latest

    from proxy.config import PoolSettings
    from proxy.ops.metrics import PoolproxyCollector
    from proxy.pool import ClientState, Pool

    async def no_connect(pool: Any) -> Any:
        raise AssertionError("the collector must not open connections")

    pool = Pool("pg", "app", "app", PoolSettings(), no_connect)
    runtime = types.SimpleNamespace(
        name="pg", pools={("app", "app"): pool},
        clients={_Client(pool, ClientState.ACTIVE, "set")},
        client_results={"accepted": 1}, pins={"set": 1}, disconnects={"client_close": 1},
        tls_handshakes={("client", "ok"): 1})
    registry = CollectorRegistry()
    registry.register(PoolproxyCollector(lambda: [runtime]))  # type: ignore[list-item]
    return generate_latest(registry).decode()


@functools.cache
def exported_families() -> dict[str, tuple[str, frozenset[str]]]:
    """Exposed name (counters with _total) -> (type, label names without `le`)."""
    from prometheus_client.parser import text_string_to_metric_families

    from proxy.ops.metrics import PoolproxyCollector

    families: dict[str, tuple[str, frozenset[str]]] = {}
    for family in PoolproxyCollector(lambda: []).collect():  # every family, even with no pool
        name = family.name + "_total" if family.type == "counter" else family.name
        families[name] = (family.type, frozenset(getattr(family, "_labelnames", ())))
    for family in text_string_to_metric_families(live_exposition()):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        if name in families and labels:
            families[name] = (families[name][0], frozenset(labels))
    return families


def exported_sample_names() -> set[str]:
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    out: set[str] = set()
    for name, (kind, _labels) in exported_families().items():
        if kind == "counter":
            out.add(name)
        else:
            out.update(name + s for s in suffixes.get(kind, [""]))
    return out


def source_family_names() -> set[str]:
    """Family names written literally as the first argument of a *MetricFamily(...) anywhere in
    proxy/ (catches families a collector only yields in some states)."""
    names = set()
    for path in (REPO / "proxy").rglob("*.py"):
        for match in re.finditer(r"(\w*)MetricFamily\(\s*\"(poolproxy_\w*[a-z])\"",
                                 path.read_text()):
            kind, name = match.groups()
            names.add(name + "_total" if kind == "Counter" else name)
    return names


def metrics_doc_table() -> dict[str, tuple[str, frozenset[str]]]:
    rows = {}
    for name, kind, labels in re.findall(r"^\| `(poolproxy_\w+)` \| (\w+) \| ([^|]*)\|",
                                         METRICS_DOC.read_text(), re.M):
        rows[name] = (kind, frozenset(re.findall(r"`(\w+)`", labels)))
    return rows


def metrics_doc_sections() -> dict[str, str]:
    text = METRICS_DOC.read_text()
    return {m.group(1): m.group(2) for m in re.finditer(
        r"^### `(poolproxy_\w+)`[ \t]*\n(.*?)(?=^#{1,3} |\Z)", text, re.S | re.M)}


def test_metrics_doc_lists_every_exported_family() -> None:
    exported = exported_families()
    table = metrics_doc_table()
    missing = sorted((set(exported) | source_family_names()) - set(table))
    assert not missing, f"metrics poolproxy exports that docs/metrics.md does not list: {missing}"
    extra = sorted(set(table) - set(exported))
    assert not extra, f"docs/metrics.md lists metrics poolproxy does not export: {extra}"


def test_metrics_doc_types_and_labels() -> None:
    exported = exported_families()
    for name, (kind, labels) in metrics_doc_table().items():
        if name not in exported:
            continue  # reported by the test above
        assert kind == exported[name][0], f"{name}: documented as {kind}, is {exported[name][0]}"
        assert labels == exported[name][1], (
            f"{name}: documented labels {sorted(labels)}, exported {sorted(exported[name][1])}")


def test_metrics_doc_has_a_section_and_promql_example_per_metric() -> None:
    sections = metrics_doc_sections()
    assert set(sections) == set(metrics_doc_table()), "summary table and sections differ"
    for name, body in sections.items():
        blocks = fenced_blocks(body, "promql")
        assert blocks, f"docs/metrics.md: {name} has no ```promql example"
        assert any(name in re.findall(r"poolproxy_\w+", b) or
                   any(n.startswith(name) for n in re.findall(r"poolproxy_\w+", b))
                   for b in blocks), f"{name}: its example does not use it"


def promql_names(expr: str) -> set[str]:
    try:
        import promql_parser
    except ImportError:
        return set(re.findall(r"\bpoolproxy_\w+", expr))
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def test_metrics_doc_promql_uses_only_exported_series() -> None:
    samples = exported_sample_names()
    labels_of = {name + suffix: labels for name, (_kind, labels) in exported_families().items()
                 for suffix in ("", "_bucket", "_sum", "_count")}
    blocks = fenced_blocks(METRICS_DOC.read_text(), "promql")
    assert blocks
    for expr in blocks:
        names = promql_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = sorted(names - samples)
        assert not unknown, f"docs/metrics.md: {expr!r} uses {unknown}, which is not exported"
        known = set().union(*(labels_of.get(n, frozenset()) for n in names)) | {"le"}
        code = re.sub(r'"[^"]*"', '""', expr)
        used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
        for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", code):
            used.update(label.strip() for label in group.split(",") if label.strip())
        assert used <= known, f"{expr!r} uses labels {sorted(used - known)} its series lack"


def test_metrics_doc_lists_every_label_value() -> None:
    from proxy.ops.metrics import CLIENT_RESULTS, CLIENT_STATES, SERVER_STATES
    from proxy.pool import CloseReason

    values: set[str] = {r.value for r in CloseReason}
    values |= set(CLIENT_STATES) | set(SERVER_STATES) | set(CLIENT_RESULTS)
    for module in ("proxy.postgres.statements", "proxy.mysql.session"):
        pin_reasons = getattr(importlib.import_module(module), "PinReason", None)
        assert pin_reasons is not None, f"{module}.PinReason is gone: update this test"
        if isinstance(pin_reasons, type) and issubclass(pin_reasons, enum.Enum):
            values |= {str(reason.value) for reason in pin_reasons}
        else:  # a class of string constants
            values |= {v for k, v in vars(pin_reasons).items() if k.isupper() and isinstance(v, str)}
    from prometheus_client.parser import text_string_to_metric_families
    for family in text_string_to_metric_families(live_exposition()):
        for sample in family.samples:
            if "direction" in sample.labels:
                values.add(sample.labels["direction"])
    text = METRICS_DOC.read_text()
    missing = sorted(v for v in values if f"`{v}`" not in text)
    assert not missing, f"label values docs/metrics.md does not mention: {missing}"


# =================================================================================== links


def test_no_reference_outside_the_repository() -> None:
    files = [*doc_files(), *sorted((REPO / "config").glob("*.yaml"))]
    assert README in files and CONFIG_DOC in files
    for path in files:
        text = path.read_text()
        rel = path.relative_to(REPO)
        for pattern in (r"DESIGN\.md", r"\bDESIGN\s*§", r"\bDESIGN \d", r"/shared/", r"/work/"):
            match = re.search(pattern, text)
            assert match is None, f"{rel} refers to a file outside the repository: {match.group(0)!r}"
        for match in re.finditer(r"(?:\.\./)+[^\s)\]'\"`>]*", text):
            target = (path.parent / match.group(0)).resolve()
            assert target.is_relative_to(REPO), (
                f"{rel} refers to {match.group(0)!r}, outside the repository")


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*#*$", text, re.M):
        slug = github_anchor(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def links(path: Path) -> Iterable[str]:
    text = strip_code(path.read_text())
    yield from re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    yield from re.findall(r"^\[[^\]]+\]:\s*(\S+)", text, re.M)


def test_relative_links_resolve() -> None:
    checked = 0
    for path in doc_files():
        rel = path.relative_to(REPO)
        for target in links(path):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            assert dest.is_relative_to(REPO), f"{rel}: link {target!r} leaves the repository"
            assert dest.exists(), f"{rel}: link {target!r}: {dest.relative_to(REPO)} does not exist"
            if anchor and dest.suffix == ".md":
                assert anchor in anchors(dest), f"{rel}: link {target!r}: no such heading"
            checked += 1
    assert checked > 20


def test_readme_is_short_and_links_every_doc() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 220, "README.md should stay short: move details to docs/"
    for doc in sorted(DOCS.glob("*.md")):
        assert f"](docs/{doc.name})" in text, f"README.md does not link docs/{doc.name}"


def test_readme_marks_the_two_commands() -> None:
    text = README.read_text()
    run = re.search(r"<!-- quickstart -->\s*```sh\n(.*?)```", text, re.S)
    assert run, "README.md: no ```sh block after <!-- quickstart -->"
    assert re.search(r"^\S.*poolproxy -c config/minimal\.yaml\s*$", run.group(1), re.M)
    assert "python3 -m venv" in run.group(1), "the run command must use a virtual environment"
    assert re.search(r"```sh\nbash scripts/test\.sh\n```", text), \
        "README.md: the test command `bash scripts/test.sh` must stay exactly that, in its own block"
