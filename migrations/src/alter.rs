//! Column changes shared by the migrations that alter existing tables
//! (SQLite takes one alteration per statement, so each is its own), and
//! the plain index statement several migrations create.

use sea_orm_migration::prelude::*;

pub(crate) async fn rename(
    manager: &SchemaManager<'_>,
    table: &'static str,
    from: &'static str,
    to: &'static str,
) -> Result<(), DbErr> {
    manager
        .alter_table(
            Table::alter()
                .table(table)
                .rename_column(from, to)
                .to_owned(),
        )
        .await
}

pub(crate) async fn add(
    manager: &SchemaManager<'_>,
    table: &'static str,
    col: ColumnDef,
) -> Result<(), DbErr> {
    let mut col = col;
    manager
        .alter_table(Table::alter().table(table).add_column(&mut col).to_owned())
        .await
}

pub(crate) async fn drop_col(
    manager: &SchemaManager<'_>,
    table: &'static str,
    col: &str,
) -> Result<(), DbErr> {
    manager
        .alter_table(
            Table::alter()
                .table(table)
                .drop_column(Alias::new(col))
                .to_owned(),
        )
        .await
}

/// `CREATE INDEX name ON table (cols…)`.
pub(crate) fn index(
    table: &'static str,
    name: &'static str,
    cols: &[&'static str],
) -> IndexCreateStatement {
    let mut i = Index::create();
    i.name(name).table(table);
    for c in cols {
        i.col(*c);
    }
    i.to_owned()
}
