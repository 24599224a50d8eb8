"""The journal's tables: the statements that create them, version by version.

``MIGRATIONS[v]`` takes a journal from schema version v - 1 to v (v = 1: from empty).
Add a new version by appending statements under ``SCHEMA_VERSION + 1``; never edit old
ones. The first opener of a file runs what is missing (:mod:`agent.journal.connection`).
"""

from __future__ import annotations

SCHEMA_VERSION = 4

_V1 = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE telemetry (
        seq INTEGER PRIMARY KEY,
        step INTEGER NOT NULL, wall_time REAL NOT NULL, epoch INTEGER NOT NULL, lr REAL,
        loss REAL, mel_loss REAL, mel_postnet_loss REAL, gate_loss REAL, guided_attention_loss REAL,
        grad_norm REAL, grad_clip REAL, guided_attention_weight REAL, gate_pos_weight REAL,
        step_seconds REAL, skipped_steps INTEGER NOT NULL, finite INTEGER NOT NULL,
        record TEXT NOT NULL)""",
    "CREATE INDEX telemetry_step ON telemetry(step)",
    """CREATE TABLE evals (
        seq INTEGER PRIMARY KEY,
        step INTEGER NOT NULL, wall_time REAL NOT NULL, val_loss REAL, val_mel_loss REAL,
        val_mel_postnet_loss REAL, val_gate_loss REAL, val_guided_attention_loss REAL,
        diagonality REAL, focus REAL, aligned_fraction REAL, gate_accuracy REAL, probe_stop_rate REAL,
        alignment_image TEXT, record TEXT NOT NULL)""",
    "CREATE INDEX evals_step ON evals(step)",
    """CREATE TABLE phases (
        id INTEGER PRIMARY KEY, wall_time REAL NOT NULL, step INTEGER,
        from_phase TEXT, to_phase TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '')""",
    """CREATE TABLE proposals (
        id INTEGER PRIMARY KEY, created_at REAL NOT NULL, step INTEGER,
        policy TEXT NOT NULL, kind TEXT NOT NULL, actions TEXT NOT NULL, reason TEXT NOT NULL,
        evidence TEXT NOT NULL, aim TEXT,
        mode TEXT NOT NULL CHECK (mode IN ('auto', 'ask', 'notify')),
        status TEXT NOT NULL CHECK (status IN ('proposed', 'approved', 'rejected', 'expired', 'applied', 'failed')),
        decided_by TEXT, decided_at REAL, expires_at REAL, applied_at REAL, applied_step INTEGER,
        outcome TEXT, outcome_detail TEXT)""",
    "CREATE INDEX proposals_status ON proposals(status)",
    """CREATE TABLE commands (
        id TEXT PRIMARY KEY, created_at REAL NOT NULL, kind TEXT NOT NULL, payload TEXT,
        source TEXT NOT NULL, proposal_id INTEGER REFERENCES proposals(id),
        status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'acknowledged')),
        delivered_at REAL, deliveries INTEGER NOT NULL DEFAULT 0,
        acked_at REAL, ok INTEGER, duplicate INTEGER, detail TEXT, step INTEGER)""",
    "CREATE INDEX commands_status ON commands(status)",  # (status, rowid): poll reads pending in order
    "CREATE INDEX commands_proposal ON commands(proposal_id) WHERE proposal_id IS NOT NULL",
    """CREATE TABLE checkpoints (
        id INTEGER PRIMARY KEY, step INTEGER NOT NULL, path TEXT NOT NULL, wall_time REAL NOT NULL,
        reason TEXT NOT NULL, val_loss REAL, diagonality REAL, finite INTEGER NOT NULL,
        health TEXT NOT NULL, health_detail TEXT NOT NULL DEFAULT '')""",
    "CREATE INDEX checkpoints_step ON checkpoints(step)",
    """CREATE TABLE outbox (
        id INTEGER PRIMARY KEY, created_at REAL NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL,
        payload TEXT NOT NULL, dedupe_key TEXT UNIQUE, sent_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT)""",
    "CREATE INDEX outbox_unsent ON outbox(id) WHERE sent_at IS NULL",
    """CREATE TABLE audit (
        id INTEGER PRIMARY KEY, wall_time REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '')""",
    "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL)",
]

# Version 2: tuning trials (agent/tuner). One row per trial of an in-run round; the
_V2 = [
    """CREATE TABLE trials (
        id INTEGER PRIMARY KEY, round INTEGER NOT NULL, study TEXT NOT NULL, number INTEGER NOT NULL,
        base_step INTEGER, params TEXT NOT NULL, baseline INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'pruned', 'failed')),
        started_at REAL NOT NULL, finished_at REAL, pid INTEGER, folder TEXT, steps INTEGER,
        objective REAL, metrics TEXT, checkpoint TEXT, detail TEXT NOT NULL DEFAULT '',
        mlflow_run_id TEXT, winner INTEGER NOT NULL DEFAULT 0, UNIQUE (study, number))""",
    "CREATE INDEX trials_round ON trials(round)",
]
# Version 3: notification delivery (agent/outbox.py, agent/telegram_bot.py). An outbox
# row is sent once every channel has it; ``deliveries`` says which channel has which,
# so a message to two chats is not repeated to the first when the second fails.
# ``proposal_messages``: the Telegram messages showing a proposal, to be edited once it
# is decided (by whoever: the bot, the CLI, expiry).
_V3 = [
    """CREATE TABLE deliveries (
        outbox_id INTEGER NOT NULL REFERENCES outbox(id), channel TEXT NOT NULL, delivered_at REAL NOT NULL,
        ref TEXT, error TEXT, PRIMARY KEY (outbox_id, channel))""",
    """CREATE TABLE proposal_messages (
        chat_id INTEGER NOT NULL, message_id INTEGER NOT NULL,
        proposal_id INTEGER NOT NULL REFERENCES proposals(id), shown TEXT NOT NULL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (chat_id, message_id))""",
    "CREATE INDEX proposal_messages_proposal ON proposal_messages(proposal_id)",
]
# Version 4: free-running evaluation (trainer/speech). The speech score and MCD-DTW get
# columns of their own; probe_stop_rate stays in old rows but is no longer written (it
# counted a stop at the first frame as good).
_V4 = [
    "ALTER TABLE evals ADD COLUMN speech_score REAL",
    "ALTER TABLE evals ADD COLUMN mcd_dtw REAL",
]
MIGRATIONS: dict[int, list[str]] = {1: _V1, 2: _V2, 3: _V3, 4: _V4}
