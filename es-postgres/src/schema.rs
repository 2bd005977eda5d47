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

-- Data subjects' keys (es_core::personal): the key is NULL once the subject is erased; the
-- generation stays, so a subject written again gets the next one.
CREATE TABLE IF NOT EXISTS {s}.subject_keys (
    subject    text  PRIMARY KEY,
    generation int   NOT NULL,
    key        bytea
);

CREATE TABLE IF NOT EXISTS {s}.read_model_fields (
    projection text  NOT NULL,
    hash       text  NOT NULL,
    field      text  NOT NULL,
    value      bytea NOT NULL,
    PRIMARY KEY (projection, hash, field)
);

-- A call of appends (group commit), in one transaction and a fixed number of statements
-- whatever the number of appends. It locks the row of every category of the call, in one
-- order (so calls never deadlock), reads the current version of every aggregate and the
-- first result of every retried append id, then decides each append on its own, in order
-- (a retried id answers with its first result; an expected version that does not match
-- (-1: any) is a conflict and writes nothing), and writes what passed with one INSERT per
-- table. Append a's events are the next p_event_counts[a] of the event arrays; event i's
-- fields are names[starts[i] + 1 .. starts[i] + counts[i]] (and values alike). One row per
-- append: its outcome, version, first position and event count (an append's positions are
-- consecutive: its category is locked while it is written).
CREATE OR REPLACE FUNCTION {s}.append_events(
    p_categories text[], p_aggregates text[], p_expected bigint[], p_append_ids text[],
    p_event_counts int[],
    p_types text[], p_starts int[], p_counts int[], p_names text[], p_values bytea[],
    p_correlation text[], p_causation text[], p_metadata jsonb[]
) RETURNS TABLE (outcome text, version bigint, first_position bigint, event_count int)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_now bigint := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    -- Per category of the call, sorted: its last position and time.
    v_cats text[];
    v_lasts bigint[];
    v_millis bigint[];
    -- Per aggregate of the call (category, chr(31), id): its current version.
    v_streams text[];
    v_versions bigint[];
    -- Appends already done (category, id, append id): version, first position, count.
    d_keys text[];
    d_versions bigint[];
    d_firsts bigint[];
    d_counts int[];
    -- The events to write, as indexes into the event arrays with their place.
    e_index int[] := '{}';
    e_category text[] := '{}';
    e_aggregate text[] := '{}';
    e_position bigint[] := '{}';
    e_version bigint[] := '{}';
    e_millis bigint[] := '{}';
    -- The append ids to record.
    r_category text[] := '{}';
    r_aggregate text[] := '{}';
    r_id text[] := '{}';
    r_version bigint[] := '{}';
    r_first bigint[] := '{}';
    r_count int[] := '{}';
    -- Each append's reply.
    o_outcome text[] := '{}';
    o_version bigint[] := '{}';
    o_first bigint[] := '{}';
    o_count int[] := '{}';
    v_next int := 0;
    v_count int;
    v_stream int;
    v_cat int;
    v_current bigint;
    v_done text;
    v_done_at int;
BEGIN
    SELECT array_agg(c ORDER BY c) INTO v_cats FROM (SELECT DISTINCT c FROM unnest(p_categories) AS c) t;
    INSERT INTO {s}.categories (category, last_position, last_millis)
        SELECT c, 0, 0 FROM unnest(v_cats) AS c ON CONFLICT (category) DO NOTHING;
    SELECT array_agg(l ORDER BY c), array_agg(greatest(m, v_now) ORDER BY c) INTO v_lasts, v_millis
        FROM (SELECT t.category AS c, t.last_position AS l, t.last_millis AS m
              FROM {s}.categories t WHERE t.category = ANY (v_cats)
              ORDER BY t.category FOR UPDATE) locked;
    SELECT array_agg(s.c || chr(31) || s.a),
           array_agg(coalesce((SELECT max(e.version) FROM {s}.events e
                               WHERE e.category = s.c AND e.aggregate_id = s.a), 0))
        INTO v_streams, v_versions
        FROM (SELECT DISTINCT c, a FROM unnest(p_categories, p_aggregates) AS u(c, a)) s;
    SELECT array_agg(d.category || chr(31) || d.aggregate_id || chr(31) || d.append_id),
           array_agg(d.version), array_agg(d.positions[1]), array_agg(cardinality(d.positions))
        INTO d_keys, d_versions, d_firsts, d_counts
        FROM {s}.appends d
        JOIN (SELECT DISTINCT c, a, i FROM unnest(p_categories, p_aggregates, p_append_ids) AS u(c, a, i)
              WHERE i IS NOT NULL) u
          ON d.category = u.c AND d.aggregate_id = u.a AND d.append_id = u.i;
    FOR a IN 1 .. cardinality(p_categories) LOOP
        v_count := p_event_counts[a];
        v_next := v_next + v_count;
        IF p_append_ids[a] IS NOT NULL THEN
            v_done := p_categories[a] || chr(31) || p_aggregates[a] || chr(31) || p_append_ids[a];
            v_done_at := array_position(d_keys, v_done);
            IF v_done_at IS NOT NULL THEN
                o_outcome := o_outcome || 'done'::text;
                o_version := o_version || d_versions[v_done_at];
                o_first := o_first || d_firsts[v_done_at];
                o_count := o_count || d_counts[v_done_at];
                CONTINUE;
            END IF;
        END IF;
        v_stream := array_position(v_streams, p_categories[a] || chr(31) || p_aggregates[a]);
        v_current := v_versions[v_stream];
        IF p_expected[a] >= 0 AND v_current <> p_expected[a] THEN
            o_outcome := o_outcome || 'conflict'::text;
            o_version := o_version || v_current;
            o_first := o_first || 0::bigint;
            o_count := o_count || 0;
            CONTINUE;
        END IF;
        v_cat := array_position(v_cats, p_categories[a]);
        FOR i IN 1 .. v_count LOOP
            e_index := e_index || (v_next - v_count + i);
            e_category := e_category || p_categories[a];
            e_aggregate := e_aggregate || p_aggregates[a];
            e_position := e_position || (v_lasts[v_cat] + i);
            e_version := e_version || (v_current + i);
            e_millis := e_millis || v_millis[v_cat];
        END LOOP;
        o_outcome := o_outcome || 'ok'::text;
        o_version := o_version || (v_current + v_count);
        o_first := o_first || (v_lasts[v_cat] + 1);
        o_count := o_count || v_count;
        IF p_append_ids[a] IS NOT NULL THEN
            r_category := r_category || p_categories[a];
            r_aggregate := r_aggregate || p_aggregates[a];
            r_id := r_id || p_append_ids[a];
            r_version := r_version || (v_current + v_count);
            r_first := r_first || (v_lasts[v_cat] + 1);
            r_count := r_count || v_count;
            d_keys := d_keys || v_done;
            d_versions := d_versions || (v_current + v_count);
            d_firsts := d_firsts || (v_lasts[v_cat] + 1);
            d_counts := d_counts || v_count;
        END IF;
        v_lasts[v_cat] := v_lasts[v_cat] + v_count;
        v_versions[v_stream] := v_current + v_count;
    END LOOP;
    INSERT INTO {s}.events (category, position, aggregate_id, version, event_type, recorded_at,
                            correlation_id, causation_id, metadata, field_names, field_values)
        SELECT u.c, u.p, u.a, u.v, p_types[u.x], u.m, p_correlation[u.x], p_causation[u.x],
               p_metadata[u.x],
               coalesce(p_names[p_starts[u.x] + 1 : p_starts[u.x] + p_counts[u.x]], '{}'),
               coalesce(p_values[p_starts[u.x] + 1 : p_starts[u.x] + p_counts[u.x]], '{}')
        FROM unnest(e_category, e_position, e_aggregate, e_version, e_index, e_millis)
             AS u(c, p, a, v, x, m);
    UPDATE {s}.categories t SET last_position = u.l, last_millis = u.m
        FROM unnest(v_cats, v_lasts, v_millis) AS u(c, l, m) WHERE t.category = u.c;
    IF cardinality(r_id) > 0 THEN
        INSERT INTO {s}.appends (category, aggregate_id, append_id, version, positions)
            SELECT u.c, u.a, u.i, u.v, ARRAY(SELECT generate_series(u.f, u.f + u.n - 1))
            FROM unnest(r_category, r_aggregate, r_id, r_version, r_first, r_count)
                 AS u(c, a, i, v, f, n);
        -- Remember each stream's last {remember} append ids, as every backend does.
        DELETE FROM {s}.appends d
            USING (SELECT DISTINCT c, a FROM unnest(r_category, r_aggregate) AS u(c, a)) s
            WHERE d.category = s.c AND d.aggregate_id = s.a
              AND d.version < (SELECT min(r.version) FROM (
                  SELECT k.version FROM {s}.appends k
                  WHERE k.category = s.c AND k.aggregate_id = s.a
                  ORDER BY k.version DESC LIMIT {remember}) r);
    END IF;
    IF cardinality(e_index) > 0 THEN
        -- Wakes the projections that wait for new events (delivered at commit).
        PERFORM pg_notify('{channel}', '');
    END IF;
    RETURN QUERY SELECT u.o, u.v, u.f, u.n FROM unnest(o_outcome, o_version, o_first, o_count)
        WITH ORDINALITY AS u(o, v, f, n, ord) ORDER BY u.ord;
END
$fn$;
"#;

/// The DDL for the schema `quoted` (already a quoted identifier) whose appends notify
/// `channel`.
pub(crate) fn ddl(quoted: &str, channel: &str) -> String {
    DDL.replace("{s}", quoted)
        .replace("{channel}", channel)
        .replace(
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
