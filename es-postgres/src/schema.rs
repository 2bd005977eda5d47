//! The tables and the append function, created on connect (idempotently, under an advisory
//! lock, so processes starting together do not race). Every name lives in the store's
//! schema; the README shows the layout.

/// The DDL; `{s}` is the quoted schema.
const DDL: &str = r#"
CREATE SCHEMA IF NOT EXISTS {s};

-- One row per category: the last position handed out and the last timestamp. An append
-- locks its category's row until it commits, so a category's positions become visible in
-- order and a reader never skips an event a slower transaction commits later.
CREATE TABLE IF NOT EXISTS {s}.categories (
    category      text   PRIMARY KEY,
    last_position bigint NOT NULL,
    last_millis   bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS {s}.events (
    category       text    NOT NULL,
    position       bigint  NOT NULL,
    aggregate_id   text    NOT NULL,
    version        bigint  NOT NULL,
    event_type     text    NOT NULL,
    recorded_at    bigint  NOT NULL,
    correlation_id text,
    causation_id   text,
    metadata       jsonb,
    field_names    text[]  NOT NULL,
    field_values   bytea[] NOT NULL,
    PRIMARY KEY (category, position),
    UNIQUE (category, aggregate_id, version)
);

-- Appends that carried an id, with their result, for idempotent retries.
CREATE TABLE IF NOT EXISTS {s}.appends (
    category     text     NOT NULL,
    aggregate_id text     NOT NULL,
    append_id    text     NOT NULL,
    version      bigint   NOT NULL,
    positions    bigint[] NOT NULL,
    PRIMARY KEY (category, aggregate_id, append_id)
);

CREATE TABLE IF NOT EXISTS {s}.snapshots (
    category     text    NOT NULL,
    aggregate_id text    NOT NULL,
    version      bigint  NOT NULL,
    position     bigint  NOT NULL,
    schema       bigint  NOT NULL,
    field_names  text[]  NOT NULL,
    field_values bytea[] NOT NULL,
    PRIMARY KEY (category, aggregate_id)
);

-- Projections: each one's cursor per category, its delivered but unacknowledged events,
-- and its dead letters.
CREATE TABLE IF NOT EXISTS {s}.projection_cursors (
    projection text   NOT NULL,
    category   text   NOT NULL,
    position   bigint NOT NULL,
    PRIMARY KEY (projection, category)
);

CREATE TABLE IF NOT EXISTS {s}.projection_pending (
    projection text   NOT NULL,
    category   text   NOT NULL,
    position   bigint NOT NULL,
    delivered  int    NOT NULL,
    since_ms   bigint NOT NULL,
    failure    text,
    PRIMARY KEY (projection, category, position)
);

CREATE TABLE IF NOT EXISTS {s}.projection_dead_letters (
    projection text   NOT NULL,
    category   text   NOT NULL,
    position   bigint NOT NULL,
    event_type text   NOT NULL,
    attempts   int    NOT NULL,
    error      text   NOT NULL,
    PRIMARY KEY (projection, category, position)
);

-- Read models: which events each projection applied (for every read model, the hash ones
-- and the SQL tables of `SqlReadModel`), and the hashes of `PostgresReadModels`.
CREATE TABLE IF NOT EXISTS {s}.applied (
    projection text   NOT NULL,
    category   text   NOT NULL,
    major      bigint NOT NULL,
    minor      bigint NOT NULL,
    PRIMARY KEY (projection, category, major, minor)
);

CREATE TABLE IF NOT EXISTS {s}.read_model_fields (
    projection text  NOT NULL,
    hash       text  NOT NULL,
    field      text  NOT NULL,
    value      bytea NOT NULL,
    PRIMARY KEY (projection, hash, field)
);

-- A call of appends (group commit), in one transaction. It first locks the row of every
-- category the call writes, in one order (so calls never deadlock), then runs each append
-- on its own: answer a retried append id with its first result, check the expected version
-- (-1: any), insert the events with the category's next positions. Append a's events are
-- the next p_event_counts[a] of the event arrays; event i's fields are
-- names[starts[i] + 1 .. starts[i] + counts[i]] (and values alike). One row per append.
DROP FUNCTION IF EXISTS {s}.append(text, text, bigint, text, text[], int[], int[], text[], bytea[], text[], text[], jsonb[]);
CREATE OR REPLACE FUNCTION {s}.append_many(
    p_categories text[], p_aggregates text[], p_expected bigint[], p_append_ids text[],
    p_event_counts int[],
    p_types text[], p_starts int[], p_counts int[], p_names text[], p_values bytea[],
    p_correlation text[], p_causation text[], p_metadata jsonb[]
) RETURNS TABLE (outcome text, version bigint, positions bigint[])
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_category text;
    v_aggregate text;
    v_last bigint;
    v_millis bigint;
    v_current bigint;
    v_count int;
    v_first int;
    v_next int := 0;
    v_positions bigint[];
BEGIN
    FOR v_category IN SELECT DISTINCT c FROM unnest(p_categories) AS c ORDER BY 1 LOOP
        INSERT INTO {s}.categories (category, last_position, last_millis)
            VALUES (v_category, 0, 0) ON CONFLICT (category) DO NOTHING;
        PERFORM 1 FROM {s}.categories c WHERE c.category = v_category FOR UPDATE;
    END LOOP;
    FOR a IN 1 .. cardinality(p_categories) LOOP
        v_category := p_categories[a];
        v_aggregate := p_aggregates[a];
        v_count := p_event_counts[a];
        v_first := v_next;
        v_next := v_next + v_count;
        IF p_append_ids[a] IS NOT NULL THEN
            RETURN QUERY SELECT 'done'::text, d.version, d.positions FROM {s}.appends d
                WHERE d.category = v_category AND d.aggregate_id = v_aggregate
                  AND d.append_id = p_append_ids[a];
            IF FOUND THEN CONTINUE; END IF;
        END IF;
        SELECT coalesce(max(e.version), 0) INTO v_current FROM {s}.events e
            WHERE e.category = v_category AND e.aggregate_id = v_aggregate;
        IF p_expected[a] >= 0 AND v_current <> p_expected[a] THEN
            RETURN QUERY SELECT 'conflict'::text, v_current, NULL::bigint[];
            CONTINUE;
        END IF;
        SELECT c.last_position, c.last_millis INTO v_last, v_millis
            FROM {s}.categories c WHERE c.category = v_category;
        v_millis := greatest(v_millis, (extract(epoch FROM clock_timestamp()) * 1000)::bigint);
        INSERT INTO {s}.events (category, position, aggregate_id, version, event_type, recorded_at,
                                correlation_id, causation_id, metadata, field_names, field_values)
            SELECT v_category, v_last + i, v_aggregate, v_current + i, p_types[v_first + i], v_millis,
                   p_correlation[v_first + i], p_causation[v_first + i], p_metadata[v_first + i],
                   coalesce(p_names[p_starts[v_first + i] + 1 : p_starts[v_first + i] + p_counts[v_first + i]], '{}'),
                   coalesce(p_values[p_starts[v_first + i] + 1 : p_starts[v_first + i] + p_counts[v_first + i]], '{}')
            FROM generate_series(1, v_count) AS i;
        UPDATE {s}.categories SET last_position = v_last + v_count, last_millis = v_millis
            WHERE category = v_category;
        v_positions := ARRAY(SELECT v_last + i FROM generate_series(1, v_count) AS i);
        IF p_append_ids[a] IS NOT NULL THEN
            INSERT INTO {s}.appends (category, aggregate_id, append_id, version, positions)
                VALUES (v_category, v_aggregate, p_append_ids[a], v_current + v_count, v_positions);
            -- Remember the stream's last {remember} append ids, as every backend does.
            DELETE FROM {s}.appends d
                WHERE d.category = v_category AND d.aggregate_id = v_aggregate
                  AND d.version < (SELECT min(r.version) FROM (
                      SELECT k.version FROM {s}.appends k
                      WHERE k.category = v_category AND k.aggregate_id = v_aggregate
                      ORDER BY k.version DESC LIMIT {remember}) r);
        END IF;
        RETURN QUERY SELECT 'ok'::text, v_current + v_count, v_positions;
    END LOOP;
END
$fn$;
"#;

/// The DDL for the schema `quoted` (already a quoted identifier).
pub(crate) fn ddl(quoted: &str) -> String {
    DDL.replace("{s}", quoted).replace(
        "{remember}",
        &es_core::memory::REMEMBERED_APPEND_IDS.to_string(),
    )
}

/// `name` as a quoted identifier, if it is a valid schema name: letters, digits and `_`,
/// at most 63 bytes (PostgreSQL's limit), not starting with a digit.
pub(crate) fn quote_schema(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then(|| format!("\"{name}\""))
}
