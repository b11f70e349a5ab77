-- A key's share of freed slots while requests wait (weight) and its class (interactive
-- requests are served before batch ones); changes to either move the change marker.
ALTER TABLE drover_api_keys
    ADD COLUMN weight BIGINT NOT NULL DEFAULT 1,
    ADD COLUMN priority VARCHAR(16) NOT NULL DEFAULT 'interactive';
DROP TRIGGER drover_api_keys_changed ON drover_api_keys;
CREATE TRIGGER drover_api_keys_changed
AFTER INSERT OR DELETE OR TRUNCATE OR UPDATE OF
    id, name, key_hash, models, requests_per_minute, tokens_per_minute, expires_at, is_active, weight, priority
ON drover_api_keys FOR EACH STATEMENT EXECUTE FUNCTION drover_bump_changes();
