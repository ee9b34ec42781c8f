"""The warehouse extras (`segment_ops[postgres]`, `[snowflake]`, `[bigquery]`, `[redshift]`): each is
installed here, its dialect loads without connecting and compiles every example model and the change sensor's
probes in its own SQL, and a missing dialect or driver fails with a `WarehouseError` naming the extra to
install, never the URL's password. Snowflake, BigQuery and Redshift are not reachable from here; PostgreSQL
is, and runs the probes and the models' `LIMIT 0` for real (DuckDB's own tests run it end to end)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from segment_ops.engine import warehouse
from segment_ops.engine.warehouse import (
    WAREHOUSE_DRIVERS,
    WarehouseError,
    compile_queries,
    driver_sql,
    limit_zero,
    probe_statement,
    probe_tables,
)
from segment_ops.syncs.reverse_etl.defs import MODELS_DIR
from segment_ops.syncs.reverse_etl.model import ModelSpec, load_models

PASSWORD = "pw-Wh5ecret-0001"
WAREHOUSE_EXTRAS = ("postgres", "snowflake", "bigquery", "redshift")
EXAMPLE_MODELS = {"account_traits", "completed_orders", "fullstory_user_traits", "user_traits"}


@dataclass(frozen=True)
class Warehouse:
    extra: str
    url: str  # as a user would set WAREHOUSE_URL ({credentials}: BigQuery's service-account file)
    dialect: str  # SQLAlchemy's name of the dialect and its driver
    driver: str
    module: str  # a module the URL loads: blocked in sys.modules, it stands for a package not installed
    quote: str  # how the dialect quotes an identifier that needs it


WAREHOUSES = [
    Warehouse("postgres", f"postgresql://segment_ops:{PASSWORD}@warehouse.example.com:5432/analytics",
              "postgresql", "psycopg", "psycopg", '"'),
    Warehouse("snowflake", f"snowflake://segment_ops:{PASSWORD}@acme-xy12345/ANALYTICS/PUBLIC"
                           "?warehouse=TRANSFORMING&role=SEGMENT_OPS", "snowflake", "snowflake",
              "snowflake.sqlalchemy", '"'),
    Warehouse("bigquery", "bigquery://acme-analytics/segment_models?credentials_path={credentials}",
              "bigquery", "bigquery", "sqlalchemy_bigquery", "`"),
    Warehouse("redshift", f"redshift://segment_ops:{PASSWORD}@acme.abc123xyz.us-east-1.redshift.amazonaws.com"
                          ":5439/analytics", "redshift", "psycopg2", "psycopg2", '"'),
]


def declared_extras() -> dict[str, list[Requirement]]:
    """Each extra of the installed segment_ops (its metadata, as pip installed it) and its requirements."""
    extras: dict[str, list[Requirement]] = {
        name: [] for name in importlib.metadata.metadata("segment_ops").get_all("Provides-Extra") or []}
    for line in importlib.metadata.requires("segment_ops") or []:
        requirement = Requirement(line)
        for extra in extras:
            if requirement.marker is not None and requirement.marker.evaluate({"extra": extra}):
                extras[extra].append(requirement)
    return extras


def unsatisfied(requirement: Requirement, seen: frozenset[str] = frozenset()) -> list[str]:
    """Why `requirement` is not met in this environment, with its own extras' requirements (none: it is)."""
    name = canonicalize_name(requirement.name)
    if name in seen:
        return []
    try:
        installed = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return [f"{requirement}: not installed"]
    if not requirement.specifier.contains(installed, prereleases=True):
        return [f"{requirement}: {installed} is installed"]
    problems = []
    for line in importlib.metadata.requires(requirement.name) or []:
        needed = Requirement(line)
        marker = needed.marker
        if marker is not None and any(marker.evaluate({"extra": e}) for e in requirement.extras) \
                and not marker.evaluate({"extra": ""}):  # what the requirement's extras add
            problems += unsatisfied(needed, seen | {name})
    return problems


@pytest.mark.parametrize("extra", WAREHOUSE_EXTRAS)
def test_each_warehouse_has_its_extra(extra: str):
    assert declared_extras().get(extra), f"segment_ops[{extra}] is not declared (or empty) in the metadata"


def test_the_missing_driver_errors_name_only_declared_extras():
    assert {driver.extra for driver in WAREHOUSE_DRIVERS.values()} == set(WAREHOUSE_EXTRAS)
    assert set(WAREHOUSE_EXTRAS) <= set(declared_extras())


# What `.[dev]` installs (the README's test command, and CI's): the warehouse extras, and dev's own.
@pytest.mark.parametrize("extra", sorted({*WAREHOUSE_EXTRAS, "deploy", "dev"}))
def test_every_extra_dev_installs_is_satisfied_here(extra: str):
    problems = [p for r in declared_extras()[extra] if canonicalize_name(r.name) != "segment-ops"
                for p in unsatisfied(r)]

    assert problems == []


def test_dev_pulls_in_every_warehouse_extra():
    """CI installs `.[dev]` from scratch: that install is what proves each extra installs."""
    itself = [r for r in declared_extras()["dev"] if canonicalize_name(r.name) == "segment-ops"]

    assert set(WAREHOUSE_EXTRAS) <= {extra for r in itself for extra in r.extras}


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BigQuery service-account key file of a made-up account (a fresh RSA key: the Google client parses
    it when the engine is created, and never uses it here)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = tmp_path_factory.mktemp("bigquery") / "service-account.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "acme-analytics", "private_key_id": "0" * 40,
        "private_key": key.decode(), "client_email": "segment-ops@acme-analytics.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"}))
    return path


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to resolve or reach a host fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"tried to reach the network: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(params=WAREHOUSES, ids=[w.extra for w in WAREHOUSES])
def target(request: pytest.FixtureRequest, credentials: Path) -> Warehouse:
    spec: Warehouse = request.param
    return Warehouse(**{**spec.__dict__, "url": spec.url.format(credentials=credentials)})


@pytest.fixture
def engine(target: Warehouse, no_network: None) -> Iterator[sa.Engine]:
    """The engine the project creates for the warehouse's URL (nothing connects)."""
    engine = warehouse.create_engine(target.url)
    yield engine
    engine.dispose()


def example_models() -> list[ModelSpec]:
    models = load_models(MODELS_DIR)
    assert all(isinstance(m, ModelSpec) for m in models), models
    assert {m.name for m in models} >= EXAMPLE_MODELS
    return [m for m in models if isinstance(m, ModelSpec)]


def test_the_extras_dialect_and_driver_load_without_connecting(target: Warehouse, engine: sa.Engine):
    assert (engine.dialect.name, engine.dialect.driver) == (target.dialect, target.driver)
    sa.create_engine(target.url).dispose()  # SQLAlchemy's own create_engine does not connect either


def test_every_example_model_compiles_for_the_dialect_as_the_preflight_sends_it(engine: sa.Engine):
    assert engine.dialect.paramstyle == "pyformat"  # all four drivers: `%` must be doubled
    for model in example_models():
        sent = driver_sql(engine.dialect, limit_zero(model.sql))  # what `compile_queries` runs
        compiled = str(sa.text(limit_zero(model.sql)).compile(dialect=engine.dialect))

        assert sent == compiled, model.name  # SQLAlchemy's compile for the dialect says the same
        assert sent.startswith("SELECT * FROM (") and sent.endswith("\n) AS model_query LIMIT 0")
        assert model.sql.replace("%", "%%") in sent
        if model.name == "user_traits":
            assert "LIKE '%%_@_%%._%%'" in sent


def test_the_sensors_probes_quote_names_as_the_dialect_does(target: Warehouse, engine: sa.Engine):
    q = target.quote
    plain = (lambda name: f"`{name}`") if q == "`" else (lambda name: name)  # BigQuery quotes every name
    for model in example_models():
        for table in model.depends_on:
            assert probe_statement(engine.dialect, table, model.probe) == (
                f"SELECT count(*), max({plain(model.probe)}) FROM {plain(table)}")
            assert probe_statement(engine.dialect, table, None) == f"SELECT count(*) FROM {plain(table)}"

    assert probe_statement(engine.dialect, "Analytics.Order", "UpdatedAt") == (
        f"SELECT count(*), max({q}UpdatedAt{q}) FROM {q}Analytics{q}.{q}Order{q}")


# --- a missing dialect or driver ------------------------------------------------------------------------

def test_a_missing_driver_names_the_extra_to_install(target: Warehouse, no_network: None,
                                                     monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, target.module, None)  # `import <module>` raises ModuleNotFoundError

    with pytest.raises(WarehouseError) as raised:
        warehouse.create_engine(target.url)

    message = str(raised.value)
    assert f"pip install 'segment_ops[{target.extra}]'" in message
    assert f"WAREHOUSE_URL ({sa.engine.make_url(target.url).drivername}://)" in message
    assert f"the Python module {target.module} is not installed" in message
    assert PASSWORD not in message and "credentials_path" not in message


def test_an_uninstalled_dialect_package_names_its_extra(monkeypatch: pytest.MonkeyPatch, no_network: None):
    """As with snowflake-sqlalchemy not installed: SQLAlchemy finds no entry point for `snowflake`."""
    from sqlalchemy.util import compat

    entry_points = compat.importlib_metadata_get
    monkeypatch.delitem(sa.dialects.registry.impls, "snowflake", raising=False)  # SQLAlchemy's cache
    monkeypatch.setattr(compat, "importlib_metadata_get",
                        lambda group: [e for e in entry_points(group) if not e.name.startswith("snowflake")])

    with pytest.raises(WarehouseError, match=r"no SQLAlchemy dialect for snowflake is installed; install it "
                                             r"with: pip install 'segment_ops\[snowflake\]'$") as raised:
        warehouse.create_engine(WAREHOUSES[1].url)

    assert "snowflake-sqlalchemy" in str(raised.value) and PASSWORD not in str(raised.value)


@pytest.mark.parametrize(("url", "install"), [
    ("postgresql+psycopg2://segment_ops:{password}@db.example.com/analytics",
     "pip install 'segment_ops[postgres]' psycopg2-binary"),
    ("redshift+redshift_connector://segment_ops:{password}@acme.example.com:5439/analytics",
     "pip install 'segment_ops[redshift]' redshift_connector"),
])
def test_a_driver_the_extra_does_not_bring_is_named_beside_it(url: str, install: str,
                                                              monkeypatch: pytest.MonkeyPatch):
    for module in ("psycopg2", "redshift_connector"):
        monkeypatch.setitem(sys.modules, module, None)

    with pytest.raises(WarehouseError) as raised:
        warehouse.create_engine(url.format(password=PASSWORD))

    assert str(raised.value).endswith(f"install it with: {install}")
    assert PASSWORD not in str(raised.value)


def test_a_scheme_without_an_extra_says_its_dialect_package_is_needed():
    with pytest.raises(WarehouseError) as raised:
        warehouse.create_engine(f"clickhouse://segment_ops:{PASSWORD}@ch.example.com/analytics")

    message = str(raised.value)
    assert message.startswith("WAREHOUSE_URL (clickhouse://) cannot be used: no SQLAlchemy dialect for "
                              "clickhouse is installed; install the SQLAlchemy dialect package for "
                              "clickhouse")
    assert "segment_ops[" not in message and PASSWORD not in message


def test_the_postgres_spelling_of_the_scheme_is_corrected():
    with pytest.raises(WarehouseError, match=r"write postgresql:// instead of postgres://$") as raised:
        warehouse.create_engine(f"postgres://segment_ops:{PASSWORD}@db.example.com/analytics")

    assert PASSWORD not in str(raised.value)


@pytest.mark.slow
def test_bigquery_without_credentials_is_a_warehouse_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The BigQuery dialect looks for credentials when the engine is made (Google's client asks a cloud VM's
    metadata server last: here a closed local port): their absence is said as such."""
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no gcloud application-default credentials
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")

    with pytest.raises(WarehouseError, match=r"^WAREHOUSE_URL \(bigquery://\) cannot be used: .*credentials"):
        warehouse.create_engine("bigquery://acme-analytics/segment_models")


def check_warehouse(tmp_path: Path, url: str, *, blocked: str | None = None) -> str:
    """`segment-ops check --only warehouse` in a subprocess with WAREHOUSE_URL=`url` (and the module
    `blocked` as if not installed): the text of the warehouse row's result cell, on one line."""
    home = tmp_path / "home"
    home.mkdir()
    code = (f"import sys; sys.modules[{blocked!r}] = None; " if blocked else "import sys; ") + \
        "from segment_ops.cli import main; sys.exit(main(['check', '--only', 'warehouse']))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SEGMENT_OPS_HOME": str(home), "WAREHOUSE_URL": url})
    assert done.returncode == 1, done.stdout + done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
    starts = [i for i, char in enumerate(lines[rule]) if char == "-" and lines[rule][i - 1:i] in ("", " ")]
    rows = lines[rule + 1:lines.index("", rule)]  # the table wraps each cell over several lines
    assert rows[0].split()[:2] == ["warehouse", "WAREHOUSE_URL"]
    return " ".join(" ".join(row[starts[2]:starts[3]].split()) for row in rows)


@pytest.mark.slow
def test_check_names_the_extra_when_the_postgres_driver_is_missing(tmp_path: Path):
    result = check_warehouse(tmp_path, f"postgresql://segment_ops:{PASSWORD}@127.0.0.1:9/analytics",
                             blocked="psycopg")

    assert result.startswith("FAIL")
    assert ("WAREHOUSE_URL (postgresql://) needs psycopg, but the Python module psycopg is not installed; "
            "install it with: pip install 'segment_ops[postgres]'") in result


@pytest.mark.slow
def test_check_says_a_scheme_without_a_dialect_needs_its_package(tmp_path: Path):
    result = check_warehouse(tmp_path, f"clickhouse://segment_ops:{PASSWORD}@127.0.0.1:9/analytics")

    assert result.startswith("FAIL")
    assert ("WAREHOUSE_URL (clickhouse://) cannot be used: no SQLAlchemy dialect for clickhouse is "
            "installed; install the SQLAlchemy dialect package for clickhouse") in result


# --- PostgreSQL, end to end -----------------------------------------------------------------------------

PG = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """WAREHOUSE_URL of a fresh PostgreSQL schema holding the example models' tables (two rows in
    customers) and a mixed-case table, dropped afterwards."""
    import psycopg

    from segment_ops_tests.reverse_etl.test_postgres import TABLES

    schema = f"segment_ops_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as pg:
        pg.execute(f"CREATE SCHEMA {schema}")
        try:
            for table, columns in TABLES.items():
                pg.execute(f"CREATE TABLE {schema}.{table} ({columns})")
            pg.execute(f"INSERT INTO {schema}.customers (user_id, updated_at) VALUES "
                       "('u1', '2026-01-02 03:04:05+00'), ('u2', NULL)")
            pg.execute(f'CREATE TABLE {schema}."Order" ("UpdatedAt" integer)')
            pg.execute(f'INSERT INTO {schema}."Order" VALUES (7)')
        except BaseException:
            pg.execute(f"DROP SCHEMA {schema} CASCADE")
            raise
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}%20-ctimezone%3DUTC"
    finally:
        with psycopg.connect(PG, autocommit=True) as pg:
            pg.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.mark.postgres
def test_postgresql_answers_the_probes_and_compiles_every_example_model(pg_schema: str):
    models = example_models()

    markers = probe_tables(pg_schema, [("customers", "updated_at"), ("orders", None), ("Order", "UpdatedAt")])
    columns = compile_queries(pg_schema, {m.name: m.sql for m in models})

    assert markers == {"customers.max(updated_at)": "2|2026-01-02T03:04:05+00:00", "orders": "0",
                       "Order.max(UpdatedAt)": "1|7"}
    for model in models:
        assert not isinstance(columns[model.name], Exception), columns[model.name]
        model.check_columns(columns[model.name])


def test_installed_from_a_checkout_the_hint_also_says_how_to_install_from_it():
    # `pip install 'segment_ops[postgres]'` asks an index for segment_ops; an editable install (this
    # test run's, `pip install -e .`) is told the command that takes the extra from its own folder.
    from segment_ops.engine.warehouse import WAREHOUSE_DRIVERS, _editable_checkout

    checkout = _editable_checkout()
    hint = WAREHOUSE_DRIVERS["postgresql"].install

    assert hint.startswith("pip install 'segment_ops[postgres]'")
    if checkout is None:
        assert "-e" not in hint
    else:
        assert Path(checkout) == Path(__file__).resolve().parents[2]  # the folder holding pyproject.toml
        assert hint.endswith(f"(from this checkout: pip install -e '{checkout}[postgres]')")
