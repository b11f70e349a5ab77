-- A key's share of freed slots while requests wait (weight) and its class (interactive
-- requests are served before batch ones); changes to either move the change marker.
ALTER TABLE drover_api_keys
    ADD COLUMN weight BIGINT NOT NULL DEFAULT 1,
    ADD COLUMN priority VARCHAR(16) NOT NULL DEFAULT 'interactive';
DROP TRIGGER drover_api_keys_update;
CREATE TRIGGER drover_api_keys_update AFTER UPDATE ON drover_api_keys FOR EACH ROW
    UPDATE drover_changes SET version = version + IF(
        OLD.name <=> NEW.name AND OLD.key_hash <=> NEW.key_hash AND OLD.models <=> NEW.models
        AND OLD.requests_per_minute <=> NEW.requests_per_minute
        AND OLD.tokens_per_minute <=> NEW.tokens_per_minute AND OLD.expires_at <=> NEW.expires_at
        AND OLD.is_active <=> NEW.is_active AND OLD.weight <=> NEW.weight AND OLD.priority <=> NEW.priority, 0, 1)
    WHERE id = 1;
