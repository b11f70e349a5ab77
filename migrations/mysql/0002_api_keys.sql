-- API keys: only a SHA-256 hash of each key is stored (the key is shown once, at creation).
CREATE TABLE IF NOT EXISTS drover_api_keys (
    id                  BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name                VARCHAR(100) NOT NULL,
    key_hash            VARCHAR(64) NOT NULL,
    key_prefix          VARCHAR(16) NOT NULL,
    models              TEXT NOT NULL,
    requests_per_minute BIGINT,
    tokens_per_minute   BIGINT,
    expires_at          VARCHAR(40),
    is_active           BOOLEAN NOT NULL DEFAULT TRUE,
    created_at          TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    request_count       BIGINT NOT NULL DEFAULT 0,
    prompt_tokens       BIGINT NOT NULL DEFAULT 0,
    completion_tokens   BIGINT NOT NULL DEFAULT 0,
    UNIQUE KEY uq_drover_api_keys_hash (key_hash)
);

-- A change to who may call (not the usage counters) moves the same marker as a route change.
CREATE TRIGGER drover_api_keys_insert AFTER INSERT ON drover_api_keys FOR EACH ROW
    UPDATE drover_changes SET version = version + 1 WHERE id = 1;
CREATE TRIGGER drover_api_keys_delete AFTER DELETE ON drover_api_keys FOR EACH ROW
    UPDATE drover_changes SET version = version + 1 WHERE id = 1;
CREATE TRIGGER drover_api_keys_update AFTER UPDATE ON drover_api_keys FOR EACH ROW
    UPDATE drover_changes SET version = version + IF(
        OLD.name <=> NEW.name AND OLD.key_hash <=> NEW.key_hash AND OLD.models <=> NEW.models
        AND OLD.requests_per_minute <=> NEW.requests_per_minute
        AND OLD.tokens_per_minute <=> NEW.tokens_per_minute AND OLD.expires_at <=> NEW.expires_at
        AND OLD.is_active <=> NEW.is_active, 0, 1)
    WHERE id = 1;
