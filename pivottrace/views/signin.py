"""Sign-in for the app: sessions, passwords, single sign-on and people, as the app's sidebar and
sign-in page use them.

Input: an open store database, what a person typed, or the identity provider's claims. Output:
session tokens (kept by the app in Streamlit's server-side session state only), the Identity a
token stands for, one-time passwords to hand over, and audit rows for a table. Every refusal is
an AuthError with a message for the person. It never calls Streamlit and runs no SQL: auth.py
hashes and decides, store.py checks roles inside each change.
"""

from __future__ import annotations

import datetime as dt

from .. import auth, store

AuthError = auth.AuthError  # every refusal below, with a message for the person
Identity = auth.Identity
SESSION_KEY = "auth_token"  # where the app keeps the session token: server-side session state only
MIN_PASSWORD_CHARS = auth.MIN_PASSWORD_CHARS
POOL_ROLES = ("lead", "researcher")  # who may ingest, trace and route from the app


def _refusal(err: store.StoreError) -> AuthError:
    return err if isinstance(err, AuthError) else AuthError(str(err))


def sign_in(db, name: str | None, password: str | None) -> str:
    """A session token for a good name and password (AuthError otherwise, rate-limited)."""
    return auth.sign_in(db, name or "", password or "").token


def sign_in_sso(db, claims: dict) -> str:
    """A session token for the PivotTrace user the identity provider's email maps to."""
    return auth.sign_in_sso(db, claims).token


def session_identity(db, token: str | None) -> auth.Identity | None:
    """Who the session token signs in (role as it is now); None when expired, ended or unknown."""
    return auth.session_identity(db, token)


def sign_out(db, token: str | None) -> None:
    auth.sign_out(db, token)


def change_password(db, me: auth.Identity, password: str | None, again: str | None) -> None:
    """The signed-in user sets their own password (typed twice); their sessions end."""
    if (password or "") != (again or ""):
        raise AuthError("The two passwords differ.")
    try:
        auth.set_password(db, me.name, password or "", by=me.name)
    except store.StoreError as err:
        raise _refusal(err) from None


def add_person(db, me: auth.Identity, name: str | None, role: str | None, email: str | None = None) -> str:
    """A lead adds a person with a one-time password, returned to be handed over once."""
    password = auth.one_time_password()
    try:
        auth.create_user(db, name or "", role or "", by=me.name, password=password, email=email or None,
                         one_time=True)
    except store.StoreError as err:
        raise _refusal(err) from None
    return password


def set_person_role(db, me: auth.Identity, name: str | None, role: str | None) -> None:
    """A lead changes someone's role (never the last lead's away)."""
    try:
        store.set_role(db, name or "", role or "", by=me.name)
    except store.StoreError as err:
        raise _refusal(err) from None


def may_label(me: auth.Identity | None) -> bool:
    return me is not None and me.role in store.LABELLER_ROLES


def may_change_pool(me: auth.Identity | None) -> bool:
    return me is not None and me.role in POOL_ROLES


def audit_rows(db, *, limit: int = 200) -> list[dict]:
    """The audit trail for a table, newest first: time, who, what, of whom, from, to."""
    return [{"time": dt.datetime.fromtimestamp(r["at"]), "who": r["actor"], "what": r["action"],
             "subject": r["subject"] or "", "from": r["before"] or "", "to": r["after"] or ""}
            for r in store.audit_trail(db, limit=limit)]
