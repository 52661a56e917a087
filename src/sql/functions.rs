//! Which functions the analyser can see through.
//!
//! A function is *traceable* when its result depends only on its arguments: then the lineage of
//! its output is the union of its arguments' lineage, marked derived. Anything else — a
//! user-defined function, an extension function, a function that runs SQL text, reads files or
//! large objects, or talks to another server — can read protected data the statement never names,
//! so the analyser reports it as a problem and the caller refuses. The allowlist is therefore a
//! list of built-in `pg_catalog` functions, kept deliberately conservative: a missing entry costs
//! a refusal, a wrong entry costs a leak.

/// Built-in functions whose output depends only on their arguments (or on nothing readable by
/// the caller, like `now()`), so lineage through them is the union of their arguments.
const TRACEABLE: &[&str] = &[
    // aggregates
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "xmlagg",
    "mode",
    "percentile_cont",
    "percentile_disc",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_slope",
    "regr_intercept",
    "any_value",
    "range_agg",
    // window functions
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    // conditional
    "coalesce",
    "nullif",
    "greatest",
    "least",
    // string
    "lower",
    "upper",
    "initcap",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "bit_length",
    "substr",
    "substring",
    "left",
    "right",
    "concat",
    "concat_ws",
    "format",
    "replace",
    "translate",
    "regexp_replace",
    "regexp_match",
    "regexp_matches",
    "regexp_like",
    "regexp_count",
    "regexp_instr",
    "regexp_substr",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "split_part",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "lpad",
    "rpad",
    "reverse",
    "repeat",
    "position",
    "strpos",
    "starts_with",
    "ascii",
    "chr",
    "md5",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "encode",
    "decode",
    "convert_from",
    "convert_to",
    "to_hex",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "overlay",
    "string_to_array",
    "string_to_table",
    "array_to_string",
    "unistr",
    "normalize",
    "to_ascii",
    "hashtext",
    "casefold",
    // numeric
    "abs",
    "round",
    "trunc",
    "floor",
    "ceil",
    "ceiling",
    "mod",
    "power",
    "pow",
    "sqrt",
    "cbrt",
    "exp",
    "ln",
    "log",
    "log10",
    "sign",
    "div",
    "width_bucket",
    "random",
    "pi",
    "degrees",
    "radians",
    "gcd",
    "lcm",
    "scale",
    "to_char",
    "to_number",
    // date and time
    "now",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "date_trunc",
    "date_part",
    "date_bin",
    "extract",
    "age",
    "to_date",
    "to_timestamp",
    "make_date",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "make_interval",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "isfinite",
    "timezone",
    // json, arrays, rows
    "to_json",
    "to_jsonb",
    "row_to_json",
    "array_to_json",
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "json_object",
    "jsonb_object",
    "json_array_length",
    "jsonb_array_length",
    "json_extract_path",
    "jsonb_extract_path",
    "json_extract_path_text",
    "jsonb_extract_path_text",
    "jsonb_set",
    "jsonb_insert",
    "jsonb_strip_nulls",
    "json_strip_nulls",
    "jsonb_pretty",
    "json_typeof",
    "jsonb_typeof",
    "jsonb_path_query",
    "jsonb_path_query_array",
    "jsonb_path_query_first",
    "jsonb_path_exists",
    "jsonb_path_match",
    "json_each",
    "jsonb_each",
    "json_each_text",
    "jsonb_each_text",
    "json_array_elements",
    "jsonb_array_elements",
    "json_array_elements_text",
    "jsonb_array_elements_text",
    "json_object_keys",
    "jsonb_object_keys",
    "row",
    "array_length",
    "array_lower",
    "array_upper",
    "array_ndims",
    "array_dims",
    "cardinality",
    "array_append",
    "array_prepend",
    "array_cat",
    "array_position",
    "array_positions",
    "array_remove",
    "array_replace",
    "array_fill",
    "unnest",
    "generate_series",
    "generate_subscripts",
    "xmlelement",
    "xmlforest",
    "xmlconcat",
    "xmlparse",
    "xmlserialize",
    "xmlroot",
    "xmlpi",
    "xmlcomment",
    "xmltext",
    // ARRAY(subquery) and function-style casts
    "array",
    "text",
    "int2",
    "int4",
    "int8",
    "numeric",
    "float4",
    "float8",
    "date",
    "varchar",
    "bool",
    "bytea",
    // types, identity, harmless session information
    "pg_typeof",
    "format_type",
    "cast",
    "num_nonnulls",
    "num_nulls",
    "gen_random_uuid",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_user",
    "session_user",
    "user",
    "current_role",
    "current_catalog",
    "version",
    "pg_backend_pid",
    "inet_client_addr",
    "inet_server_addr",
    "txid_current",
    "pg_current_xact_id",
    "pg_sleep",
    "current_setting",
    "pg_postmaster_start_time",
    "pg_size_pretty",
    "pg_table_is_visible",
    "has_table_privilege",
    "has_column_privilege",
    "has_schema_privilege",
    "pg_get_userbyid",
    "obj_description",
    "col_description",
    "to_tsvector",
    "to_tsquery",
    "plainto_tsquery",
    "ts_rank",
    "ts_headline",
    "setweight",
    "lower_inc",
    "upper_inc",
    "isempty",
    "int4range",
    "int8range",
    "numrange",
    "tsrange",
    "tstzrange",
    "daterange",
];

/// Functions that reach data the statement does not name (SQL text they run, files, large
/// objects, other servers, other sessions' statement text, planner statistics, logical decoding),
/// so their output cannot be traced to the statement's columns. Refused for restricted roles.
/// Named separately so the problem message can say why, not just "unknown function".
const DATA_EXPOSING: &[&str] = &[
    "lo_get",
    "lo_export",
    "lo_import",
    "lo_open",
    "loread",
    "lo_read",
    "lo_from_bytea",
    "lo_put",
    "lowrite",
    "lo_creat",
    "lo_create",
    "pg_read_file",
    "pg_read_file_old",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_file_write",
    "dblink",
    "dblink_exec",
    "dblink_open",
    "dblink_fetch",
    "dblink_send_query",
    "dblink_get_result",
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "table_to_xml",
    "table_to_xml_and_xmlschema",
    "cursor_to_xml",
    "schema_to_xml",
    "database_to_xml",
    "ts_stat",
    "ts_rewrite",
    "pg_stat_get_activity",
    "pg_stat_get_backend_activity",
    "pg_mcv_list_items",
    "pg_show_all_file_settings",
    "xpath_table",
];

/// Name prefixes of [`DATA_EXPOSING`] families (every version's members, present and future).
const DATA_EXPOSING_PREFIXES: &[&str] = &[
    "lo_",
    "dblink",
    "pg_read_",
    "pg_ls_",
    "pg_file_",
    "pg_logical_slot_",
    "pg_stat_statements",
];

/// Built-in functions that send their arguments somewhere other sessions or the server's files
/// can see (notifications, settings, WAL messages, advisory lock keys). Their output is
/// traceable like a value function's, but every argument is a *use* in [`Clause::SideChannel`]
/// (crate::sql::Clause): allowed when no protected column reaches it, refused when one does.
const SINKS: &[&str] = &[
    "pg_notify",
    "set_config",
    "pg_logical_emit_message",
    "pg_create_restore_point",
];

/// Every function in PostgreSQL 15's `pg_catalog` (`SELECT DISTINCT proname FROM pg_proc WHERE
/// pronamespace = 'pg_catalog'::regnamespace`), one name a line. The test
/// `every_live_builtin_is_classified` checks the list against the running server's `pg_proc`.
/// A built-in not in [`DATA_EXPOSING`] or [`SINKS`] is a value function (output derived from its
/// arguments) or a catalog/system function (reads catalogs and server state, never table rows).
const BUILTINS: &str = include_str!("builtins.txt");

fn is_builtin(name: &str) -> bool {
    use std::sync::OnceLock;
    static SET: OnceLock<std::collections::HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        BUILTINS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    })
    .contains(name)
        || TRACEABLE.contains(&name)
}

/// PostgreSQL's own SQL functions in `information_schema` (created by `initdb`, owned by the
/// bootstrap superuser in a schema nobody else may create in) that drivers call by their
/// qualified name: pgjdbc's `getPrimaryKeys`, `getIndexInfo` and `getImportedKeys` use
/// `information_schema._pg_expandarray(indkey)`. Each computes from its arguments and the
/// catalogs only. Traceable only when qualified: unqualified, the name resolves through the
/// search path, where a user's function of the same name could be.
const INFORMATION_SCHEMA: &[&str] = &[
    "_pg_expandarray",
    "_pg_index_position",
    "_pg_truetypid",
    "_pg_truetypmod",
    "_pg_char_max_length",
    "_pg_char_octet_length",
    "_pg_numeric_precision",
    "_pg_numeric_precision_radix",
    "_pg_numeric_scale",
    "_pg_datetime_precision",
    "_pg_interval_type",
];

/// Relations that expose data values from other tables (histograms, most-common values), or
/// other sessions' statement text, which may carry literal protected values.
const DATA_EXPOSING_RELATIONS: &[&str] = &[
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic",
    "pg_statistic_ext_data",
    "pg_stat_statements",
    "pg_stat_activity",
    "pg_largeobject",
];

/// How a function name resolves for lineage purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionClass {
    /// Built-in, output depends only on arguments.
    Traceable,
    /// Known to expose data through a side channel or hidden SQL.
    DataExposing,
    /// Built-in whose arguments leave the statement (see [`SINKS`]): traceable, and every
    /// argument is a side-channel use.
    Sink,
    /// Anything else (user-defined, extension, unknown): its output cannot be traced.
    Untraceable,
}

/// Classifies a function by its (already folded) schema and name. A schema other than
/// `pg_catalog` means a user-defined function even when the name matches a built-in.
pub fn classify(schema: Option<&str>, name: &str) -> FunctionClass {
    if DATA_EXPOSING.contains(&name)
        || DATA_EXPOSING_PREFIXES.iter().any(|p| name.starts_with(p))
        || name.contains("_to_xml")
    {
        return FunctionClass::DataExposing;
    }
    match schema {
        None | Some("pg_catalog") if SINKS.contains(&name) || name.contains("_advisory_") => {
            FunctionClass::Sink
        }
        None | Some("pg_catalog") if is_builtin(name) => FunctionClass::Traceable,
        Some("information_schema") if INFORMATION_SCHEMA.contains(&name) => {
            FunctionClass::Traceable
        }
        _ => FunctionClass::Untraceable,
    }
}

/// True for catalog relations whose rows expose data values (see [`DATA_EXPOSING_RELATIONS`]).
/// The relations and functions that show other sessions' activity (their statement text, which
/// may carry literal protected values). Refused like any data-exposing object unless the role's
/// policy says `see_activity: true`.
pub fn is_session_activity(name: &str) -> bool {
    matches!(
        name,
        "pg_stat_activity"
            | "pg_stat_statements"
            | "pg_stat_get_activity"
            | "pg_stat_get_backend_activity"
    )
}

pub fn is_data_exposing_relation(schema: Option<&str>, name: &str) -> bool {
    matches!(schema, None | Some("pg_catalog") | Some("public"))
        && DATA_EXPOSING_RELATIONS.contains(&name)
}

/// The output column names of a set-returning function used in FROM, when no column alias list
/// is given. `None` means a single column named after the function (or its alias).
pub fn set_returning_columns(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "json_each" | "jsonb_each" | "json_each_text" | "jsonb_each_text" => {
            Some(&["key", "value"])
        }
        "_pg_expandarray" => Some(&["x", "n"]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_is_traceable_only_from_pg_catalog() {
        assert_eq!(classify(None, "lower"), FunctionClass::Traceable);
        assert_eq!(
            classify(Some("pg_catalog"), "lower"),
            FunctionClass::Traceable
        );
        assert_eq!(
            classify(Some("public"), "lower"),
            FunctionClass::Untraceable
        );
        assert_eq!(classify(None, "my_decrypt"), FunctionClass::Untraceable);
        assert_eq!(
            classify(Some("information_schema"), "_pg_expandarray"),
            FunctionClass::Traceable
        );
        // Unqualified, or in another schema, it may be a user's function.
        assert_eq!(
            classify(None, "_pg_expandarray"),
            FunctionClass::Untraceable
        );
        assert_eq!(
            classify(Some("public"), "_pg_expandarray"),
            FunctionClass::Untraceable
        );
        assert_eq!(
            classify(Some("information_schema"), "my_decrypt"),
            FunctionClass::Untraceable
        );
    }

    #[test]
    fn side_channels_are_data_exposing() {
        for name in [
            "lo_get",
            "lo_export",
            "dblink",
            "pg_read_file",
            "query_to_xml",
            "ts_rewrite",
            "pg_stat_get_activity",
            "pg_logical_slot_peek_changes",
        ] {
            assert_eq!(classify(None, name), FunctionClass::DataExposing, "{name}");
        }
        for name in [
            "pg_notify",
            "set_config",
            "pg_advisory_lock",
            "pg_try_advisory_xact_lock",
        ] {
            assert_eq!(classify(None, name), FunctionClass::Sink, "{name}");
        }
        assert_eq!(
            classify(Some("public"), "pg_notify"),
            FunctionClass::Untraceable
        );
    }

    #[test]
    fn catalog_functions_are_builtins() {
        for name in [
            "pg_get_expr",
            "pg_encoding_to_char",
            "pg_function_is_visible",
            "pg_total_relation_size",
            "pg_size_pretty",
            "format_type",
            "pg_advisory_unlock_all",
        ] {
            assert_ne!(classify(None, name), FunctionClass::Untraceable, "{name}");
        }
    }

    #[test]
    fn lists_do_not_overlap() {
        for name in TRACEABLE {
            assert_ne!(classify(None, name), FunctionClass::DataExposing, "{name}");
        }
    }
}
