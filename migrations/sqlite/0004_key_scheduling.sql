-- A key's share of freed slots while requests wait (weight) and its class (interactive
-- requests are served before batch ones); changes to either move the change marker.
ALTER TABLE drover_api_keys ADD COLUMN weight INTEGER NOT NULL DEFAULT 1;
ALTER TABLE drover_api_keys ADD COLUMN priority TEXT NOT NULL DEFAULT 'interactive';
DROP TRIGGER drover_api_keys_update;
CREATE TRIGGER drover_api_keys_update AFTER UPDATE OF
    id, name, key_hash, models, requests_per_minute, tokens_per_minute, expires_at, is_active, weight, priority
    ON drover_api_keys
BEGIN UPDATE drover_changes SET version = version + 1 WHERE id = 1; END;
