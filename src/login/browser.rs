//! Opening the user's browser at the authorization URL: `open` on macOS, `xdg-open`
//! elsewhere. Whether it worked is only a hint, so the URL is always printed too.

use std::process::Stdio;
use std::time::Duration;

/// How long the opener may take to say whether it worked; some stay until the browser
/// they started exits, and are then left running.
const OPENER_WAIT: Duration = Duration::from_secs(5);

/// Asks the desktop to open `url`; `Err` says why it could not.
pub async fn open(url: &str) -> Result<(), String> {
    let program = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let mut child = tokio::process::Command::new(program)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    match tokio::time::timeout(OPENER_WAIT, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{program} failed ({status})")),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Err(_) => Ok(()),
    }
}
