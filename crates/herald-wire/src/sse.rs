//! An incremental parser of `text/event-stream` (server-sent events), for clients of
//! `GET /v1/stream`: the CLI's `tail`, the tests, and the client library.
//!
//! It exists here, beside the wire types, because reading Herald's stream correctly needs
//! more than splitting lines: frames that carry only an `id:` move the resume position
//! without delivering an event, comments are heartbeats, and a frame may arrive split over
//! any number of network reads. It follows the WHATWG parsing rules (`\n`, `\r\n` or `\r`
//! line ends, one optional space after the colon, `data:` lines joined with `\n`).

/// One dispatched frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    /// The `id:` field, when the frame had one.
    pub id: Option<String>,
    /// The `event:` field (`None` means the default, `message`).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n` (empty for id-only frames).
    pub data: String,
    /// The `retry:` field, in milliseconds.
    pub retry: Option<u64>,
}

/// Feed it bytes as they arrive; take complete frames out.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    cur: Frame,
    has_data: bool,
    touched: bool,
    skip_lf: bool,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Adds bytes and returns every frame they complete. Comments (`: ping`) are consumed
    /// silently. A frame with neither data nor any field is not returned.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.skip_lf {
                self.skip_lf = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.skip_lf = b == b'\r';
                    let line = std::mem::take(&mut self.buf);
                    self.line(&line, &mut out);
                }
                _ => self.buf.push(b),
            }
        }
        out
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<Frame>) {
        if line.is_empty() {
            if self.touched {
                out.push(std::mem::take(&mut self.cur));
            }
            self.has_data = false;
            self.touched = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.cur.data.push('\n');
                }
                self.cur.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.cur.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.cur.id = Some(value.to_owned()),
            "retry" => {
                if let Ok(ms) = value.parse() {
                    self.cur.retry = Some(ms);
                }
            }
            _ => return,
        }
        self.touched = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere() {
        let text = "retry: 2000\n\nid: 5\n\n: ping\n\nid: 6\r\nevent: import.failed\r\ndata: {\"a\":\ndata:1}\r\n\r\nevent: reset\rdata: x\r\r";
        for split in 0..text.len() {
            let mut p = Parser::new();
            let mut frames = p.feed(&text.as_bytes()[..split]);
            frames.extend(p.feed(&text.as_bytes()[split..]));
            assert_eq!(frames.len(), 4, "split at {split}: {frames:?}");
            assert_eq!(frames[0].retry, Some(2000));
            assert_eq!(frames[1].id.as_deref(), Some("5"));
            assert_eq!(frames[1].data, "");
            assert_eq!(frames[2].id.as_deref(), Some("6"));
            assert_eq!(frames[2].event.as_deref(), Some("import.failed"));
            assert_eq!(frames[2].data, "{\"a\":\n1}");
            assert_eq!(frames[3].event.as_deref(), Some("reset"));
            assert_eq!(frames[3].data, "x");
        }
    }
}
