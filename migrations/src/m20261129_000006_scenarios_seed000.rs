//! The chatbot tables in seed 000's terms (issue 11, DESIGN §4): scenarios,
//! scenario_items, template_scenarios, scenario_runs and
//! customer_blocked_scenarios take the seed's fields under their own
//! (snake_case) names, plus `scenario_settings` (a config's fallback text,
//! exit keywords and default scenario) and `chats.handoff_at`.
//!
//! What changes, and why:
//! - `scenarios`: `name` → `title`, `is_active` → `active`,
//!   `max_runs_per_customer` → `repeat_count` (NULL, "no limit", becomes
//!   0, the seed's "unlimited"); new `type` (`client` | `generic`);
//!   `config_id` becomes nullable: a generic scenario serves every config.
//!   `start_item_id` goes: a run starts at the items without parents.
//!   A title is unique per config (the flow file identifies scenarios by
//!   title), and among generic scenarios.
//! - `scenario_items`: `content` → `label`; new `ref` (the flow file's
//!   name of the item, unique per scenario), `url`,
//!   `template_scenario_ids` (seed 000 spells it `template_scenatio_id`).
//!   `trigger` and `payload` go: options are the children.
//! - `template_scenarios`: `name` → `ref`; new `thumbnail_id`; a template
//!   belongs to a config, not to one scenario or item (items point at it).
//! - `scenario_runs`: one row per run (the repeat limit counts rows), so
//!   `run_count` and the unique (scenario, customer) pair go;
//!   `completed_at` → `ended_at`; statuses `active` → `waiting`,
//!   `completed` → `finished`; new `fallback_count`, `start_message_id`
//!   (unique: one inbound message starts at most one run) and
//!   `last_message_id` (the last inbound message the run consumed, so a
//!   redelivered job changes nothing twice). At most one `waiting` run per
//!   customer (a partial unique index).
//!
//! SQLite cannot make a column nullable or drop a constraint in place, so
//! the five tables are rebuilt on both backends the same way: new tables
//! under a temporary name (children pointing at the new `scenarios`),
//! rows copied, old tables dropped children first (so no cascade fires),
//! then renamed. SQLite (3.26+) rewrites the children's foreign keys on
//! the rename; PostgreSQL keeps them by oid. The whole migration runs in
//! one transaction on both backends.

use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The five rebuilt tables, parents first.
const TABLES: [&str; 5] = [
    "scenarios",
    "customer_blocked_scenarios",
    "scenario_items",
    "template_scenarios",
    "scenario_runs",
];

fn base(name: String) -> TableCreateStatement {
    Table::create()
        .table(Alias::new(name))
        .col(pk_uuid("id"))
        .col(timestamp_with_time_zone("created_at"))
        .col(timestamp_with_time_zone("updated_at"))
        .to_owned()
}

fn fk(t: &mut TableCreateStatement, col: &'static str, target: &str, on_delete: ForeignKeyAction) {
    t.foreign_key(
        ForeignKey::create()
            .from_col(col)
            .to(Alias::new(target), "id")
            .on_delete(on_delete),
    );
}

/// The new shape of `table`, created as `{table}_{suffix}`; foreign keys
/// to `scenarios` point at `scenarios_{suffix}`.
fn new_shape(table: &str, suffix: &str) -> TableCreateStatement {
    let scenarios = format!("scenarios_{suffix}");
    let name = format!("{table}_{suffix}");
    match table {
        "scenarios" => {
            let mut t = base(name);
            t.col(uuid_null("config_id"))
                .col(string("title"))
                .col(string("type").default("client"))
                .col(text_null("description"))
                .col(json_binary_null("keywords"))
                .col(boolean("active").default(true))
                .col(integer("repeat_count").default(0))
                .col(integer("priority").default(0))
                .col(boolean("is_deleted").default(false))
                .col(timestamp_with_time_zone_null("deleted_at"));
            fk(
                &mut t,
                "config_id",
                "whatsapp_configs",
                ForeignKeyAction::Cascade,
            );
            t
        }
        "customer_blocked_scenarios" => {
            let mut t = Table::create()
                .table(Alias::new(name))
                .col(uuid("customer_id"))
                .col(uuid("scenario_id"))
                .col(uuid("config_id"))
                .col(timestamp_with_time_zone("created_at"))
                .col(timestamp_with_time_zone("updated_at"))
                .primary_key(Index::create().col("customer_id").col("scenario_id"))
                .to_owned();
            fk(
                &mut t,
                "customer_id",
                "customers",
                ForeignKeyAction::Cascade,
            );
            fk(&mut t, "scenario_id", &scenarios, ForeignKeyAction::Cascade);
            t
        }
        "scenario_items" => {
            let mut t = base(name);
            t.col(uuid_null("config_id"))
                .col(uuid("scenario_id"))
                .col(string("ref"))
                .col(string("type").default("text"))
                .col(text_null("label"))
                .col(text_null("url"))
                .col(string_null("title"))
                .col(json_binary_null("parents"))
                .col(json_binary_null("children"))
                // seed 000 `template_scenatio_id` (sic): the template
                // scenarios a product_list item sends.
                .col(json_binary_null("template_scenario_ids"))
                .col(integer("position").default(0));
            fk(
                &mut t,
                "config_id",
                "whatsapp_configs",
                ForeignKeyAction::Cascade,
            );
            fk(&mut t, "scenario_id", &scenarios, ForeignKeyAction::Cascade);
            t
        }
        "template_scenarios" => {
            let mut t = base(name);
            t.col(uuid_null("config_id"))
                .col(string("ref"))
                .col(string_null("thumbnail_id"))
                .col(string_null("catalog_id"))
                .col(text_null("header"))
                .col(text_null("body"))
                .col(text_null("footer"))
                .col(json_binary_null("sections"));
            fk(
                &mut t,
                "config_id",
                "whatsapp_configs",
                ForeignKeyAction::Cascade,
            );
            t
        }
        "scenario_runs" => {
            let mut t = base(name);
            t.col(uuid("config_id"))
                .col(uuid("scenario_id"))
                .col(uuid("customer_id"))
                .col(uuid_null("chat_id"))
                .col(uuid_null("current_item_id"))
                .col(string("status").default("waiting"))
                .col(integer("fallback_count").default(0))
                .col(uuid_null("start_message_id"))
                .col(uuid_null("last_message_id"))
                .col(timestamp_with_time_zone("started_at"))
                .col(timestamp_with_time_zone("last_step_at"))
                .col(timestamp_with_time_zone_null("ended_at"));
            fk(
                &mut t,
                "config_id",
                "whatsapp_configs",
                ForeignKeyAction::Cascade,
            );
            fk(&mut t, "scenario_id", &scenarios, ForeignKeyAction::Cascade);
            fk(
                &mut t,
                "customer_id",
                "customers",
                ForeignKeyAction::Cascade,
            );
            t
        }
        _ => unreachable!("not a rebuilt table: {table}"),
    }
}

/// The shape of migration 000001, for `down`.
fn old_shape(table: &str, suffix: &str) -> TableCreateStatement {
    let scenarios = format!("scenarios_{suffix}");
    let name = format!("{table}_{suffix}");
    let tenant = |t: &mut TableCreateStatement| {
        t.col(uuid("config_id"));
        fk(
            t,
            "config_id",
            "whatsapp_configs",
            ForeignKeyAction::Cascade,
        );
    };
    match table {
        "scenarios" => {
            let mut t = base(name);
            tenant(&mut t);
            t.col(string("name"))
                .col(text_null("description"))
                .col(json_binary_null("keywords"))
                .col(boolean("is_active").default(true))
                .col(uuid_null("start_item_id"))
                .col(integer("priority").default(0))
                .col(integer_null("max_runs_per_customer"))
                .col(boolean("is_deleted").default(false))
                .col(timestamp_with_time_zone_null("deleted_at"));
            t
        }
        "customer_blocked_scenarios" => {
            let mut t = new_shape(table, suffix);
            t.table(Alias::new(format!("{table}_{suffix}")));
            t
        }
        "scenario_items" => {
            let mut t = base(name);
            tenant(&mut t);
            t.col(uuid("scenario_id"))
                .col(string("type").default("text"))
                .col(string_null("title"))
                .col(text_null("content"))
                .col(string_null("trigger"))
                .col(json_binary_null("payload"))
                .col(json_binary_null("parents"))
                .col(json_binary_null("children"))
                .col(integer("position").default(0));
            fk(&mut t, "scenario_id", &scenarios, ForeignKeyAction::Cascade);
            t
        }
        "template_scenarios" => {
            let mut t = base(name);
            tenant(&mut t);
            t.col(uuid_null("scenario_id"))
                .col(uuid_null("scenario_item_id"))
                .col(string("name"))
                .col(text_null("header"))
                .col(text_null("body"))
                .col(text_null("footer"))
                .col(string_null("catalog_id"))
                .col(json_binary_null("sections"));
            fk(&mut t, "scenario_id", &scenarios, ForeignKeyAction::Cascade);
            t
        }
        "scenario_runs" => {
            let mut t = base(name);
            tenant(&mut t);
            t.col(uuid("scenario_id"))
                .col(uuid("customer_id"))
                .col(uuid_null("chat_id"))
                .col(uuid_null("current_item_id"))
                .col(string("status").default("active"))
                .col(integer("run_count").default(1))
                .col(timestamp_with_time_zone("started_at"))
                .col(timestamp_with_time_zone("last_step_at"))
                .col(timestamp_with_time_zone_null("completed_at"));
            fk(&mut t, "scenario_id", &scenarios, ForeignKeyAction::Cascade);
            fk(
                &mut t,
                "customer_id",
                "customers",
                ForeignKeyAction::Cascade,
            );
            t
        }
        _ => unreachable!("not a rebuilt table: {table}"),
    }
}

/// `(new columns, SELECT expressions over the old table)` for `up`. The
/// expressions are plain SQL both backends accept.
fn up_copy(table: &str, backend: DbBackend) -> (&'static str, String) {
    match table {
        "scenarios" => (
            "id, created_at, updated_at, config_id, title, type, description, keywords, active, \
             repeat_count, priority, is_deleted, deleted_at",
            "id, created_at, updated_at, config_id, name, 'client', description, keywords, \
             is_active, COALESCE(max_runs_per_customer, 0), priority, is_deleted, deleted_at"
                .into(),
        ),
        "customer_blocked_scenarios" => (
            "customer_id, scenario_id, config_id, created_at, updated_at",
            "customer_id, scenario_id, config_id, created_at, updated_at".into(),
        ),
        "scenario_items" => {
            // Rows from before the flow file have no ref: their id stands in.
            let id_text = match backend {
                DbBackend::Sqlite => "lower(hex(id))",
                _ => "CAST(id AS TEXT)",
            };
            (
                "id, created_at, updated_at, config_id, scenario_id, ref, type, label, title, \
                 parents, children, position",
                format!(
                    "id, created_at, updated_at, config_id, scenario_id, {id_text}, type, \
                     content, title, parents, children, position"
                ),
            )
        }
        "template_scenarios" => (
            "id, created_at, updated_at, config_id, ref, catalog_id, header, body, footer, sections",
            "id, created_at, updated_at, config_id, name, catalog_id, header, body, footer, sections"
                .into(),
        ),
        "scenario_runs" => (
            "id, created_at, updated_at, config_id, scenario_id, customer_id, chat_id, \
             current_item_id, status, started_at, last_step_at, ended_at",
            "id, created_at, updated_at, config_id, scenario_id, customer_id, chat_id, \
             current_item_id, CASE status WHEN 'active' THEN 'waiting' WHEN 'completed' \
             THEN 'finished' ELSE status END, started_at, last_step_at, completed_at"
                .into(),
        ),
        _ => unreachable!("not a rebuilt table: {table}"),
    }
}

/// `(old columns, SELECT expressions over the new table, WHERE)` for
/// `down`. Generic scenarios (no config) have no place in the old shape and
/// are dropped with everything that hangs on them.
fn down_copy(table: &str) -> (&'static str, &'static str, &'static str) {
    match table {
        "scenarios" => (
            "id, created_at, updated_at, config_id, name, description, keywords, is_active, \
             priority, max_runs_per_customer, is_deleted, deleted_at",
            "id, created_at, updated_at, config_id, title, description, keywords, active, \
             priority, NULLIF(repeat_count, 0), is_deleted, deleted_at",
            "config_id IS NOT NULL",
        ),
        "customer_blocked_scenarios" => (
            "customer_id, scenario_id, config_id, created_at, updated_at",
            "customer_id, scenario_id, config_id, created_at, updated_at",
            "scenario_id IN (SELECT id FROM scenarios WHERE config_id IS NOT NULL)",
        ),
        "scenario_items" => (
            "id, created_at, updated_at, config_id, scenario_id, type, title, content, parents, \
             children, position",
            "id, created_at, updated_at, config_id, scenario_id, type, title, label, parents, \
             children, position",
            "config_id IS NOT NULL \
             AND scenario_id IN (SELECT id FROM scenarios WHERE config_id IS NOT NULL)",
        ),
        "template_scenarios" => (
            "id, created_at, updated_at, config_id, name, header, body, footer, catalog_id, \
             sections",
            "id, created_at, updated_at, config_id, ref, header, body, footer, catalog_id, \
             sections",
            "config_id IS NOT NULL",
        ),
        "scenario_runs" => (
            "id, created_at, updated_at, config_id, scenario_id, customer_id, chat_id, \
             current_item_id, status, started_at, last_step_at, completed_at",
            "id, created_at, updated_at, config_id, scenario_id, customer_id, chat_id, \
             current_item_id, CASE status WHEN 'waiting' THEN 'active' WHEN 'finished' \
             THEN 'completed' ELSE status END, started_at, last_step_at, ended_at",
            // The old shape keeps one row per (scenario, customer): the latest run.
            "scenario_id IN (SELECT id FROM scenarios WHERE config_id IS NOT NULL) \
             AND NOT EXISTS (SELECT 1 FROM scenario_runs r2 \
             WHERE r2.scenario_id = scenario_runs.scenario_id \
             AND r2.customer_id = scenario_runs.customer_id \
             AND (r2.started_at > scenario_runs.started_at \
             OR (r2.started_at = scenario_runs.started_at AND r2.id > scenario_runs.id)))",
        ),
        _ => unreachable!("not a rebuilt table: {table}"),
    }
}

fn index(table: &str, name: &str, cols: &[&'static str]) -> IndexCreateStatement {
    let mut i = Index::create();
    i.name(name).table(Alias::new(table));
    for c in cols {
        i.col(*c);
    }
    i.to_owned()
}

fn new_indexes() -> Vec<IndexCreateStatement> {
    let mut out = vec![
        index("scenarios", "ix_scenarios_active", &["config_id", "active"]),
        index(
            "scenario_items",
            "ix_scenario_items_scenario",
            &["scenario_id", "position"],
        ),
        index(
            "scenario_runs",
            "ix_scenario_runs_customer",
            &["customer_id", "scenario_id"],
        ),
        index(
            "scenario_runs",
            "ix_scenario_runs_last_message",
            &["customer_id", "last_message_id"],
        ),
    ];
    // The flow file names scenarios by title and items and templates by
    // ref: import replaces by these keys.
    let mut u = index("scenarios", "ux_scenarios_title", &["config_id", "title"]);
    out.push(u.unique().to_owned());
    let mut u = index("scenarios", "ux_scenarios_generic_title", &["title"]);
    out.push(
        u.unique()
            .and_where(Expr::col("config_id").is_null())
            .to_owned(),
    );
    let mut u = index(
        "scenario_items",
        "ux_scenario_items_ref",
        &["scenario_id", "ref"],
    );
    out.push(u.unique().to_owned());
    let mut u = index(
        "template_scenarios",
        "ux_template_scenarios_ref",
        &["config_id", "ref"],
    );
    out.push(u.unique().to_owned());
    // One inbound message starts at most one run, even when its job is
    // delivered twice.
    let mut u = index(
        "scenario_runs",
        "ux_scenario_runs_start_message",
        &["start_message_id"],
    );
    out.push(u.unique().to_owned());
    // A customer waits in at most one run.
    let mut u = index(
        "scenario_runs",
        "ux_scenario_runs_waiting",
        &["customer_id"],
    );
    out.push(
        u.unique()
            .and_where(Expr::col("status").eq("waiting"))
            .to_owned(),
    );
    out
}

fn old_indexes() -> Vec<IndexCreateStatement> {
    vec![
        index(
            "scenarios",
            "ix_scenarios_active",
            &["config_id", "is_active"],
        ),
        index(
            "scenario_items",
            "ix_scenario_items_scenario",
            &["scenario_id", "position"],
        ),
        index(
            "template_scenarios",
            "ix_template_scenarios_scenario",
            &["scenario_id"],
        ),
        index(
            "scenario_runs",
            "ux_scenario_runs_customer",
            &["scenario_id", "customer_id"],
        )
        .unique()
        .to_owned(),
    ]
}

fn settings_table() -> TableCreateStatement {
    let mut t = Table::create()
        .table("scenario_settings")
        .col(pk_uuid("config_id"))
        .col(timestamp_with_time_zone("created_at"))
        .col(timestamp_with_time_zone("updated_at"))
        // Sent with the options again when an answer is neither an option
        // nor a keyword; none by default.
        .col(text_null("fallback"))
        // NULL: the default ["stop", "menu"].
        .col(json_binary_null("exit_keywords"))
        // The title of the scenario "menu" starts (a title, not an id: an
        // import replaces scenarios by title).
        .col(string_null("default_scenario"))
        // The label of the button that opens a list (NULL: "Menu").
        .col(string_null("list_button"))
        .to_owned();
    t.foreign_key(
        ForeignKey::create()
            .from_col("config_id")
            .to("whatsapp_configs", "id")
            .on_delete(ForeignKeyAction::Cascade),
    );
    t
}

/// Rebuilds the five tables into `shape`, copying rows with `copy`.
async fn rebuild(
    manager: &SchemaManager<'_>,
    suffix: &str,
    shape: fn(&str, &str) -> TableCreateStatement,
    copy: &(dyn Fn(&str) -> String + Sync),
) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for t in TABLES {
        manager.create_table(shape(t, suffix)).await?;
        db.execute_unprepared(&copy(t)).await?;
    }
    for t in TABLES.iter().rev() {
        manager
            .drop_table(Table::drop().table(Alias::new(*t)).to_owned())
            .await?;
    }
    for t in TABLES {
        manager
            .rename_table(
                Table::rename()
                    .table(Alias::new(format!("{t}_{suffix}")), Alias::new(t))
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            // The primary key index keeps the temporary name otherwise.
            db.execute_unprepared(&format!(
                "ALTER INDEX IF EXISTS {t}_{suffix}_pkey RENAME TO {t}_pkey"
            ))
            .await?;
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// SQLite too: a half-rebuilt schema must never be left behind.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        rebuild(manager, "v6", new_shape, &|t| {
            let (cols, select) = up_copy(t, backend);
            format!("INSERT INTO {t}_v6 ({cols}) SELECT {select} FROM {t}")
        })
        .await?;
        for i in new_indexes() {
            manager.create_index(i).await?;
        }
        manager.create_table(settings_table()).await?;
        // Set when a handoff item hands the chat to a human; the bot stays
        // silent until an agent resolves the chat (`resolved_at` after it).
        manager
            .alter_table(
                Table::alter()
                    .table("chats")
                    .add_column(timestamp_with_time_zone_null("handoff_at"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("chats")
                    .drop_column("handoff_at")
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table("scenario_settings").to_owned())
            .await?;
        rebuild(manager, "v5", old_shape, &|t| {
            let (cols, select, filter) = down_copy(t);
            format!("INSERT INTO {t}_v5 ({cols}) SELECT {select} FROM {t} WHERE {filter}")
        })
        .await?;
        for i in old_indexes() {
            manager.create_index(i).await?;
        }
        Ok(())
    }
}
