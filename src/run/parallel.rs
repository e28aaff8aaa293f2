//! Running one step on many hosts at once, at most `--parallel` at a time.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;

/// Runs `f` for every item with at most `limit` at once, keeping the input order.
pub async fn bounded<T, R, F, Fut>(items: Vec<T>, limit: usize, f: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = R>,
{
    let sem = Arc::new(Semaphore::new(limit.max(1)));
    let futures = items.into_iter().map(|item| {
        let sem = sem.clone();
        let fut = f(item);
        async move {
            let _permit = sem.acquire().await;
            fut.await
        }
    });
    futures::future::join_all(futures).await
}
