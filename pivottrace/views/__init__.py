"""What the app's pages show, computed: one module per page (mirroring pages/) plus common.py.

Pages and app.py import only `pivottrace.views` (and `pivottrace.charts`); every name they use is
re-exported here, so `views.x` works whichever module defines x. View-models, escaped HTML
snippets and guarded actions; it never calls Streamlit, never builds figures and runs no SQL.
"""

from __future__ import annotations

from .common import (  # noqa: F401
    SIGNAL_NAMES, SCORE_COLOUR_SPAN, PREVIEW_CHARS, InvalidInput, esc, md, preview, db_path,
    StepView, build_steps, score_colour, steps_html, problem_html, open_db, StoreError, ROLES,
    user_role, user_rows, is_empty, JobError, JOB_ACTIVE, active_jobs, refresh_jobs,
    cancel_job, start_demo_job, start_trace_job, start_route_job, start_eval_job,
    TRACE_DEVICES, TRACE_DTYPES,
    JOB_TITLES, JobProgress, running_jobs, latest_job, demo_description,
)
from ..models import DEFAULT_SPEC  # noqa: F401
from ..vocab import ROUTE_MEANINGS, ROUTES, VERDICTS, Route, Verdict, route_name, route_summary  # noqa: F401
from .annotate import (  # noqa: F401
    ACTIONS, Candidate, QueueItemView, candidates_from, item_view, next_item, LabelOutcome,
    submit_label, undo_last, Progress, progress, seconds_since,
    STEP_KEYS, StepMarkView, step_mark_target, mark_first_wrong_step, undo_step_mark,
)
from .inspect import (  # noqa: F401
    TOKEN_ENTROPY_SPAN, ROUTE_CHOICES, SORT_CHOICES, trace_models, ROUTE_LABELS, INSPECT_LIMIT,
    ProblemMatches, find_problems, TraceView, trace_view, trace_live, token_colour,
    step_tokens_html, attention_targets, compare_rows,
)
from .budget import (  # noqa: F401
    BudgetView, budget_view, route_mix_series, router_history, filled_columns,
    current_target_precision, set_budget, set_target_precision, MIN_TARGET_PRECISION,
    band_state, band_rows, current_delta,
    route_rows, budget_explanation, AgreementView, agreement_view,
    annotator_rows, set_overlap_share, ReviewItem, review_queue, resolve_review,
)
from .pool import (  # noqa: F401
    ingest_upload, rejected_rows, pool_summary,
)
from .signin import (  # noqa: F401
    AuthError, Identity, SESSION_KEY, MIN_PASSWORD_CHARS, POOL_ROLES, sign_in, sign_in_sso, session_identity,
    sign_out, change_password, add_person, set_person_role, may_label, may_change_pool, audit_rows,
)
from .evaluation import (  # noqa: F401
    evaluation_folder, EvaluationView, evaluation_view, step_localisation_rows, evaluation_blocker,
)
