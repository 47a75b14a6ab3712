"""Who is signed in: passwords (argon2), rate-limited sign-in, expiring sessions, single sign-on.

Input: a database and what a person typed (name and password) or what the identity provider said
(OIDC claims). Output: a Session whose token the app keeps in its server-side session state, and
the Identity (name and role) a token stands for while it is valid. Every SQL statement runs in
store.py; this module hashes, compares and decides. It does not decide what a role may do: the
store checks that inside each change's transaction.
"""

from __future__ import annotations

import getpass
import hashlib
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from . import store

MIN_PASSWORD_CHARS = 8  # NIST SP 800-63B's floor for a password a person chose
MAX_PASSWORD_CHARS = 256  # argon2 takes any length; this stops a megabyte "password" from costing CPU
MAX_FAILED_SIGN_INS = 5  # per name, within FAILURE_WINDOW_SECONDS and since the last good sign-in
FAILURE_WINDOW_SECONDS = 15 * 60  # a locked name opens again once its oldest counted failure is this old
SESSION_SECONDS = 8 * 3600  # a working day: a session left signed in overnight has to sign in again
TOKEN_BYTES = 32  # 256 random bits per session token
FIRST_LEAD = "admin"  # the lead `pivottrace app` creates when no lead can sign in yet
SSO = "sso"
PASSWORD = "password"

_hasher = PasswordHasher()  # argon2id with the library's RFC 9106 defaults
_DUMMY_HASH = _hasher.hash("no such user")  # verified against for unknown names: same time either way


class AuthError(store.StoreError):
    """Sign-in refused (the message never says whether the name or the password was wrong)."""


class TooManyAttempts(AuthError):
    """Too many failed sign-ins for this name; it opens again after a while."""


@dataclass(frozen=True)
class Identity:
    """A signed-in person: their user name, their role now, and how they signed in."""
    name: str
    role: str
    via: str = PASSWORD
    must_change_password: bool = False

    @property
    def is_lead(self) -> bool:
        return self.role == "lead"


@dataclass(frozen=True)
class Session:
    token: str  # the secret the app keeps; only its sha256 is stored
    identity: Identity
    expires_at: float


# --------------------------------------------------------------------------- passwords

def hash_password(password: str) -> str:
    """An argon2id hash of a password that passes the length rules."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise AuthError(f"A password needs at least {MIN_PASSWORD_CHARS} characters.")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AuthError(f"A password has at most {MAX_PASSWORD_CHARS} characters.")
    return _hasher.hash(password)


def one_time_password() -> str:
    """A random password to hand over once (about 96 bits); its owner sets their own after."""
    return secrets.token_urlsafe(12)


def create_user(db, name: str, role: str, *, by, password: str | None = None, email: str | None = None,
                one_time: bool = False) -> None:
    """Add a user with a hashed password (None: single sign-on only, or a password set later).
    `by` is the signed-in lead or the store.LocalOperator; store.add_user checks it."""
    password_hash = hash_password(password) if password is not None else None
    store.add_user(db, name, role, by=by, password_hash=password_hash, email=email,
                   must_change_password=one_time)


def set_password(db, name: str, password: str, *, by, one_time: bool = False) -> None:
    """Set a user's password: themselves, a lead or the local operator. Ends their sessions."""
    store.set_password_hash(db, name, hash_password(password), by=by, must_change_password=one_time)


def ensure_first_lead(db, *, operator: store.LocalOperator) -> tuple[str, str] | None:
    """When no lead can sign in with a password, make one: (name, one-time password) to show once.

    The account is FIRST_LEAD (created as a lead, or given a password when it exists without one);
    its password must be changed at the first sign-in. None when a lead can already sign in.
    """
    if store.leads_with_password(db):
        return None
    password = one_time_password()
    record = store.user_record(db, FIRST_LEAD)
    if record is None:
        create_user(db, FIRST_LEAD, "lead", by=operator, password=password, one_time=True)
    elif record["role"] == "lead":
        set_password(db, FIRST_LEAD, password, by=operator, one_time=True)
    else:
        raise AuthError(f"No lead can sign in and {FIRST_LEAD!r} is a {record['role']}: "
                        "run `pivottrace users add NAME --role lead`.")
    return FIRST_LEAD, password


def read_password(*, stdin_text: str | None = None, prompt: str = "Password") -> str:
    """A new password from stdin text (--password-stdin: the first line) or typed twice at a prompt."""
    if stdin_text is not None:
        return stdin_text.splitlines()[0] if stdin_text.strip() else ""
    first = getpass.getpass(f"{prompt}: ")
    if getpass.getpass(f"{prompt} (again): ") != first:
        raise AuthError("The two passwords differ.")
    return first


# --------------------------------------------------------------------------- sign-in and sessions

def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def sign_in(db, name: str, password: str, *, at: float | None = None) -> Session:
    """Check a name and password and open a session.

    Failed attempts are stored per name; after MAX_FAILED_SIGN_INS of them within
    FAILURE_WINDOW_SECONDS the name is refused (even with the right password) until the oldest
    counted failure leaves the window. Unknown names are checked against a dummy hash and
    counted too, so neither the time taken nor the message tells which names exist.
    """
    at = store.now() if at is None else at
    name = (name or "").strip()
    password = password if isinstance(password, str) else ""
    failures = store.failed_sign_ins(db, name, since=at - FAILURE_WINDOW_SECONDS)
    if len(failures) >= MAX_FAILED_SIGN_INS:
        wait = failures[-MAX_FAILED_SIGN_INS] + FAILURE_WINDOW_SECONDS - at
        raise TooManyAttempts(f"Too many failed sign-ins for this name; try again in {max(wait / 60, 1):.0f} minutes.")
    record = store.user_record(db, name) if name else None
    stored = record["password_hash"] if record and record["password_hash"] else None
    ok = False
    try:
        ok = _hasher.verify(stored or _DUMMY_HASH, password[:MAX_PASSWORD_CHARS]) and stored is not None
    except (VerificationError, InvalidHashError):
        ok = False
    store.record_sign_in(db, name, ok=ok, at=at)
    if not ok:
        raise AuthError("Wrong name or password.")
    if _hasher.check_needs_rehash(stored):
        store.rehash_password(db, name, _hasher.hash(password))
    return _open_session(db, name, via=PASSWORD, at=at)


def _open_session(db, name: str, *, via: str, at: float) -> Session:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires_at = at + SESSION_SECONDS
    store.create_session(db, token_hash=_token_hash(token), user=name, via=via, expires_at=expires_at)
    identity = session_identity(db, token, at=at)
    return Session(token, identity, expires_at)


def session_identity(db, token: str | None, *, at: float | None = None) -> Identity | None:
    """Who this session token signs in, with their role as it is now; None when the token is
    unknown, signed out, expired, or its user is gone."""
    if not token or not isinstance(token, str):
        return None
    row = store.session_record(db, _token_hash(token))
    at = store.now() if at is None else at
    if row is None or row["ended_at"] is not None or row["expires_at"] <= at:
        return None
    return Identity(row["user"], row["role"], row["via"], bool(row["must_change_password"]))


def sign_out(db, token: str | None) -> None:
    if token:
        store.end_session(db, _token_hash(token))


# --------------------------------------------------------------------------- single sign-on

def sso_user(db, claims: dict, *, at: float | None = None) -> Identity:
    """Map an OpenID Connect identity (the claims Streamlit's st.user holds) to a PivotTrace user.

    The provider's `email` must be present and, when the provider says so, verified
    (`email_verified` false is refused). It is matched case-insensitively to a user's email; the
    role is PivotTrace's, never the provider's. An unknown email signs nobody in: a lead adds
    people (`pivottrace users add NAME --email ...`), there is no self-registration. A sign-in
    older than SESSION_SECONDS (the ID token's `iat`) is refused, so single sign-on sessions
    expire like password ones instead of living as long as Streamlit's identity cookie.
    """
    at = store.now() if at is None else at
    issued = (claims or {}).get("iat")
    if isinstance(issued, (int, float)) and at - issued > SESSION_SECONDS:
        raise AuthError("Your single sign-on session has expired; sign in again.")
    email = str((claims or {}).get("email") or "").strip()
    if not email:
        raise AuthError("The identity provider sent no email address, so no PivotTrace user matches.")
    if claims.get("email_verified") is False:
        raise AuthError(f"The identity provider has not verified {email}.")
    user = store.user_by_email(db, email)
    if user is None:
        raise AuthError(f"{email} is not a PivotTrace user; ask a lead to add you with this email.")
    return Identity(user["name"], user["role"], SSO)


def sign_in_sso(db, claims: dict, *, at: float | None = None) -> Session:
    """A PivotTrace session for the user the provider's claims map to (same expiry as a password one)."""
    at = store.now() if at is None else at
    identity = sso_user(db, claims, at=at)
    return _open_session(db, identity.name, via=SSO, at=at)
