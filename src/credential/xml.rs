//! Quickbase XML bodies (`<qdbapi>`): reads the credential elements (`<usertoken>`, `<ticket>`,
//! `<apptoken>`) and the sign-in ones (`<username>`, `<password>`, `<hours>`) that sit directly
//! under the root, remembering where each credential element lies, so it can be cut out and the
//! rest of the body forwarded byte for byte.

use std::ops::Range;

use quick_xml::Reader;
use quick_xml::events::Event;

/// Content types whose bodies are read for credentials.
pub fn is_xml(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let mime = ct.split(';').next().unwrap_or("").trim();
        mime.eq_ignore_ascii_case("application/xml") || mime.eq_ignore_ascii_case("text/xml")
    })
}

/// The elements of interest in one XML body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct XmlBody {
    /// `(element name, text)` of each credential or sign-in element, in order.
    pub fields: Vec<(String, String)>,
    /// Byte ranges of the credential elements, to remove before forwarding.
    credential_spans: Vec<Range<usize>>,
}

pub const CREDENTIAL_ELEMENTS: [&str; 3] = ["usertoken", "ticket", "apptoken"];
const READ_ELEMENTS: [&str; 6] = [
    "usertoken",
    "ticket",
    "apptoken",
    "username",
    "password",
    "hours",
];

impl XmlBody {
    pub fn get(&self, name: &str) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn has_credentials(&self) -> bool {
        !self.credential_spans.is_empty()
    }

    /// `body` without the credential elements; everything else unchanged.
    pub fn without_credentials(&self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len());
        let mut at = 0;
        for span in &self.credential_spans {
            out.extend_from_slice(&body[at..span.start]);
            at = span.end;
        }
        out.extend_from_slice(&body[at..]);
        out
    }
}

/// A body that isn't well-formed XML.
#[derive(Debug, thiserror::Error)]
#[error("malformed XML body: {0}")]
pub struct Malformed(String);

/// Reads an XML body.
pub fn read(body: &[u8]) -> Result<XmlBody, Malformed> {
    let text = std::str::from_utf8(body).map_err(|_| Malformed("not UTF-8".into()))?;
    let mut reader = Reader::from_str(text);
    let mut out = XmlBody::default();
    let mut depth = 0usize;
    let mut roots = 0usize;
    // The element being read: its name, its text so far, where it started.
    let mut current: Option<(String, String, usize)> = None;
    loop {
        let before = offset(reader.buffer_position())?;
        let event = reader
            .read_event()
            .map_err(|e| Malformed(format!("at byte {}: {e}", reader.error_position())))?;
        match event {
            Event::Start(e) => {
                depth += 1;
                if depth == 1 {
                    roots += 1;
                }
                let name = e.local_name().as_ref().to_ascii_lowercase();
                if depth == 2 && READ_ELEMENTS.contains(&name.as_str()) {
                    current = Some((name, String::new(), before));
                }
            }
            Event::Empty(e) => {
                if depth == 0 {
                    roots += 1;
                }
                let name = e.local_name().as_ref().to_ascii_lowercase();
                if depth == 1 && READ_ELEMENTS.contains(&name.as_str()) {
                    let end = offset(reader.buffer_position())?;
                    out.push(name, String::new(), before..end);
                }
            }
            Event::End(_) => {
                if depth == 2
                    && let Some((name, value, start)) = current.take()
                {
                    let end = offset(reader.buffer_position())?;
                    out.push(name, value, start..end);
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(t) => {
                if depth == 0 && !t.trim().is_empty() {
                    return Err(Malformed("text outside the root element".into()));
                }
                if let Some((_, value, _)) = current.as_mut() {
                    value.push_str(&t);
                }
            }
            Event::CData(c) => {
                if let Some((_, value, _)) = current.as_mut() {
                    value.push_str(&c);
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    _ => match &*r {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        other => return Err(Malformed(format!("unknown entity &{other};"))),
                    },
                };
                if let Some((_, value, _)) = current.as_mut() {
                    value.push(resolved);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err(Malformed("unclosed element".into()));
    }
    if roots != 1 {
        return Err(Malformed("expected exactly one root element".into()));
    }
    Ok(out)
}

fn offset(pos: u64) -> Result<usize, Malformed> {
    usize::try_from(pos).map_err(|_| Malformed("too large".into()))
}

impl XmlBody {
    fn push(&mut self, name: String, value: String, span: Range<usize>) {
        if CREDENTIAL_ELEMENTS.contains(&name.as_str()) {
            self.credential_spans.push(span);
        }
        self.fields.push((name, value.trim().to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_and_cut_out() {
        let body = b"<qdbapi>\n  <udata>mydata</udata>\n  <ticket>tgt_abc</ticket>\n  <apptoken>tga_x</apptoken>\n  <field fid=\"8\">value &amp; 1</field>\n</qdbapi>";
        let x = read(body).unwrap();
        assert_eq!(x.get("ticket").collect::<Vec<_>>(), ["tgt_abc"]);
        assert_eq!(x.get("apptoken").collect::<Vec<_>>(), ["tga_x"]);
        let out = String::from_utf8(x.without_credentials(body)).unwrap();
        assert_eq!(
            out,
            "<qdbapi>\n  <udata>mydata</udata>\n  \n  \n  <field fid=\"8\">value &amp; 1</field>\n</qdbapi>"
        );
    }

    #[test]
    fn sign_in_fields_are_read_but_kept() {
        let body = b"<qdbapi><username>a@x.com</username><password>p&amp;w</password><hours>3</hours></qdbapi>";
        let x = read(body).unwrap();
        assert_eq!(x.get("password").next(), Some("p&w"));
        assert!(!x.has_credentials());
        assert_eq!(x.without_credentials(body), body);
    }

    #[test]
    fn nested_elements_are_not_credentials() {
        let body = b"<qdbapi><field><ticket>not-me</ticket></field><usertoken/></qdbapi>";
        let x = read(body).unwrap();
        assert_eq!(x.fields, vec![("usertoken".to_owned(), String::new())]);
        assert_eq!(
            x.without_credentials(body),
            b"<qdbapi><field><ticket>not-me</ticket></field></qdbapi>"
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for bad in [
            &b"<qdbapi><ticket>x</qdbapi>"[..],
            b"<qdbapi>",
            b"not xml",
            b"<a/><b/>",
            b"\xff\xfe",
        ] {
            assert!(read(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(is_xml(Some("text/xml; charset=utf-8")));
        assert!(!is_xml(Some("application/json")));
    }
}
