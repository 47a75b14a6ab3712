"""Sign-in and roles in the package: argon2 passwords, rate-limited sign-in, expiring sessions,
lead-only changes with an append-only audit trail, labels only by known users on their own leases
within the budget, undo of one's own state only, and the single sign-on email mapping."""

import sqlite3
import threading

import pytest
from conftest import OPERATOR, build_app_db, lease_and_label

from pivottrace import auth, store, views

PASSWORD = "correct horse battery"


@pytest.fixture
def db(tmp_path):
    """A routed pool (budget 10): lee (lead), ann and bob (annotators), without passwords."""
    return build_app_db(tmp_path / "a.db", n_problems=40, budget=10, seed=0)


def annotate_ids(db) -> list[str]:
    return [r[0] for r in db.execute("select problem_id from routes where route = 'annotate' order by value desc")]


# --------------------------------------------------------------------------- passwords and sign-in

def test_passwords_are_argon2_hashes_and_the_plain_text_is_stored_nowhere(db, tmp_path):
    auth.set_password(db, "lee", PASSWORD, by=OPERATOR)
    stored = store.user_record(db, "lee")["password_hash"]
    assert stored.startswith("$argon2id$")
    db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert PASSWORD.encode() not in (tmp_path / "a.db").read_bytes()
    with pytest.raises(auth.AuthError, match="at least 8"):
        auth.set_password(db, "lee", "short", by=OPERATOR)


def test_a_wrong_password_or_unknown_name_is_refused_with_one_message(db):
    auth.set_password(db, "lee", PASSWORD, by=OPERATOR)
    with pytest.raises(auth.AuthError) as wrong:
        auth.sign_in(db, "lee", PASSWORD + "!")
    with pytest.raises(auth.AuthError) as unknown:
        auth.sign_in(db, "nobody", PASSWORD)
    with pytest.raises(auth.AuthError):
        auth.sign_in(db, "ann", "")  # ann has no password: cannot sign in with one
    assert str(wrong.value) == str(unknown.value) == "Wrong name or password."
    session = auth.sign_in(db, "lee", PASSWORD)
    assert session.identity == auth.Identity("lee", "lead", "password")
    assert auth.session_identity(db, session.token).is_lead


def test_failed_sign_ins_are_rate_limited_per_name_and_the_limit_lifts_later(db):
    auth.set_password(db, "lee", PASSWORD, by=OPERATOR)
    auth.set_password(db, "ann", PASSWORD, by=OPERATOR)
    start = store.now()
    for k in range(auth.MAX_FAILED_SIGN_INS):
        with pytest.raises(auth.AuthError, match="Wrong name or password"):
            auth.sign_in(db, "lee", "guess-%d-xx" % k, at=start + k)
    with pytest.raises(auth.TooManyAttempts):  # locked: even the right password is refused
        auth.sign_in(db, "lee", PASSWORD, at=start + 10)
    assert auth.sign_in(db, "ann", PASSWORD, at=start + 10).identity.name == "ann"  # per name
    later = start + auth.FAILURE_WINDOW_SECONDS + 1
    assert auth.sign_in(db, "lee", PASSWORD, at=later).identity.name == "lee"
    # a good sign-in clears the count: one more failure does not lock again
    with pytest.raises(auth.AuthError, match="Wrong"):
        auth.sign_in(db, "lee", "another-guess", at=later + 1)
    assert auth.sign_in(db, "lee", PASSWORD, at=later + 2)
    # unknown names are counted as well (no free guessing of which names exist)
    for k in range(auth.MAX_FAILED_SIGN_INS):
        with pytest.raises(auth.AuthError):
            auth.sign_in(db, "ghost", "x" * 9, at=start + k)
    with pytest.raises(auth.TooManyAttempts):
        auth.sign_in(db, "ghost", "x" * 9, at=start + 6)


def test_sessions_expire_end_at_sign_out_and_at_a_password_change(db):
    auth.set_password(db, "ann", PASSWORD, by=OPERATOR)
    start = store.now()
    session = auth.sign_in(db, "ann", PASSWORD, at=start)
    assert auth.session_identity(db, session.token, at=start + 60).name == "ann"
    assert auth.session_identity(db, session.token, at=start + auth.SESSION_SECONDS + 1) is None
    assert auth.session_identity(db, "made-up-token") is None and auth.session_identity(db, None) is None
    auth.sign_out(db, session.token)
    assert auth.session_identity(db, session.token, at=start + 60) is None
    again = auth.sign_in(db, "ann", PASSWORD)
    auth.set_password(db, "ann", PASSWORD + "2", by="ann")  # her own change
    assert auth.session_identity(db, again.token) is None
    assert not db.execute("select count(*) from sessions where token_hash = ?", [again.token]).fetchone()[0]


def test_a_session_reads_the_role_as_it_is_now(db):
    auth.set_password(db, "ann", PASSWORD, by=OPERATOR)
    session = auth.sign_in(db, "ann", PASSWORD)
    store.set_role(db, "ann", "lead", by="lee")
    assert auth.session_identity(db, session.token).role == "lead"


def test_first_lead_gets_a_one_time_password_once(tmp_path):
    db = store.open_db(tmp_path / "first.db")
    name, password = auth.ensure_first_lead(db, operator=store.LocalOperator("me"))
    assert name == auth.FIRST_LEAD and len(password) >= 16
    assert auth.ensure_first_lead(db, operator=store.LocalOperator("me")) is None
    session = auth.sign_in(db, name, password)
    assert session.identity.is_lead and session.identity.must_change_password
    auth.set_password(db, name, PASSWORD, by=name)
    assert not auth.sign_in(db, name, PASSWORD).identity.must_change_password
    with pytest.raises(auth.AuthError):
        auth.sign_in(db, name, password)  # one time only


# --------------------------------------------------------------------------- roles and the audit trail

def test_only_a_lead_or_the_local_operator_manages_users(db):
    for stranger in ("ann", "nobody", None):
        with pytest.raises(store.PermissionDenied):
            store.add_user(db, "mallory", "lead", by=stranger)
        with pytest.raises(store.PermissionDenied):
            store.set_role(db, "ann", "lead", by=stranger)
    assert store.user_role(db, "mallory") is None and store.user_role(db, "ann") == "annotator"
    store.add_user(db, "zoe", "researcher", by="lee")
    store.add_user(db, "max", "annotator", by=store.LocalOperator("root"))
    assert (store.user_role(db, "zoe"), store.user_role(db, "max")) == ("researcher", "annotator")
    with pytest.raises(store.StoreError, match="local:"):
        store.add_user(db, "local:root", "lead", by="lee")


def test_re_adding_a_name_never_changes_its_role(db):
    with pytest.raises(store.StoreError, match="already exists"):
        store.add_user(db, "lee", "annotator", by="lee")
    with pytest.raises(store.StoreError, match="already exists"):
        auth.create_user(db, "lee", "annotator", by=OPERATOR, password=PASSWORD)
    assert store.user_role(db, "lee") == "lead"


def test_the_last_lead_cannot_be_demoted(db):
    with pytest.raises(store.PermissionDenied, match="last lead"):
        store.set_role(db, "lee", "annotator", by="lee")
    with pytest.raises(store.PermissionDenied, match="last lead"):
        store.set_role(db, "lee", "annotator", by=OPERATOR)
    store.set_role(db, "ann", "lead", by="lee")
    store.set_role(db, "lee", "annotator", by="ann")  # now there is another lead
    assert store.user_role(db, "lee") == "annotator"
    with pytest.raises(store.PermissionDenied):
        store.set_role(db, "lee", "lead", by="lee")  # no longer a lead: cannot promote himself


def test_budget_and_target_are_lead_only_and_every_change_is_audited(db):
    for who in ("ann", "nobody", None):
        with pytest.raises(store.PermissionDenied):
            store.set_budget(db, user=who, total=1000)
        with pytest.raises(store.PermissionDenied):
            views.set_target_precision(db, user=who, target=0.95)
    views.set_budget(db, user="lee", total=25, cost_per_label=2.5)
    views.set_target_precision(db, user="lee", target=0.95)
    store.add_user(db, "zoe", "annotator", by="lee", email="Zoe@Example.org")
    store.set_role(db, "zoe", "researcher", by=store.LocalOperator("root"))
    auth.set_password(db, "zoe", PASSWORD, by="lee")
    trail = [(r["actor"], r["action"], r["subject"], r["before"], r["after"]) for r in reversed(store.audit_trail(db))]
    assert trail == [
        ("local:tests", "user added", "lee", None, "lead"),
        ("local:tests", "user added", "ann", None, "annotator"),
        ("local:tests", "user added", "bob", None, "annotator"),
        ("lee", "budget", None, None, "10 labels"),
        ("lee", "budget", None, "10 labels", "25 labels at 2.5 per label"),
        ("lee", "target precision", None, "0.85", "0.95"),
        ("lee", "user added", "zoe", None, "annotator"),
        ("lee", "email", "zoe", None, "Zoe@Example.org"),
        ("local:root", "role", "zoe", "annotator", "researcher"),
        ("lee", "password", "zoe", None, "changed"),
    ]
    assert all(r["at"] > 0 for r in store.audit_trail(db))
    assert PASSWORD not in str(store.audit_trail(db))
    for sql in ("update audit set actor = 'ann'", "delete from audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(sql)
    assert len(store.audit_trail(db)) == len(trail)


# --------------------------------------------------------------------------- labels, leases and undo

def test_labels_need_a_known_labeller_and_their_own_lease(db):
    store.add_user(db, "zoe", "researcher", by="lee")
    top = annotate_ids(db)[0]
    for stranger in ("mallory", "zoe"):
        with pytest.raises(store.PermissionDenied):
            store.next_item(db, stranger)
        with pytest.raises(store.PermissionDenied):
            store.save_label(db, problem_id=top, annotator=stranger, verdict="correct")
    with pytest.raises(store.LeaseError, match="no lease"):  # nobody leased it
        store.save_label(db, problem_id=top, annotator="ann", verdict="correct")
    self_train = db.execute("select problem_id from routes where route != 'annotate'").fetchone()[0]  # self-train (or pending), low priority, deferred
    with pytest.raises(store.LeaseError, match="not in the annotation queue"):
        store.lease_item(db, self_train, "ann")
    with pytest.raises(store.LeaseError, match="no lease"):
        store.save_label(db, problem_id=self_train, annotator="ann", verdict="correct")
    held = store.next_item(db, "ann")["problem_id"]
    with pytest.raises(store.LeaseError, match="ann is labelling"):
        store.save_label(db, problem_id=held, annotator="bob", verdict="correct")
    store.save_label(db, problem_id=held, annotator="ann", verdict="correct")
    assert store.labels_spent(db) == 1 and store.user_role(db, "mallory") is None


def test_undo_takes_back_only_ones_own_label(db):
    ann_item = store.next_item(db, "ann")["problem_id"]
    store.save_label(db, problem_id=ann_item, annotator="ann", verdict="correct")
    with pytest.raises(store.NothingToUndo):
        store.undo_last_label(db, "bob")  # bob has nothing of his own; ann's label stays
    with pytest.raises(store.PermissionDenied):
        store.undo_last_label(db, "mallory")
    assert store.get_problem(db, ann_item)["verdict"] == "correct"
    assert store.undo_last_label(db, "ann")["problem_id"] == ann_item


def test_undoing_a_skip_never_takes_another_annotators_lease(db):
    store.add_user(db, "a4", "annotator", by="lee")
    store.add_user(db, "a5", "annotator", by="lee")
    x = store.next_item(db, "a4")["problem_id"]
    store.save_label(db, problem_id=x, annotator="a4", verdict="skip")
    assert store.next_item(db, "a5")["problem_id"] == x  # the best item, free again
    undone = store.undo_last_label(db, "a4")
    assert (undone["verdict"], undone["leased"]) == ("skip", False)
    store.save_label(db, problem_id=x, annotator="a5", verdict="correct")  # a5 still holds it
    assert store.get_problem(db, x)["verdict"] == "correct"
    assert not db.execute("select count(*) from skips where annotator = 'a4'").fetchone()[0]  # a4's skip is gone
    assert store.next_item(db, "a4")["problem_id"] != x


def test_undoing_a_skip_with_the_item_free_gives_it_back(db):
    x = store.next_item(db, "ann")["problem_id"]
    store.save_label(db, problem_id=x, annotator="ann", verdict="skip")
    assert store.undo_last_label(db, "ann")["leased"] is True
    assert store.next_item(db, "ann")["problem_id"] == x


def test_a_budget_cut_releases_leases_so_spent_never_passes_the_total(db):
    leased = {name: store.next_item(db, name)["problem_id"] for name in ("ann", "bob", "lee")}
    store.set_budget(db, user="lee", total=0)
    for name, problem_id in leased.items():
        with pytest.raises(store.LeaseError):
            store.save_label(db, problem_id=problem_id, annotator=name, verdict="correct")
    assert store.next_item(db, "ann") is None
    assert store.budget_status(db) == {"total": 0, "cost_per_label": 0.0, "spent": 0, "remaining": 0}

    store.set_budget(db, user="lee", total=2)
    leased = {name: store.next_item(db, name) for name in ("ann", "bob", "lee")}
    assert leased["lee"] is None  # two leases fill a budget of two
    store.save_label(db, problem_id=leased["ann"]["problem_id"], annotator="ann", verdict="correct")
    released = store.set_budget(db, user="lee", total=1)["released"]
    assert released == [leased["bob"]["problem_id"]]
    with pytest.raises(store.LeaseError):
        store.save_label(db, problem_id=leased["bob"]["problem_id"], annotator="bob", verdict="correct")
    with pytest.raises(store.StoreError, match="below"):
        store.set_budget(db, user="lee", total=0)  # one label is spent already
    status = store.budget_status(db)
    assert status["spent"] == 1 <= status["total"]


def test_an_undo_after_a_budget_cut_cannot_overspend(db):
    x = store.next_item(db, "ann")["problem_id"]
    store.save_label(db, problem_id=x, annotator="ann", verdict="correct")
    y = store.next_item(db, "bob")["problem_id"]
    store.set_budget(db, user="lee", total=2)
    assert store.undo_last_label(db, "ann")["leased"] is True  # her label's room comes back to her
    store.save_label(db, problem_id=x, annotator="ann", verdict="wrong", gold_answer="5")
    store.save_label(db, problem_id=y, annotator="bob", verdict="correct")
    assert store.budget_status(db)["spent"] == 2


def test_the_overspend_race_leaves_spent_within_the_total(tmp_path):
    """Three annotators, each on their own connection, label as fast as they can while the lead
    cuts the budget to 1 on a fourth: whatever the interleaving, spent <= total afterwards."""
    path = tmp_path / "race.db"
    db = build_app_db(path, n_problems=60, budget=30, seed=2)
    names = ["ann", "bob", "cat"]
    store.add_user(db, "cat", "annotator", by=OPERATOR)
    start = threading.Barrier(len(names) + 1)
    errors: list = []

    def annotate(name: str) -> None:
        conn = store.open_db(path)
        start.wait()
        for _ in range(10):
            item = store.next_item(conn, name)
            if item is None:
                return
            try:
                store.save_label(conn, problem_id=item["problem_id"], annotator=name, verdict="correct")
            except (store.LeaseError, store.BudgetSpent):
                pass  # the cut released or blocked it: the refusal is the point
            except Exception as err:  # anything else is a bug
                errors.append(err)
                return

    def cut() -> None:
        conn = store.open_db(path)
        start.wait()
        while True:
            try:
                store.set_budget(conn, user="lee", total=max(store.labels_spent(conn), 1))
                return
            except store.StoreError:  # a label landed between the count and the cut: cut again
                continue

    threads = [threading.Thread(target=annotate, args=(n,)) for n in names] + [threading.Thread(target=cut)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    status = store.budget_status(db)
    assert status["spent"] <= status["total"]
    # and nothing labelled afterwards can pass it either
    for name in names:
        item = store.next_item(db, name)
        if item is not None:
            try:
                store.save_label(db, problem_id=item["problem_id"], annotator=name, verdict="correct")
            except store.BudgetSpent:
                pass
    status = store.budget_status(db)
    assert status["spent"] <= status["total"]


def test_lease_and_label_helper_keeps_the_rules(db):
    self_train = db.execute("select problem_id from routes where route != 'annotate'").fetchone()[0]  # self-train (or pending), low priority, deferred
    with pytest.raises(store.LeaseError):
        lease_and_label(db, self_train, "ann", "correct")
    lease_and_label(db, annotate_ids(db)[0], "ann", "correct")
    assert store.labels_spent(db) == 1


# --------------------------------------------------------------------------- single sign-on mapping

def test_sso_maps_a_verified_email_to_a_pivottrace_user_and_role(db):
    store.set_email(db, "ann", "ann@example.org", by="lee")
    store.set_email(db, "lee", "Lee@Example.org", by="lee")
    assert auth.sso_user(db, {"email": "ANN@example.org", "email_verified": True}) == auth.Identity("ann", "annotator", "sso")
    assert auth.sso_user(db, {"email": "lee@example.org"}).is_lead  # no email_verified claim: trusted
    # the provider cannot hand out roles: a "role" claim is ignored
    assert auth.sso_user(db, {"email": "ann@example.org", "role": "lead", "groups": ["lead"]}).role == "annotator"
    for claims, message in (({"email": "ann@example.org", "email_verified": False}, "not verified"),
                            ({"email": "eve@example.org"}, "not a PivotTrace user"),
                            ({"name": "Ann"}, "no email"), ({}, "no email")):
        with pytest.raises(auth.AuthError, match=message):
            auth.sso_user(db, claims)
    now = store.now()  # a provider sign-in older than a session is refused (expiry holds for SSO too)
    assert auth.sso_user(db, {"email": "ann@example.org", "iat": now - 60}, at=now).name == "ann"
    with pytest.raises(auth.AuthError, match="expired"):
        auth.sso_user(db, {"email": "ann@example.org", "iat": now - auth.SESSION_SECONDS - 1}, at=now)
    session = auth.sign_in_sso(db, {"email": "ann@example.org"})
    assert auth.session_identity(db, session.token) == auth.Identity("ann", "annotator", "sso")
    with pytest.raises(store.StoreError, match="already belongs"):
        store.set_email(db, "bob", "ANN@example.org", by="lee")
    with pytest.raises(store.PermissionDenied):
        store.set_email(db, "ann", "x@example.org", by="ann")


def test_a_lease_on_an_item_routed_away_is_given_up_at_the_next_item(db):
    x = store.next_item(db, "ann")["problem_id"]
    version = store.router_versions(db)[-1]["id"]
    store.save_routes(db, [{"problem_id": x, "model_id": "synth", "route": "self_train",
                            "uncertainty": 0.1, "value": 0.0}], version)
    y = store.next_item(db, "ann")["problem_id"]
    assert y != x
    assert [r[0] for r in db.execute("select problem_id from assignments where annotator = 'ann'")] == [y]
    with pytest.raises(store.LeaseError):
        store.save_label(db, problem_id=x, annotator="ann", verdict="correct")


def test_step_labels_come_from_known_labellers_only(db):
    problem_id = db.execute("select problem_id from traces limit 1").fetchone()[0]
    store.add_user(db, "zoe", "researcher", by="lee")
    for stranger in ("mallory", "zoe"):
        with pytest.raises(store.PermissionDenied):
            store.save_step_label(db, problem_id=problem_id, annotator=stranger, first_wrong_step=0)
        with pytest.raises(store.PermissionDenied):
            store.undo_last_step_label(db, stranger)
    assert store.effective_step_labels(db) == []
