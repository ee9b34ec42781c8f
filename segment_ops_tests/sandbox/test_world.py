"""The shared demo world: its population of users and accounts."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd

from segment_ops.sandbox.demo_data import DemoConfig, DemoData
from segment_ops_tests.sandbox.conftest import NOW, SMALL


def test_same_seed_gives_identical_population_whatever_now() -> None:
    a = DemoData(SMALL, now=NOW)
    b = DemoData(SMALL, now=NOW + timedelta(days=3, minutes=7))
    pd.testing.assert_frame_equal(a.users, b.users)
    pd.testing.assert_frame_equal(a.accounts, b.accounts)


def test_different_seed_gives_different_population(data: DemoData) -> None:
    other = DemoData(DemoConfig(seed=8, scale=0.1), now=NOW)
    assert not data.users["email"].equals(other.users["email"])
    assert not data.accounts["name"].equals(other.accounts["name"])


def test_sizes_grow_linearly_with_scale() -> None:
    small, double = DemoData(DemoConfig(scale=0.1), now=NOW), DemoData(DemoConfig(scale=0.2), now=NOW)
    assert len(small.users) == 201  # 200 users plus the duplicated row
    assert len(double.users) == 401
    assert (len(small.accounts), len(double.accounts)) == (15, 30)


def test_frames_have_the_documented_columns_and_types(data: DemoData) -> None:
    users, accounts = data.users, data.accounts
    assert list(users.columns) == ["user_id", "anonymous_id", "email", "name", "account_id", "plan",
                                   "country", "created_at", "updated_at", "is_active"]
    assert list(accounts.columns) == ["account_id", "name", "plan", "seats", "industry", "mrr", "created_at",
                                      "updated_at"]
    for frame in (users, accounts):
        for column in ("created_at", "updated_at"):
            assert str(frame[column].dt.tz) == "UTC"
    assert users["is_active"].dtype == bool
    assert accounts["seats"].dtype.kind == "i" and accounts["mrr"].dtype.kind == "f"


def test_ids_follow_the_documented_formats(data: DemoData) -> None:
    known = data.users["user_id"].dropna()
    assert known.str.fullmatch(r"usr_\d{7}").all()
    assert data.accounts["account_id"].str.fullmatch(r"acc_\d{5}").all()
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    assert data.users["anonymous_id"].str.fullmatch(uuid).all()
    assert data.users["anonymous_id"].iloc[:-1].is_unique  # the last row is the duplicated user


def test_anonymous_visitors_have_no_user_id_name_or_account(data: DemoData) -> None:
    anonymous = data.users[data.users["user_id"].isna()]
    assert len(anonymous) > 0
    assert anonymous["user_id"].map(lambda v: v is None).all()
    assert anonymous["name"].isna().all() and anonymous["account_id"].isna().all()
    assert anonymous["anonymous_id"].notna().all()
    assert anonymous["email"].notna().any(), "some anonymous visitors are leads with an email"


def test_identified_users_without_email_exist(data: DemoData) -> None:
    users = data.users
    assert (users["user_id"].notna() & users["email"].isna()).any()


def test_malformed_records_exist(data: DemoData) -> None:
    users = data.users
    assert (users["email"] == "not-an-email").sum() == 1
    messy = users["email"].dropna().map(lambda e: e != e.strip() or e != e.lower())
    assert messy.sum() == 1
    assert (users["name"] == "Zoë 🚀 Ångström").sum() == 1
    assert (users["created_at"] > NOW).sum() == 1
    duplicated = users["user_id"].dropna()
    assert duplicated.duplicated().sum() == 1
    copies = users[users["user_id"] == duplicated[duplicated.duplicated()].iloc[0]]
    assert copies["email"].nunique() == 2 and copies.index[-1] == len(users) - 1


def test_some_accounts_have_no_users(data: DemoData) -> None:
    used = set(data.users["account_id"].dropna())
    assert set(data.accounts["account_id"]) - used

