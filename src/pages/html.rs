//! A tiny auto-escaping HTML builder (S18).
//!
//! [`Html`] can only be made from escaped text ([`Html::text`], [`prose`]), from `'static` literals written
//! in the source ([`Html::lit`]), or by combining other `Html` values ([`el`], [`void`], [`Html::push`]).
//! Its field is private to this module, so a `String` holding outside data cannot become markup by
//! accident: forgetting to escape is a type error.

use std::fmt;

/// A fragment of HTML that is safe to send: every piece of outside data in it has been escaped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Html(String);

impl Html {
    /// An empty fragment.
    pub const fn new() -> Self {
        Html(String::new())
    }

    /// Outside data as text: `& < > " '` are escaped, so it is safe in element content and in quoted
    /// attribute values.
    pub fn text(s: &str) -> Self {
        Html(escape(s))
    }

    /// Trusted markup written in the source code. Never pass anything built at run time.
    pub fn lit(s: &'static str) -> Self {
        Html(s.to_owned())
    }

    /// Appends `other` and returns the result (builder style).
    #[must_use]
    pub fn push(mut self, other: Html) -> Self {
        self.0.push_str(&other.0);
        self
    }

    /// Appends `other` in place.
    pub fn append(&mut self, other: Html) {
        self.0.push_str(&other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Html {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromIterator<Html> for Html {
    fn from_iter<I: IntoIterator<Item = Html>>(iter: I) -> Self {
        let mut out = Html::new();
        for h in iter {
            out.append(h);
        }
        out
    }
}

/// Escapes `& < > " '` for use in element content and in quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn open_tag(out: &mut String, tag: &'static str, attrs: &[(&'static str, &str)]) {
    out.push('<');
    out.push_str(tag);
    for (name, value) in attrs {
        out.push(' ');
        out.push_str(name);
        out.push_str("=\"");
        out.push_str(&escape(value));
        out.push('"');
    }
    out.push('>');
}

/// `<tag name="value"…>children</tag>`. Tag and attribute names are source literals; values are escaped.
pub fn el(tag: &'static str, attrs: &[(&'static str, &str)], children: Html) -> Html {
    let mut out = String::with_capacity(children.0.len() + 32);
    open_tag(&mut out, tag, attrs);
    out.push_str(&children.0);
    out.push_str("</");
    out.push_str(tag);
    out.push('>');
    Html(out)
}

/// A void element (`<input …>`, `<meta …>`, `<link …>`): no children, no closing tag.
pub fn void(tag: &'static str, attrs: &[(&'static str, &str)]) -> Html {
    let mut out = String::new();
    open_tag(&mut out, tag, attrs);
    Html(out)
}

/// Outside text with `` `inline code` `` spans turned into `<code>` elements; everything else is
/// escaped exactly like [`Html::text`]. An unpaired backtick stays a literal backtick.
pub fn prose(s: &str) -> Html {
    let mut out = Html::new();
    let mut rest = s;
    while let Some(start) = rest.find('`') {
        let after = &rest[start + 1..];
        let Some(len) = after.find('`') else { break };
        out.append(Html::text(&rest[..start]));
        out.append(el("code", &[], Html::text(&after[..len])));
        rest = &after[len + 1..];
    }
    out.append(Html::text(rest));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_the_five_characters() {
        assert_eq!(
            escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn attribute_values_are_escaped() {
        let h = void("input", &[("value", "\"><script>alert(1)</script>")]);
        assert_eq!(
            h.as_str(),
            "<input value=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\">"
        );
    }

    #[test]
    fn element_children_are_not_escaped_twice() {
        let h = el(
            "p",
            &[],
            Html::text("a & b").push(el("b", &[], Html::text("<c>"))),
        );
        assert_eq!(h.as_str(), "<p>a &amp; b<b>&lt;c&gt;</b></p>");
    }

    #[test]
    fn prose_turns_backticks_into_code_and_escapes_inside() {
        assert_eq!(
            prose("set `a<b>` & `c`").as_str(),
            "set <code>a&lt;b&gt;</code> &amp; <code>c</code>"
        );
        assert_eq!(prose("odd ` <x>").as_str(), "odd ` &lt;x&gt;");
        assert_eq!(prose("").as_str(), "");
    }

    #[test]
    fn collects() {
        let h: Html = ["<", ">"].iter().map(|s| Html::text(s)).collect();
        assert_eq!(h.as_str(), "&lt;&gt;");
    }
}
