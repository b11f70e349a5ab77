-- Conversation memory (memory.enabled): the messages of a session, by a SHA-256 of its id,
-- until expires_at (milliseconds since the Unix epoch). Not part of routing: no trigger.
CREATE TABLE IF NOT EXISTS drover_conversations (
    session_key VARCHAR(64) NOT NULL PRIMARY KEY,
    messages    TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS drover_conversations_expiry ON drover_conversations (expires_at);
