"""Message retention with legal hold: a batched, resumable deletion job.

Policies: ``default`` (``compliance.message_retention_days``, or a stored
``default`` policy, which wins) and ``conversation:<id>`` overrides; 0 days
keeps messages forever. A legal hold names a user or a conversation:

* a held conversation loses nothing;
* a held user's conversations lose nothing (every conversation the user is a
  member of), and nothing the user sent is deleted anywhere.

A run fixes its cutoffs when it starts and records the last conversation it
finished, so a run that stops (crash, ``--max-batches``) is continued, not
restarted, by the next ``tongxin retention run``. Holds are re-read for every
conversation, so a hold placed during a run protects what is not yet deleted.
On the shared (MySQL/TiDB) compliance store the holds are the installation's,
wherever they were placed, and one run at a time goes on in the installation
(a named lock): a second one started on another node is refused
(:class:`RetentionBusy`) rather than racing the first one's cursor.

The messages are read and deleted only through the chat store port
(``ChatStore.conversation_ids``, ``member_ids``, ``delete_before``), so the
job runs on the SQLite and the MySQL/TiDB message store alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from tongxin.clock import now_ms
from tongxin.compliance.archive import DAY_MS
from tongxin.compliance.ports import ComplianceStore
from tongxin.config import Config
from tongxin.store.ports import ChatStore

DEFAULT_SCOPE = "default"


def conversation_scope(conversation_id: str) -> str:
    return f"conversation:{conversation_id}"


class RetentionBusy(RuntimeError):
    """Another retention run holds the installation's lock."""


@dataclass
class RunResult:
    run_id: int
    deleted: int
    finished: bool
    resumed: bool
    skipped_on_hold: int


async def effective_policies(cfg: Config, store: ComplianceStore) -> dict[str, float]:
    policies = {DEFAULT_SCOPE: cfg.compliance.message_retention_days}
    policies.update(await store.policies())
    return policies


async def run_retention(cfg: Config, store: ComplianceStore, history: ChatStore, *, actor: str,
                        max_batches: int = 0, now: int | None = None) -> RunResult:
    """Run (or continue) the deletion job. ``max_batches`` > 0 stops early (resumable)."""
    async with store.exclusive("retention") as mine:
        if not mine:
            raise RetentionBusy("another retention run is in progress (on this or another node)")
        return await _run(cfg, store, history, actor, max_batches,
                          now_ms() if now is None else now)


async def _run(cfg: Config, store: ComplianceStore, history: ChatStore, actor: str,
               max_batches: int, now: int) -> RunResult:
    run = await store.open_run()
    resumed = run is not None
    if run is None:
        cutoffs = {scope: (now - int(days * DAY_MS) if days > 0 else 0)
                   for scope, days in (await effective_policies(cfg, store)).items()}
        run = await store.start_run(now, actor, cutoffs)
    batch = max(1, cfg.compliance.retention_batch)
    batches = 0
    skipped = 0
    while True:
        ids = await history.conversation_ids(run.cursor, 200)
        if not ids:
            break
        for cid in ids:
            cutoff = run.cutoffs.get(conversation_scope(cid), run.cutoffs.get(DEFAULT_SCOPE, 0))
            if cutoff > 0:
                holds = await store.holds()
                held_convs = {h.target for h in holds if h.kind == "conversation"}
                held_users = sorted({h.target for h in holds if h.kind == "user"})
                members = set(await history.member_ids(cid))
                if cid in held_convs or members.intersection(held_users):
                    skipped += 1
                else:
                    while True:
                        if max_batches and batches >= max_batches:
                            await store.save_run(run)
                            return RunResult(run.id, run.deleted, False, resumed, skipped)
                        n = await history.delete_before(cid, cutoff, held_users, batch)
                        batches += 1
                        run.deleted += n
                        if n < batch:
                            break
            run.cursor = cid
            await store.save_run(run)
    run.finished_at = now_ms()
    await store.save_run(run)
    return RunResult(run.id, run.deleted, True, resumed, skipped)

