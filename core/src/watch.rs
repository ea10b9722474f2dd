//! Driving a watch stream (a `reflector` or `watcher`) until shutdown: the one loop behind
//! the operator's endpoint watch and the facade's job cache.

use std::fmt::Display;

use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

/// Polls `stream` until it ends or `stop` is cancelled. Errors are logged as `what`
/// (the stream backs off and retries by itself); `after` sees every event.
pub async fn drive<T, E: Display>(
    stream: impl Stream<Item = Result<T, E>>,
    what: &str,
    stop: CancellationToken,
    mut after: impl FnMut(&T),
) {
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            ev = stream.next() => match ev {
                None => break,
                Some(Err(e)) => tracing::warn!(error = %e, "watching {what}"),
                Some(Ok(ev)) => after(&ev),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sees_each_event_until_the_stream_ends_or_stop() {
        let events = futures_util::stream::iter([Ok::<_, String>(1), Err("boom".into()), Ok(3)]);
        let mut seen = Vec::new();
        drive(events, "numbers", CancellationToken::new(), |n| seen.push(*n)).await;
        assert_eq!(seen, [1, 3], "errors are logged and skipped");

        let stop = CancellationToken::new();
        stop.cancel();
        let mut seen = 0;
        drive(futures_util::stream::pending::<Result<(), String>>(), "nothing", stop, |_| seen += 1).await;
        assert_eq!(seen, 0);
    }
}
