-- API keys: only a SHA-256 hash of each key is stored (the key is shown once, at creation).
CREATE TABLE IF NOT EXISTS drover_api_keys (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    name                VARCHAR(100) NOT NULL,
    key_hash            VARCHAR(64) NOT NULL UNIQUE,
    key_prefix          VARCHAR(16) NOT NULL,
    models              TEXT NOT NULL,
    requests_per_minute BIGINT,
    tokens_per_minute   BIGINT,
    expires_at          VARCHAR(40),
    is_active           BOOLEAN NOT NULL DEFAULT 1,
    created_at          TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    request_count       BIGINT NOT NULL DEFAULT 0,
    prompt_tokens       BIGINT NOT NULL DEFAULT 0,
    completion_tokens   BIGINT NOT NULL DEFAULT 0
);

-- A change to who may call (not the usage counters) moves the same marker as a route change.
CREATE TRIGGER drover_api_keys_insert AFTER INSERT ON drover_api_keys
BEGIN UPDATE drover_changes SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER drover_api_keys_delete AFTER DELETE ON drover_api_keys
BEGIN UPDATE drover_changes SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER drover_api_keys_update AFTER UPDATE OF
    id, name, key_hash, models, requests_per_minute, tokens_per_minute, expires_at, is_active ON drover_api_keys
BEGIN UPDATE drover_changes SET version = version + 1 WHERE id = 1; END;
