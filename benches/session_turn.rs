//! `session_turn`: one stateful turn through `SessionAgent` with `ScriptedModel` (zero latency)
//! on each store, beside a baseline of the same number of raw round trips with the same client
//! in the same run:
//!
//! - memory: the turn alone (no network);
//! - Redis: the turn (one `HMGET` to load, one `EVALSHA` compare-and-set to save, with a
//!   `ZADD` pipelined only when the session is created; these sessions have no TTL, so no
//!   slide follows the load) beside `GET` + `SET` of the same session bytes on the same client (its shared
//!   multiplexed connection);
//! - PostgreSQL: the turn (one statement to load, one to save) beside a `SELECT` + `UPDATE` of
//!   the same JSONB on the same pool.
//!
//! The session keeps the last 8 messages, so every turn moves the same bytes. Goal: at most two
//! round trips per turn, within 1.3× of the baseline.
//!
//! Criterion measures the baseline and the turn one after the other, seconds apart, and on a
//! noisy VM the machine's state moves between the two by more than the difference being
//! measured (the same binary read 1.1× and 1.5× in two runs). So after criterion's figures each
//! networked backend also gets a paired measurement: seven rounds of 1,000 pairs, each pair one
//! baseline iteration immediately followed by one turn, each timed on its own; the figure
//! printed is the median of the seven per-round ratios (turn time / baseline time). Paired
//! this way, the rounds of one run agree to within a few percent.
//!
//! Needs Redis and PostgreSQL on loopback (`REDIS_URL`, `DATABASE_URL`); a missing one is
//! skipped with a message.
//! Run: `cargo bench --bench session_turn`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkit::model::ScriptedModel;
use agentkit::{Agent, Context, Executor, Invocation};
use agentkit_store::postgres::PostgresSessionStore;
use agentkit_store::redis::RedisSessionStore;
use agentkit_store::{HistoryPolicy, MemorySessionStore, SessionAgent, SessionStore};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;

fn sessions(store: Arc<dyn SessionStore>) -> SessionAgent<Agent> {
    let agent = Agent::builder()
        .model(ScriptedModel::demo())
        .build()
        .unwrap();
    SessionAgent::builder(agent, store)
        .history(HistoryPolicy::LastMessages(8))
        .build()
}

fn turn() -> Invocation {
    Invocation::text("hello there, how are you today?")
        .with_context(Context::new().with_tenant("bench").with_session_id("s-1"))
}

/// Runs a few turns so the session holds its steady-state history; returns its stored body.
fn warm(runtime: &Runtime, agent: &SessionAgent<Agent>) -> String {
    for _ in 0..6 {
        runtime.block_on(agent.execute(turn())).unwrap();
    }
    let session = runtime
        .block_on(agent.store().load("bench", "s-1"))
        .unwrap()
        .unwrap();
    serde_json::to_string(&serde_json::json!({"messages": session.messages, "metadata": {}}))
        .unwrap()
}

fn memory(c: &mut Criterion, runtime: &Runtime) {
    let agent = sessions(Arc::new(MemorySessionStore::new()));
    warm(runtime, &agent);
    c.benchmark_group("session_turn/memory")
        .bench_function("turn", |b| {
            b.to_async(runtime).iter(|| agent.execute(turn()))
        });
}

fn redis(c: &mut Criterion, runtime: &Runtime) {
    let Some(url) = agentkit_testkit::redis_url() else {
        return;
    };
    let store = RedisSessionStore::connect(&url)
        .unwrap()
        .with_prefix(agentkit_testkit::unique("bench"));
    let client = store.client().clone();
    let agent = sessions(Arc::new(store));
    let body = warm(runtime, &agent);
    let timeout = std::time::Duration::from_secs(5);
    let key = agentkit_testkit::unique("bench-raw");
    let raw = || {
        let (client, key, body) = (&client, key.as_str(), body.as_str());
        async move {
            let _: Option<String> = client
                .run(timeout, |mut c| async move {
                    redis::cmd("GET").arg(key).query_async(&mut c).await
                })
                .await
                .unwrap();
            let _: () = client
                .run(timeout, |mut c| async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(body)
                        .query_async(&mut c)
                        .await
                })
                .await
                .unwrap();
        }
    };
    let turn = || async { agent.execute(turn()).await.unwrap() };
    let mut group = c.benchmark_group("session_turn/redis");
    group.bench_function("raw_get_set", |b| b.to_async(runtime).iter(raw));
    group.bench_function("turn", |b| b.to_async(runtime).iter(turn));
    group.finish();
    paired(runtime, "session_turn/redis", raw, turn);
}

fn postgres(c: &mut Criterion, runtime: &Runtime) {
    let Some(url) = agentkit_testkit::database_url() else {
        return;
    };
    let store = runtime
        .block_on(PostgresSessionStore::connect(&url))
        .unwrap()
        .with_namespace(agentkit_testkit::unique("bench"));
    let pool = store.pool().clone();
    let agent = sessions(Arc::new(store));
    let body: serde_json::Value = serde_json::from_str(&warm(runtime, &agent)).unwrap();
    let table = "agentkit_bench_raw";
    runtime.block_on(async {
        let client = pool.get().await.unwrap();
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (id text PRIMARY KEY, body jsonb NOT NULL);
                 INSERT INTO {table} VALUES ('s-1', '{{}}') ON CONFLICT DO NOTHING;"
            ))
            .await
            .unwrap();
    });
    let raw = || async {
        let client = pool.get().await.unwrap();
        let select = client
            .prepare_cached(&format!("SELECT body FROM {table} WHERE id = $1"))
            .await
            .unwrap();
        let update = client
            .prepare_cached(&format!("UPDATE {table} SET body = $2 WHERE id = $1"))
            .await
            .unwrap();
        let row = client.query_one(&select, &[&"s-1"]).await.unwrap();
        let _: serde_json::Value = row.get(0);
        client
            .execute(&update, &[&"s-1", &tokio_postgres::types::Json(&body)])
            .await
            .unwrap();
    };
    let turn = || async { agent.execute(turn()).await.unwrap() };
    let mut group = c.benchmark_group("session_turn/postgres");
    group.bench_function("raw_select_update", |b| b.to_async(runtime).iter(raw));
    group.bench_function("turn", |b| b.to_async(runtime).iter(turn));
    group.finish();
    paired(runtime, "session_turn/postgres", raw, turn);
}

/// Whether criterion's command line selects benchmarks under `group` (no filter selects all).
fn selected(group: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|f| group.contains(f.as_str()))
}

/// Times `raw` and `turn` in interleaved pairs and prints the median of the per-round ratios.
fn paired<R, RF, T, TF>(runtime: &Runtime, group: &str, raw: R, turn: T)
where
    R: Fn() -> RF,
    RF: Future,
    T: Fn() -> TF,
    TF: Future,
{
    if !selected(group) {
        return;
    }
    let quick = std::env::args().any(|a| a == "--test");
    let (rounds, iterations): (usize, u32) = if quick { (1, 10) } else { (7, 1_000) };
    let mut ratios = Vec::with_capacity(rounds);
    let (mut raw_times, mut turn_times): (Vec<Duration>, Vec<Duration>) = (vec![], vec![]);
    for _ in 0..rounds {
        let (base, stateful) = runtime.block_on(async {
            let (mut base, mut stateful) = (Duration::ZERO, Duration::ZERO);
            for _ in 0..iterations {
                let started = Instant::now();
                raw().await;
                let between = Instant::now();
                turn().await;
                base += between - started;
                stateful += between.elapsed();
            }
            (base / iterations, stateful / iterations)
        });
        ratios.push(stateful.as_secs_f64() / base.as_secs_f64());
        raw_times.push(base);
        turn_times.push(stateful);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let micros = |v: &[Duration]| median(v.iter().map(|d| d.as_secs_f64() * 1e6).collect());
    let list: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "{group}/paired: {rounds} rounds of {iterations}: baseline {:.1} µs, turn {:.1} µs (medians); \
         ratios {}; median ratio {:.2}×",
        micros(&raw_times),
        micros(&turn_times),
        list.join(" "),
        median(ratios),
    );
}

fn session_turn(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    memory(c, &runtime);
    redis(c, &runtime);
    postgres(c, &runtime);
}

criterion_group!(benches, session_turn);
criterion_main!(benches);
