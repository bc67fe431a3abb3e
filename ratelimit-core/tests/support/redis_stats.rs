//! What a Redis server counted (`INFO commandstats`): shared by the Redis tests and the Redis
//! benchmark, which count the commands a decision or a settlement sends.

#![allow(dead_code)] // each includer uses a part

/// Commands clients sent (`EVALSHA`, `EVAL`, `SCRIPT`), and all commands Redis ran, the
/// script's own `TIME`, `GET` and `SET` included (`INFO commandstats` counts both).
pub async fn commands(url: &str) -> (u64, u64) {
    let stats = commandstats(url).await;
    let sent = ["cmdstat_evalsha:", "cmdstat_eval:", "cmdstat_script"];
    let client_sent = stats
        .iter()
        .filter(|(name, _)| sent.iter().any(|s| name.starts_with(s)))
        .map(|(_, calls)| calls)
        .sum();
    let all = stats
        .iter()
        .filter(|(name, _)| !name.starts_with("cmdstat_info:"))
        .map(|(_, calls)| calls)
        .sum();
    (client_sent, all)
}

/// How many scripts Redis has run (`EVALSHA` and `EVAL`).
pub async fn script_calls(url: &str) -> u64 {
    commandstats(url)
        .await
        .iter()
        .filter(|(name, _)| {
            name.starts_with("cmdstat_evalsha:") || name.starts_with("cmdstat_eval:")
        })
        .map(|(_, calls)| calls)
        .sum()
}

/// How many times Redis ran each command clients sent or scripts called, by its name in
/// lower case (`evalsha`, `zrem`, `get`), `info` left out.
pub async fn calls(url: &str) -> std::collections::BTreeMap<String, u64> {
    commandstats(url)
        .await
        .into_iter()
        .filter_map(|(line, calls)| {
            let name = line.strip_prefix("cmdstat_")?.split(':').next()?.to_owned();
            (name != "info").then_some((name, calls))
        })
        .collect()
}

/// Each `cmdstat_<command>:` line with its `calls=`.
async fn commandstats(url: &str) -> Vec<(String, u64)> {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_"))
        .filter_map(|l| {
            let calls = l.split("calls=").nth(1)?.split(',').next()?.parse().ok()?;
            Some((l.to_owned(), calls))
        })
        .collect()
}
