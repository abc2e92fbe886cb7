"""The ``Store`` protocol: persistence in verbs of the domain. Every implementation
passes the contract suite in ``tests/store/``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from barge.domain.models import BatchRecord, FileRecord, KeyRecord, LineError, Principal, Slice
from barge.domain.permissions import Role
from barge.domain.status import Status
from barge.domain.usage import NO_USAGE, Usage
from barge.domain.webhooks import WebhookAttempt, WebhookClaim, WebhookDelivery, WebhookEndpoint

# One result a flush makes durable: the index of its line within its slice, whether it
# goes to the output file (True) or the error file (False), and the result line's bytes
# without the newline.
ResultRecord = tuple[int, bool, bytes]


@dataclass(frozen=True, slots=True)
class SliceProgress:
    """What one flush made durable for one slice: its new part length, count deltas and
    the result records counted."""

    no: int
    committed_bytes: int
    completed: int  # added since the last flush
    failed: int  # added since the last flush
    done: bool
    usage: Usage = NO_USAGE  # tokens added since the last flush
    # The lease token the flush was made under (``Lease.token``); None: no lease (the
    # single-node engine), and the progress is applied unfenced, as it always was.
    token: int | None = None
    # The results this flush counts, stored in the same transaction as the counts, so
    # that any node can write the batch's files from the store (``slice_results``).
    records: tuple[ResultRecord, ...] = ()
    # Without ``records``: the bytes the flush adds to the output and to the error file
    # (its ok and its error lines, a newline each; ``completed`` and ``failed`` count
    # them), and where its records start in the slice's part (they end at
    # ``committed_bytes``): one group of the batch's results log (``result_groups``).
    ok_bytes: int = 0
    err_bytes: int = 0
    part_start: int = 0


@dataclass(frozen=True, slots=True)
class AccountSettings:
    """What an admin set for an account: its weight (its share of the upstream when
    accounts compete for it) and its optional limits on this node's requests — the most
    in flight at once, and its tokens a minute (None: no limit)."""

    weight: float = 1.0
    max_in_flight: int | None = None
    tokens_per_minute: int | None = None

    @property
    def limited(self) -> bool:
        return self.max_in_flight is not None or self.tokens_per_minute is not None


@dataclass(frozen=True, slots=True)
class StoredResult:
    """One result record as the store keeps it (``slice_results``)."""

    slice_no: int
    index: int  # of the line within its slice
    ok: bool  # the output file's (True) or the error file's (False)
    line: bytes  # without the newline
    commit_no: int = 0  # the batch's commit that stored it (its group: ``result_groups``)


@dataclass(frozen=True, slots=True)
class ResultGroup:
    """What one commit of a batch's results (``commit_no``: the batch's ``record_progress``
    transactions, numbered from 1) added to one slice: ``n_ok`` output lines of
    ``ok_bytes`` and ``n_err`` error lines of ``err_bytes`` bytes, newlines included. Its
    records are in the slice's part at ``[part_start, part_end)`` (one machine) or are the
    stored results of that commit (``group_results``), until the batch ends. From then
    on ``ok_offset`` and ``err_offset`` say where its lines start in the output and the
    error file (None before): the files hold the groups in (slice, commit) order, each
    group's ok lines together in the one and its error lines together in the other."""

    commit_no: int
    slice_no: int
    n_ok: int
    n_err: int
    ok_bytes: int
    err_bytes: int
    part_start: int = 0
    part_end: int = 0
    ok_offset: int | None = None
    err_offset: int | None = None

    @property
    def key(self) -> tuple[int, int]:
        return self.commit_no, self.slice_no

    @property
    def size(self) -> int:
        return self.n_ok + self.n_err


# Lines ``finish`` adds to the error file after one slice's results (its requests that
# never got one: ``batch_expired``): (slice_no, lines, bytes with the newlines).
ExpiredLines = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Lease:
    """A node's claim on one slice until ``expires_at``, under ``token``. Tokens come from
    one counter the whole cluster shares, so a later claim always has a higher token; a
    write under a token that is no longer the slice's current one is refused (Fenced).
    ``slice`` is the slice as it stood when claimed or renewed: where to resume
    (``committed_bytes``) and what is left (``n_lines``, offsets, counts)."""

    slice: Slice
    token: int
    node: str
    # Unix seconds on the store's clock (PostgreSQL's for PostgresStore), which need not
    # agree with this node's: a holder times its lease with its own monotonic clock,
    # from before the call that claimed or renewed it.
    expires_at: float

    @property
    def batch_id(self) -> str:
        return self.slice.batch_id

    @property
    def slice_no(self) -> int:
        return self.slice.no


# Statuses in which a batch's result files are written, and ``claim_finalize`` can win
# (it also wins on a ``processing`` batch past its ``expires_at``, to expire it).
FINALIZING = frozenset({Status.WRITING_RESULTS, Status.CANCELLING})

# Seconds a ``use_once`` row outlives its ``expires_at`` on the store's clock, so that a
# node whose clock lags the store's still finds the keys it thinks unexpired.
USE_ONCE_SLACK = 300

PING_TIMEOUT = 2.0  # seconds ``ping`` waits for the store by default

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


class Store(Protocol):
    async def open(self) -> None:
        """Connect and bring the schema to the newest version."""

    async def close(self) -> None: ...

    async def ping(self, timeout: float = PING_TIMEOUT) -> None:
        """Whether the store answers now, cheaply (a trivial query), for ``/healthz``:
        returns, or raises StoreUnavailable (a closed store, a database that does not
        answer within ``timeout`` seconds) with one line saying why."""

    # Files.
    async def create_file(self, f: FileRecord) -> None: ...

    async def get_file(self, account: str, file_id: str) -> FileRecord:
        """Raises NotFound when no such file belongs to ``account``."""

    async def list_files(
        self, account: str, *, purpose: str | None, limit: int, order: str, after: str | None
    ) -> Page[FileRecord]:
        """The page after the file ``after``, which may have been deleted since (the page
        starts where it stood; NotFound only when the account never had it)."""

    async def delete_file(self, account: str, file_id: str) -> None:
        """Raises NotFound, or Conflict when an unfinished batch reads the file."""

    async def expired_files(self, now: int, *, limit: int) -> list[FileRecord]:
        """Files whose ``expires_at`` has passed, oldest first."""

    # Batches.
    async def create_batch(self, b: BatchRecord) -> None: ...

    async def get_batch(self, account: str | None, batch_id: str) -> BatchRecord:
        """``account`` None: any account (the engine's view)."""

    async def list_batches(
        self,
        account: str,
        *,
        after: str | None,
        limit: int,
        created_after: int | None = None,
        created_before: int | None = None,
        oldest_first: bool = False,
        created_after_ms: int | None = None,
        created_before_ms: int | None = None,
    ) -> Page[BatchRecord]:
        """Newest first (or oldest first), the page after the batch ``after`` (which may
        have been deleted since: the page starts where it stood; NotFound only when the
        account never had it); ``created_after``/``created_before`` are inclusive bounds
        in Unix seconds, ``created_after_ms``/``created_before_ms`` in milliseconds (on
        ``created_ms``); bounds beyond int64 act as its ends."""

    async def transition(
        self, batch_id: str, to: Status, *, only_from: Iterable[Status] | None = None,
        **fields: Any,
    ) -> BatchRecord:
        """Move a batch along the lifecycle, setting ``fields`` and the status's timestamp.
        Raises Conflict when the move is not allowed from the current status (or it is
        not one of ``only_from``).

        Every verb that moves a batch (this one, ``advance``, ``fail_validation``,
        ``finish``) into a status that sends a webhook event
        (``barge.domain.webhooks.EVENT_FOR_STATUS``) inserts, in the same transaction,
        one pending delivery of one new event for each live endpoint of the batch's
        account that wants that event (``webhook_deliveries``)."""

    async def advance(self, batch_id: str, path: Sequence[Status]) -> BatchRecord:
        """Move through every status of ``path`` in order, in one transaction (each move
        checked and stamped as by ``transition``); Conflict if any move is not allowed,
        and then nothing changes."""

    async def request_cancel(self, account: str, batch_id: str) -> BatchRecord:
        """Mark a batch ``cancel``; idempotent while it is being cancelled; Conflict once
        it is terminal."""

    async def start_processing(
        self, batch_id: str, *, slices: Sequence[Slice], total: int, model: str | None
    ) -> BatchRecord:
        """validating → processing, with the batch's work slices, in one transaction."""

    async def fail_validation(
        self, batch_id: str, *, errors: Sequence[LineError], total: int
    ) -> BatchRecord: ...

    async def list_slices(self, batch_id: str) -> list[Slice]: ...

    async def record_progress(self, batch_id: str, progress: Sequence[SliceProgress]) -> None:
        """Acknowledge durable results of several slices in one transaction: the counts,
        and every entry's ``records`` (a record for an index already stored is left out:
        the first stored stands, and so does its place in the log; of one index given
        twice in a call, the first). Entries with a ``token`` are fenced: unless every
        token given is still its slice's current one, the batch is ``processing``,
        ``cancel`` or ``cancelling`` and nobody has claimed its finalisation
        (``claim_finalize``), nothing of the call is applied and Fenced is raised.
        Entries without one are applied as they are (no lease is checked).

        The call is the batch's next commit (``result_commits`` + 1; a batch's commits
        are serialised): it logs one ``ResultGroup`` per slice it adds results to, in the
        same transaction — of the records it stored, or, for an entry without records,
        of its counts, ``ok_bytes``, ``err_bytes`` and part range. Nothing is logged for
        a batch stored before the log was kept (``result_commits`` NULL)."""

    async def slice_results(
        self, batch_id: str, *, after: tuple[int, int, int] | None = None, limit: int = 1000
    ) -> list[StoredResult]:
        """Up to ``limit`` of the batch's stored results in (slice, commit, index) order
        (the order of the result files), those after the (slice_no, commit_no, index)
        ``after`` when given."""

    async def result_groups(
        self, batch_id: str, *, after: tuple[int, int] = (0, 0), limit: int = 1000
    ) -> list[ResultGroup]:
        """Up to ``limit`` groups of the batch's results log in (commit, slice) order,
        from the (commit_no, slice_no) ``after`` on, that one included. A group never
        changes once logged, except that ``finish`` sets where it is in the files."""

    async def group_results(
        self, batch_id: str, groups: Sequence[tuple[int, int]]
    ) -> list[StoredResult]:
        """The stored results of the (commit_no, slice_no) ``groups``, in (commit, slice)
        order and, within a group, its output lines then its error lines, each by index:
        the order a group reads in. Nothing once ``finish`` has removed them."""

    async def done_indexes(self, batch_id: str, slice_no: int) -> list[int]:
        """The indexes within slice ``slice_no`` that have a stored result, in order:
        the lines a node taking the slice over must not send again."""

    async def finish(
        self, batch_id: str, to: Status, *, files: Sequence[FileRecord],
        expired: Sequence[ExpiredLines] = (), **fields: Any,
    ) -> BatchRecord:
        """Publish result files and move the batch to ``to`` in one transaction, deleting
        the batch's stored results (the files hold them now). With ``fin_token=`` (an
        int from ``claim_finalize``), only while that is still the batch's current
        finalisation token; otherwise Fenced, and nothing changes.

        In the same transaction the results log gets ``expired`` (the batch_expired lines
        of each slice) as groups of one more commit, and every group of the batch its
        ``ok_offset`` and ``err_offset``: the sums of the bytes of the groups before it
        in (slice, commit) order, as the files hold them. The log stays.

        ``fin_token`` is declared by each implementation (``int | None = None``), not
        here: the engine passes its fields as a ``dict[str, object]``, which a typed
        keyword here would refuse."""

    # Leases: many nodes share the slices of processing batches.
    async def claim_slices(
        self, node: str, *, limit: int, lease_seconds: float, batch_id: str | None = None
    ) -> list[Lease]:
        """Lease up to ``limit`` slices to ``node`` for ``lease_seconds``: slices not
        done, of batches in ``processing`` that nobody has claimed to finalise (only
        batch ``batch_id``'s when given), that nobody holds (never leased, released, or
        whose lease has expired). Each gets a new token. Concurrent claimers, on this
        store or on others sharing its data, never get the same slice. Oldest batch
        first, then by slice number (no fairness across accounts yet)."""

    async def renew_leases(
        self, leases: Sequence[Lease], *, lease_seconds: float
    ) -> list[Lease]:
        """Extend each lease still held under its token to ``lease_seconds`` from now;
        returns those renewed (with their new expiry). A lease another node has taken
        over, or that was released, or whose batch is claimed to be finalised, is left
        alone and missing from the result. A lease that expired but that nobody took over
        is still held (its token is current)."""

    async def release_leases(self, leases: Sequence[Lease]) -> None:
        """Give leases back (a graceful shutdown): each still held under its token ends
        now, and its slice can be claimed at once; writes under it are Fenced."""

    async def claim_finalize(
        self, batch_id: str, node: str, *, lease_seconds: float
    ) -> int | None:
        """Win the right to write a batch's result files: the new finalisation token, or
        None when another node's claim has not expired, or the batch does not exist or
        is in none of these: ``writing_results``; ``processing`` past its ``expires_at``
        (on the store's clock: to expire it); ``cancelling`` with no slice whose lease
        is still unexpired (its holders have released it or gone silent). Exactly one of
        concurrent callers wins; ``finish(..., fin_token=...)`` then succeeds only under
        it, and from the claim on, fenced progress on the batch is refused and its
        leases are not renewed."""

    # Nodes: who is alive, to share an upstream budget.
    async def share_budget(
        self, node: str, *, ttl: float, want: int, budget: int
    ) -> tuple[int, int]:
        """Record that ``node`` is alive for ``ttl`` more seconds and set the slots of
        ``budget`` it holds to ``want``, or to what the other live nodes leave free if
        that is less (never below 0): the slots of all live nodes never add up to more
        than ``budget``. Returns (its slots, live nodes, itself included). A node that
        goes silent gives its slots back when its row expires."""

    async def leave(self, node: str) -> None:
        """Forget ``node`` at once (a graceful shutdown)."""

    async def shared_secret(self, name: str, candidate: str) -> str:
        """The value stored under ``name``: ``candidate``, stored now, unless a value was
        there already. Concurrent callers (nodes starting at once) all get the same one."""

    async def use_once(self, key: str, *, expires_at: int) -> bool:
        """Whether this is the first use of ``key``: True for the one caller that uses it
        first, False for every later one, and for every other of concurrent callers, on
        this store or on others sharing its data. ``expires_at`` (Unix seconds) is when
        the use stops mattering (what it guarded is refused for its age by then): once
        it is more than ``USE_ONCE_SLACK`` seconds past on the store's clock, the key
        counts as unused again, and later calls may purge its row."""

    async def deleting_batches(self) -> list[BatchRecord]:
        """Batches marked ``deleting`` whose purge has not finished, oldest first."""

    async def delete_batch(self, batch_id: str) -> None:
        """Remove a ``deleting`` batch, its slices, its stored results, its results log
        and its result files' records."""

    async def unfinished_batches(self) -> list[BatchRecord]:
        """Every batch the engine still has work for (neither terminal nor being
        deleted), oldest first."""

    # Keys.
    async def create_key(self, key: KeyRecord, key_hash: str) -> None: ...

    async def principal_for(self, key_hash: str) -> Principal | None:
        """The live (not revoked) key with this hash, or None."""

    async def list_keys(self) -> list[KeyRecord]: ...

    async def revoke_key(self, key_id: str) -> None: ...

    # Custom roles: each belongs to one account; names are unique within it.
    async def create_role(self, account: str, role: Role) -> None:
        """Raises Conflict when ``account`` has a role of that name."""

    async def get_role(self, account: str, name: str) -> Role | None:
        """``account``'s role of that name, or None (another account's never counts)."""

    async def list_roles(self, account: str | None) -> list[tuple[str, Role]]:
        """(account, role) pairs of ``account``, or of every account when None."""

    # Account weights: an account's share of the upstream when accounts compete for it.
    async def set_account_weight(self, account: str, weight: float) -> None:
        """Set ``account``'s weight (a finite number above 0; the API checks the range),
        replacing any it had. The account need not have keys or batches yet."""

    async def account_weights(self) -> dict[str, float]:
        """Every account given a weight, with it; an account missing here counts as 1."""

    async def set_account_settings(self, account: str, settings: AccountSettings) -> None:
        """Set all of ``account``'s settings at once (its weight as for
        ``set_account_weight``; a limit, when not None, at least 1), replacing what it had.
        ``set_account_weight`` keeps the limits."""

    async def account_settings(self) -> dict[str, AccountSettings]:
        """Every account given a weight or limits, with them; one missing here has the
        defaults (``AccountSettings()``)."""

    # Webhooks: the endpoints accounts register, and the outbox of their batches' events
    # (filled by the verbs that move batches; see ``transition``).
    async def create_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Register ``endpoint`` (its id new)."""

    async def list_webhook_endpoints(self, account: str | None) -> list[WebhookEndpoint]:
        """The live endpoints of ``account`` (of every account when None), oldest
        first."""

    async def delete_webhook_endpoint(self, account: str | None, endpoint_id: str) -> None:
        """Delete a live endpoint of ``account`` (of any account when None): NotFound
        otherwise. Its deliveries not yet done are given up in the same transaction (an
        attempt under way is then not recorded), so nothing more is sent to it."""

    async def webhook_deliveries(self, batch_id: str) -> list[WebhookDelivery]:
        """Every delivery of the batch's events, in the order they were made."""

    async def claim_webhook_deliveries(
        self, claimer: str, *, limit: int, lease_seconds: float
    ) -> list[WebhookClaim]:
        """Claim up to ``limit`` due deliveries (pending or failing, ``next_attempt_at``
        past, of a live endpoint, not claimed or their claim expired), soonest due first,
        for ``lease_seconds``, under ``claimer`` (a name the caller makes unique).
        Concurrent claimers, on this store or others sharing its data, never get the
        same delivery while a claim on it is live."""

    async def record_webhook_attempt(self, claim: WebhookClaim,
                                     attempt: WebhookAttempt) -> bool:
        """Record how one attempt on a claimed delivery ended, and end the claim:
        delivered, failing (due again ``attempt.retry_in`` seconds from now on the
        store's clock) or given up. Only while the delivery is still claimed under
        ``claim.claimer`` and not done; otherwise nothing changes and False is returned
        (the endpoint was deleted, or another claimer took the delivery over)."""

    async def release_webhook_claims(self, claimer: str) -> None:
        """End every claim of ``claimer`` at once, nothing recorded (a graceful stop):
        those deliveries are due again as they were."""

    async def pending_webhook_deliveries(self) -> int:
        """How many deliveries, of every account, are pending or failing."""

    async def purge_webhook_deliveries(self, *, older_than: float) -> int:
        """Forget done deliveries (delivered or given up) of events more than
        ``older_than`` seconds old, and endpoints deleted that long ago that no delivery
        names any more; returns how many deliveries went."""
