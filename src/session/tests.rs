use std::fs::File;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use parquet::arrow::ArrowWriter;

use super::*;

/// Writes a step file valid at `micros` where `uqcast run` would, below
/// `table`: one row of `valid_time` and `t2m_mean`.
fn write_step(table: &Path, micros: i64) {
    let (name, folder) = crate::job::store::step_name(micros).unwrap();
    let batch = crate::job::steps::tests::batch(&[(micros, 0.5)]);
    let dir = table.join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    let file = File::create(dir.join(name)).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

async fn count(ctx: &SessionContext, sql: &str) -> i64 {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let column = batches[0].column(0).as_primitive::<Int64Type>();
    column.value(0)
}

/// 2020-01-01T00:00Z plus `hours`, in microseconds.
fn hours_into_2020(hours: i64) -> i64 {
    1_577_836_800_000_000 + hours * 3_600_000_000
}

#[tokio::test]
async fn each_scan_lists_the_table_as_it_is_then() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("forecast");
    write_step(&table, hours_into_2020(0));
    let ctx = new_context();
    let location = table.display().to_string();
    register_tables(
        &ctx,
        &[TableArg {
            name: "f".into(),
            location,
        }],
    )
    .await
    .unwrap();
    let january = "SELECT count(*) FROM f WHERE valid_time >= '2020-01-01T00:00:00Z' \
                   AND valid_time < '2020-02-01T00:00:00Z'";
    let all = "SELECT count(*) FROM f";
    assert_eq!((count(&ctx, january).await, count(&ctx, all).await), (1, 1));
    // A step a run writes while the session is open (the same month, and
    // the next) is in its next query: no scan reuses an earlier listing.
    write_step(&table, hours_into_2020(6));
    write_step(&table, hours_into_2020(31 * 24));
    assert_eq!((count(&ctx, january).await, count(&ctx, all).await), (2, 3));
}
