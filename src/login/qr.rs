//! A QR code of the device login's link, drawn with Unicode half blocks, so a phone
//! can open it from a terminal (an SSH session, `kubectl exec`). Only on a terminal:
//! in a log or a pipe it is noise.

use std::io::IsTerminal;

use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;

/// The code for `link` when stdout is a terminal; `None` otherwise or when the link is
/// too long to encode.
pub fn render(link: &str) -> Option<String> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    draw(link)
}

/// Light modules on dark, as terminals mostly are; scanners read either way.
fn draw(link: &str) -> Option<String> {
    let code = QrCode::new(link.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .build(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_drawn_as_a_square_of_half_blocks() {
        let text = draw("http://127.0.0.1:8657/device?user_code=BCDF-GHJK").unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let width = lines[0].chars().count();
        // 21 + 4k modules plus a 4-module quiet zone each side; two rows a line.
        assert!(width >= 29 && (width - 29).is_multiple_of(4), "{text}");
        assert!(lines.iter().all(|l| l.chars().count() == width));
        assert_eq!(lines.len(), width.div_ceil(2));
        assert!(text.chars().all(|c| " ▀▄█\n".contains(c)), "{text}");
        assert!(
            draw(&"x".repeat(8000)).is_none(),
            "too long for any QR version"
        );
    }
}
