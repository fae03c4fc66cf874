"""`hpclab up --reuse` (or `reuse = true` in the profile): a running session of the same
profile is attached to instead of submitting a new job; with none, `up` starts one as usual.

    found = running_session(ctx, profile)   # an open Attachment, or None: then submit
"""

from __future__ import annotations

from .errors import JobEndedError, JobFailedError
from .profiles import Profile
from .session import Attachment, Context


def running_session(ctx: Context, profile: Profile) -> Attachment | None:
    """The newest session of `profile` on its login node whose lab answers through its tunnel
    (brought back if need be, exactly as `attach` does), or None. Only sessions whose Jupyter
    is known are tried: one still starting belongs to an `up` that has not finished. A session
    whose job has ended is forgotten on the way (as `attach` does); one that does not answer is
    left alone."""
    candidates = [r for r in ctx.store.all()
                  if r.profile == profile.name and r.host == profile.host and r.job_id and (r.port or r.socket)]
    for rec in sorted(candidates, key=lambda r: r.created, reverse=True):
        ctx.report("reuse", f"reusing session {rec.id} (job {rec.job_id})")
        attachment = Attachment(ctx, rec.id)
        try:
            attachment.open()
        except (JobEndedError, JobFailedError) as exc:
            ctx.report("reuse", f"session {rec.id} cannot be reused: {exc.message}")
            continue
        return attachment
    return None
