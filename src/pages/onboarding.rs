//! The onboarding page at `/_headgate/onboarding`: (1) pick your Headscale user (or skip), (2) connect your
//! first device (the install hint for the browser's OS, `tailscale up --login-server …`, and a one-time key
//! when the role may create keys for the person's own linked user), (3) wait for the first device (a
//! `<meta http-equiv="refresh">`, no script). People without `ui_access` get one page asking them to ask an
//! administrator for access, with the same device instructions.

use super::html::{Html, el, prose, void};
use super::{footer, layout, mark};

/// How often the waiting step reloads itself (seconds).
pub const REFRESH_SECS: u32 = 5;

/// The operating system a `User-Agent` names, for the install hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Os {
    Windows,
    MacOs,
    Linux,
    Ios,
    Android,
    Other,
}

impl Os {
    pub fn name(self) -> &'static str {
        match self {
            Os::Windows => "Windows",
            Os::MacOs => "macOS",
            Os::Linux => "Linux",
            Os::Ios => "iOS",
            Os::Android => "Android",
            Os::Other => "your device",
        }
    }
}

/// The OS of a browser's `User-Agent` (mobile first: Android's says Linux, iOS's says "like Mac OS X").
pub fn os_from_user_agent(ua: &str) -> Os {
    let ua = ua.to_ascii_lowercase();
    if ua.contains("iphone") || ua.contains("ipad") || ua.contains("ipod") {
        Os::Ios
    } else if ua.contains("android") {
        Os::Android
    } else if ua.contains("windows") {
        Os::Windows
    } else if ua.contains("macintosh") || ua.contains("mac os x") {
        Os::MacOs
    } else if ua.contains("linux") || ua.contains("x11") || ua.contains("cros") {
        Os::Linux
    } else {
        Os::Other
    }
}

/// Which step of the onboarding to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Link,
    Device,
    Wait,
}

impl Step {
    pub fn from_query(s: &str) -> Option<Step> {
        match s {
            "link" => Some(Step::Link),
            "device" => Some(Step::Device),
            "wait" => Some(Step::Wait),
            _ => None,
        }
    }
    fn number(self) -> u8 {
        match self {
            Step::Link => 1,
            Step::Device => 2,
            Step::Wait => 3,
        }
    }
}

/// The person's link, as the page shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkView<'a> {
    None,
    /// Picked, waiting for an administrator: grants nothing yet.
    Pending {
        name: &'a str,
    },
    Linked {
        name: &'a str,
    },
}

/// What a pick does here (S4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PickMode {
    /// `onboarding.self_link = "off"`: no picking.
    Off,
    /// The pick waits for an administrator.
    Approve,
    /// The pick applies at once (`allow`, or the owner / a `write_users` holder).
    Immediate,
}

/// A Headscale user the person may pick (already filtered by S4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub name: String,
    pub email: String,
}

/// A message shown at the top of the card.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice<'a> {
    Info(&'a str),
    Error(&'a str),
}

/// A pre-auth key just created for the person: shown once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewKey<'a> {
    pub key: &'a str,
    pub expires: &'a str,
}

/// The waiting step's view of the person's devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Devices<'a> {
    /// Not linked (or the link is pending): headgate cannot tell which devices are the person's.
    Unknown,
    /// Headscale could not be asked just now.
    Unavailable,
    None,
    First {
        name: &'a str,
        count: usize,
    },
}

#[derive(Clone, Debug)]
pub struct OnboardingPage<'a> {
    pub step: Step,
    /// The person's display name.
    pub who: &'a str,
    /// `false`: the member variant ("ask an administrator for access").
    pub ui_access: bool,
    pub link: LinkView<'a>,
    pub pick: PickMode,
    pub candidates: &'a [Candidate],
    /// Headscale could not list its users (the pick list is then empty).
    pub candidates_unavailable: bool,
    pub os: Os,
    /// `headscale.public_url`.
    pub login_server: &'a str,
    /// The role may create keys, but the link is not (yet) effective.
    pub key_needs_link: bool,
    /// Offer the "create a one-time key" button.
    pub key_button: bool,
    pub new_key: Option<NewKey<'a>>,
    pub devices: Devices<'a>,
    pub notice: Option<Notice<'a>>,
    pub csrf_token: &'a str,
    /// The validated return target (hidden field and step links).
    pub rd: &'a str,
    pub path: &'a str,
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn step_href(page: &OnboardingPage<'_>, step: &str) -> String {
    format!("{}?step={step}&rd={}", page.path, enc(page.rd))
}

fn hidden(name: &'static str, value: &str) -> Html {
    void(
        "input",
        &[("type", "hidden"), ("name", name), ("value", value)],
    )
}

/// A POST form with the session token, the return target and `action`.
fn action_form(page: &OnboardingPage<'_>, action: &str, inner: Html) -> Html {
    el(
        "form",
        &[("method", "post"), ("action", page.path)],
        hidden("csrf", page.csrf_token)
            .push(hidden("rd", page.rd))
            .push(hidden("action", action))
            .push(inner),
    )
}

fn button(class: &'static str, label: &str) -> Html {
    el(
        "button",
        &[("class", class), ("type", "submit")],
        Html::text(label),
    )
}

fn link_button(class: &'static str, href: &str, label: &str) -> Html {
    el("a", &[("class", class), ("href", href)], Html::text(label))
}

fn notice(n: Notice<'_>) -> Html {
    match n {
        Notice::Info(t) => el(
            "div",
            &[("class", "notice info"), ("role", "status")],
            el("p", &[], prose(t)),
        ),
        Notice::Error(t) => el(
            "div",
            &[("class", "notice error"), ("role", "alert")],
            el("p", &[], prose(t)),
        ),
    }
}

fn skip_all(page: &OnboardingPage<'_>, label: &str) -> Html {
    action_form(page, "skip", button("button link", label))
}

/// The link section: the current link, or the pick form.
fn link_section(page: &OnboardingPage<'_>) -> Html {
    match page.link {
        LinkView::Linked { name } => el(
            "div",
            &[("class", "notice info"), ("role", "status")],
            el("strong", &[], Html::lit("Linked"))
                .push(el(
                    "p",
                    &[],
                    Html::lit("Your account is linked to the Headscale user ")
                        .push(el("code", &[], Html::text(name)))
                        .push(Html::lit(".")),
                )),
        ),
        LinkView::Pending { name } => el(
            "div",
            &[("class", "notice warning"), ("role", "status")],
            el("strong", &[], Html::lit("Waiting for an administrator"))
                .push(el(
                    "p",
                    &[],
                    Html::lit("You picked the Headscale user ")
                        .push(el("code", &[], Html::text(name)))
                        .push(Html::lit(
                            ". An administrator must approve this before it takes effect; until then it \
                             grants nothing.",
                        )),
                )),
        ),
        LinkView::None => match page.pick {
            PickMode::Off => el(
                "p",
                &[],
                Html::lit(
                    "Your account is not linked to a Headscale user yet. An administrator can link it for you.",
                ),
            ),
            _ if page.candidates_unavailable => el(
                "div",
                &[("class", "notice error"), ("role", "alert")],
                el(
                    "p",
                    &[],
                    Html::lit(
                        "Headscale could not be asked for its users just now. Try again in a moment, or skip \
                         this step.",
                    ),
                ),
            ),
            _ if page.candidates.is_empty() => el(
                "p",
                &[],
                Html::lit(
                    "No Headscale user is available for you to pick. An administrator can link your account \
                     later; you can skip this step.",
                ),
            ),
            mode => {
                let mut list = Html::new();
                for (i, c) in page.candidates.iter().enumerate() {
                    let id = format!("hs-user-{i}");
                    let mut attrs: Vec<(&'static str, &str)> = vec![
                        ("type", "radio"),
                        ("id", &id),
                        ("name", "headscale_user_id"),
                        ("value", &c.id),
                        ("required", ""),
                    ];
                    if page.candidates.len() == 1 {
                        attrs.push(("checked", ""));
                    }
                    let mut label = el("span", &[("class", "choice-name")], Html::text(&c.name));
                    if !c.email.is_empty() {
                        label.append(el("span", &[("class", "choice-meta")], Html::text(&c.email)));
                    }
                    list.append(el(
                        "li",
                        &[],
                        void("input", &attrs).push(el("label", &[("for", &id)], label)),
                    ));
                }
                let note = match mode {
                    PickMode::Approve => el(
                        "p",
                        &[("class", "help")],
                        Html::lit(
                            "An administrator approves your pick before it takes effect; until then it grants \
                             nothing.",
                        ),
                    ),
                    _ => Html::new(),
                };
                el(
                    "p",
                    &[],
                    Html::lit(
                        "No Headscale user matched your account. If one of these is yours, pick it; otherwise \
                         skip this step.",
                    ),
                )
                .push(action_form(
                    page,
                    "pick",
                    el("ul", &[("class", "choices")], list)
                        .push(note)
                        .push(button("button primary", "This is me")),
                ))
            }
        },
    }
}

fn install_hint(os: Os) -> Html {
    let (text, cmd): (&str, Option<&str>) = match os {
        Os::Windows => (
            "Install the Tailscale client for Windows (from tailscale.com/download), then run this in a \
             terminal:",
            None,
        ),
        Os::MacOs => (
            "Install the Tailscale client for macOS (from the Mac App Store, or with Homebrew), then run this \
             in a terminal:",
            Some("brew install --cask tailscale"),
        ),
        Os::Linux => (
            "Install Tailscale with your package manager or the install script, then run the command below:",
            Some("curl -fsSL https://tailscale.com/install.sh | sh"),
        ),
        Os::Ios => (
            "Install the Tailscale app from the App Store. In the app, open the account menu, choose \
             \"Use a custom coordination server\" and enter the address below. On a computer, run:",
            None,
        ),
        Os::Android => (
            "Install the Tailscale app from Google Play. In the app, open the menu, choose \"Change server\" \
             (\"Use an alternate server\") and enter the address below. On a computer, run:",
            None,
        ),
        Os::Other => (
            "Install the Tailscale client for your device (tailscale.com/download), then run:",
            None,
        ),
    };
    let mut out = el("p", &[("class", "os-hint")], prose(text));
    if let Some(c) = cmd {
        out.append(el("pre", &[], el("code", &[], Html::text(c))));
    }
    out
}

/// Install hint, the generic command, and the key (button or the key just made).
fn device_section(page: &OnboardingPage<'_>) -> Html {
    let up = format!("tailscale up --login-server {}", page.login_server);
    let mut out = el(
        "p",
        &[("class", "status")],
        Html::text(&format!("Detected: {}", page.os.name())),
    )
    .push(install_hint(page.os))
    .push(el(
        "pre",
        &[],
        el("code", &[("class", "login-command")], Html::text(&up)),
    ))
    .push(el(
        "p",
        &[("class", "help")],
        Html::lit("Server address: ").push(el("code", &[], Html::text(page.login_server))),
    ));
    if let Some(k) = page.new_key {
        let with_key = format!("{up} --authkey {}", k.key);
        out.append(el(
            "div",
            &[("class", "notice info new-key"), ("role", "status")],
            el("strong", &[], Html::lit("Your one-time key"))
                .push(el(
                    "p",
                    &[],
                    Html::text(&format!(
                        "Shown only this once. It registers one device as yours and expires {}.",
                        k.expires
                    )),
                ))
                .push(el(
                    "pre",
                    &[],
                    el("code", &[("class", "secret")], Html::text(k.key)),
                ))
                .push(el(
                    "pre",
                    &[],
                    el("code", &[("class", "login-command")], Html::text(&with_key)),
                )),
        ));
    } else if page.key_button {
        out.append(action_form(
            page,
            "create_key",
            el(
                "p",
                &[("class", "help")],
                Html::lit(
                    "Or sign the device in without a browser: create a one-time key for your own Headscale \
                     user (single use, no tags, valid for 1 hour).",
                ),
            )
            .push(button("button secondary", "Create a one-time key")),
        ));
    } else if page.key_needs_link {
        out.append(el(
            "p",
            &[("class", "help")],
            Html::lit(
                "A one-time key is offered here once your account is linked to a Headscale user.",
            ),
        ));
    }
    out
}

fn wait_section(page: &OnboardingPage<'_>) -> Html {
    match page.devices {
        Devices::First { name, count } => {
            let more = if count > 1 {
                format!(" ({count} devices in all)")
            } else {
                String::new()
            };
            el(
                "div",
                &[("class", "notice info device-found"), ("role", "status")],
                el("strong", &[], Html::lit("Device connected")).push(el(
                    "p",
                    &[],
                    Html::lit("Your device ")
                        .push(el("code", &[], Html::text(name)))
                        .push(Html::text(&format!(" is in your tailnet{more}."))),
                )),
            )
        }
        Devices::None => el(
            "p",
            &[("class", "waiting"), ("role", "status")],
            Html::text(&format!(
                "Waiting for your first device to appear in Headscale… this page checks again every {REFRESH_SECS} \
                 seconds."
            )),
        ),
        Devices::Unavailable => el(
            "div",
            &[("class", "notice error"), ("role", "alert")],
            el(
                "p",
                &[],
                Html::text(&format!(
                    "Headscale could not be asked just now; this page tries again every {REFRESH_SECS} seconds."
                )),
            ),
        ),
        Devices::Unknown => el(
            "p",
            &[],
            Html::lit(
                "Your account is not linked to a Headscale user yet, so headgate cannot tell which devices are \
                 yours. Once an administrator links it, your devices show up in Headplane.",
            ),
        ),
    }
}

/// Whether the waiting step should reload itself.
pub fn refreshes(page: &OnboardingPage<'_>) -> bool {
    page.ui_access
        && page.step == Step::Wait
        && matches!(page.devices, Devices::None | Devices::Unavailable)
}

fn progress(step: Step) -> Html {
    let names = [
        "Link your Headscale user",
        "Connect a device",
        "Wait for it",
    ];
    let items: Html = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let current = i as u8 + 1 == step.number();
            let attrs: &[(&'static str, &str)] = if current {
                &[("aria-current", "step"), ("class", "current")]
            } else {
                &[]
            };
            el("li", attrs, Html::text(n))
        })
        .collect();
    el("ol", &[("class", "steps")], items)
}

fn full_page(page: &OnboardingPage<'_>) -> (String, Html) {
    let mut card = mark();
    if let Some(n) = page.notice {
        card.append(notice(n));
    }
    card.append(el(
        "p",
        &[("class", "status")],
        Html::text(&format!("Step {} of 3", page.step.number())),
    ));
    let title;
    match page.step {
        Step::Link => {
            title = "Link your Headscale user";
            card.append(el("h1", &[], Html::lit("Link your Headscale user")));
            card.append(el(
                "p",
                &[("class", "lead")],
                Html::text(&format!(
                    "Welcome, {}. Your devices belong to a Headscale user; linking it to your account lets \
                     you manage your own devices here.",
                    page.who
                )),
            ));
            card.append(link_section(page));
            let next = match page.link {
                LinkView::None => "Skip this step",
                _ => "Next",
            };
            card.append(el(
                "div",
                &[("class", "actions")],
                link_button("button secondary", &step_href(page, "device"), next),
            ));
        }
        Step::Device => {
            title = "Connect your first device";
            card.append(el("h1", &[], Html::lit("Connect your first device")));
            card.append(el(
                "p",
                &[("class", "lead")],
                Html::lit("Install Tailscale and point it at this network's coordination server."),
            ));
            card.append(device_section(page));
            card.append(el(
                "div",
                &[("class", "actions")],
                link_button(
                    "button primary",
                    &step_href(page, "wait"),
                    "I ran it: find my device",
                ),
            ));
        }
        Step::Wait => {
            title = "Waiting for your device";
            card.append(el("h1", &[], Html::lit("Waiting for your device")));
            card.append(wait_section(page));
            let (class, label) = match page.devices {
                Devices::First { .. } => ("button primary", "Continue"),
                _ => ("button secondary", "Continue without waiting"),
            };
            card.append(el(
                "div",
                &[("class", "actions")],
                action_form(page, "finish", button(class, label)),
            ));
        }
    }
    card.append(progress(page.step));
    card.append(el(
        "div",
        &[("class", "skip")],
        skip_all(page, "Skip onboarding"),
    ));
    (title.to_string(), card)
}

fn member_page(page: &OnboardingPage<'_>) -> (String, Html) {
    let mut card = mark();
    if let Some(n) = page.notice {
        card.append(notice(n));
    }
    card.append(el("h1", &[], Html::lit("Ask an administrator for access")));
    card.append(el(
        "p",
        &[("class", "lead")],
        Html::text(&format!(
            "You are signed in, {}, but your role does not open the admin interface yet. Ask an administrator \
             to give you access. Meanwhile you can already connect your devices.",
            page.who
        )),
    ));
    card.append(link_section(page));
    card.append(el("h2", &[], Html::lit("Connect a device")));
    card.append(device_section(page));
    card.append(el(
        "div",
        &[("class", "actions")],
        action_form(page, "finish", button("button primary", "Done")),
    ));
    card.append(el(
        "div",
        &[("class", "skip")],
        skip_all(page, "Skip onboarding"),
    ));
    ("Ask an administrator for access".to_string(), card)
}

/// The complete onboarding page.
pub fn render(page: &OnboardingPage<'_>) -> String {
    let (title, card) = if page.ui_access {
        full_page(page)
    } else {
        member_page(page)
    };
    let body = el("main", &[("class", "card wide")], card).push(footer());
    let doc = layout(&format!("{title} · Onboarding"), body);
    if refreshes(page) {
        // The waiting step reloads itself: a `<meta>` refresh needs no script and fits the CSP. `layout`
        // starts the document with a fixed `<head>`, so the first one is the real one.
        doc.replacen(
            "<head>",
            &format!("<head><meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">"),
            1,
        )
    } else {
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{PAYLOADS, assert_escaped, assert_no_bare_ampersand};
    use super::*;

    fn base<'a>(cands: &'a [Candidate]) -> OnboardingPage<'a> {
        OnboardingPage {
            step: Step::Link,
            who: "Alice",
            ui_access: true,
            link: LinkView::None,
            pick: PickMode::Approve,
            candidates: cands,
            candidates_unavailable: false,
            os: Os::Linux,
            login_server: "https://hs.example.com",
            key_needs_link: false,
            key_button: false,
            new_key: None,
            devices: Devices::None,
            notice: None,
            csrf_token: "tok",
            rd: "/admin/",
            path: "/_headgate/onboarding",
        }
    }

    #[test]
    fn os_detection() {
        let cases = [
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
                Os::Windows,
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15",
                Os::MacOs,
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
                Os::Linux,
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15",
                Os::Ios,
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36",
                Os::Android,
            ),
            ("curl/8.0", Os::Other),
            ("", Os::Other),
        ];
        for (ua, os) in cases {
            assert_eq!(os_from_user_agent(ua), os, "{ua}");
        }
    }

    #[test]
    fn every_field_is_escaped() {
        for p in PAYLOADS {
            let cands = vec![Candidate {
                id: p.to_string(),
                name: p.to_string(),
                email: p.to_string(),
            }];
            for step in [Step::Link, Step::Device, Step::Wait] {
                for ui in [true, false] {
                    let mut page = base(&cands);
                    page.step = step;
                    page.ui_access = ui;
                    page.who = p;
                    page.login_server = p;
                    page.rd = p;
                    page.csrf_token = p;
                    page.new_key = Some(NewKey { key: p, expires: p });
                    page.devices = Devices::First { name: p, count: 2 };
                    page.notice = Some(Notice::Error(p));
                    let out = render(&page);
                    assert_escaped(&out, p);
                    assert_no_bare_ampersand(&out);
                    page.link = LinkView::Pending { name: p };
                    let out = render(&page);
                    assert_escaped(&out, p);
                    page.link = LinkView::Linked { name: p };
                    let out = render(&page);
                    assert_escaped(&out, p);
                }
            }
        }
    }

    #[test]
    fn only_the_waiting_step_refreshes_until_a_device_shows() {
        let c = [];
        let mut p = base(&c);
        assert!(!render(&p).contains("http-equiv"));
        p.step = Step::Wait;
        let out = render(&p);
        assert!(out.contains("<head><meta http-equiv=\"refresh\" content=\"5\">"));
        assert_eq!(out.matches("http-equiv").count(), 1);
        p.devices = Devices::First {
            name: "laptop",
            count: 1,
        };
        assert!(!render(&p).contains("http-equiv"));
        p.devices = Devices::Unknown;
        assert!(!render(&p).contains("http-equiv"));
    }

    #[test]
    fn pick_form_and_approval_note() {
        let c = vec![Candidate {
            id: "7".into(),
            name: "bob".into(),
            email: String::new(),
        }];
        let p = base(&c);
        let out = render(&p);
        assert!(out.contains("name=\"headscale_user_id\" value=\"7\""));
        assert!(out.contains("An administrator approves your pick"));
        let mut p = base(&c);
        p.pick = PickMode::Immediate;
        assert!(!render(&p).contains("An administrator approves your pick"));
        p.pick = PickMode::Off;
        assert!(!render(&p).contains("headscale_user_id"));
    }

    #[test]
    fn key_button_only_when_offered() {
        let c = [];
        let mut p = base(&c);
        p.step = Step::Device;
        assert!(!render(&p).contains("create_key"));
        p.key_button = true;
        assert!(render(&p).contains("value=\"create_key\""));
        assert!(render(&p).contains("tailscale up --login-server https://hs.example.com"));
    }
}
