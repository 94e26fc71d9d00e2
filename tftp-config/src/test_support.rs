//! Test fixtures: a real SQLite-backed directory, and a small XML tree to parse output back.

use std::sync::Arc;

use quick_xml::events::Event;
use quick_xml::Reader;
use sipreg_store::{Device, Directory, Line, Node, SqliteStore, Store, User};

/// A directory over a temp SQLite file with user `jdoe`, two nodes and two devices.
pub(crate) struct Fixture {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) store: Arc<SqliteStore>,
    pub(crate) directory: Directory,
}

pub(crate) fn node(name: &str, host: &str, base: u16) -> Node {
    Node {
        name: name.into(),
        host: host.into(),
        sip_port: base,
        secured_sip_port: base + 1,
        sip_oauth_port: base + 30,
        sip_mra_oauth_port: base + 31,
    }
}

pub(crate) async fn fixture(cluster_oauth: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).unwrap());
    store
        .create_user(&User {
            id: "jdoe".into(),
            password_hash: String::new(),
            created_at: 0,
        })
        .await
        .unwrap();
    store.set_oauth_mode(cluster_oauth).await.unwrap();
    store
        .upsert_node(&node("a-pub", "10.0.0.1", 5060))
        .await
        .unwrap();
    store
        .upsert_node(&node("b-sub", "10.0.0.2", 6060))
        .await
        .unwrap();
    store
        .create_device(&Device {
            name: "CSFjdoe".into(),
            owner: "jdoe".into(),
            lines: vec![
                Line {
                    dn: "1010".into(),
                    display_name: Some("J. <Doe> & \"Co\" 'x'\u{1}".into()),
                },
                Line {
                    dn: "1011".into(),
                    display_name: None,
                },
            ],
            oauth: true,
            updated_at: 1,
            model: String::new(),
            profile: String::new(),
        })
        .await
        .unwrap();
    store
        .create_device(&Device {
            name: "SEP001122334455".into(),
            owner: "jdoe".into(),
            lines: vec![Line {
                dn: "1012".into(),
                display_name: None,
            }],
            oauth: false,
            updated_at: 1,
            model: String::new(),
            profile: String::new(),
        })
        .await
        .unwrap();
    let directory = Directory::load(store.as_ref()).await.unwrap();
    Fixture {
        _dir: dir,
        store,
        directory,
    }
}

/// An element with its attributes, text and children, in document order.
#[derive(Debug, Default)]
pub(crate) struct El {
    pub(crate) name: String,
    pub(crate) attrs: Vec<(String, String)>,
    pub(crate) text: String,
    pub(crate) children: Vec<El>,
}

impl El {
    /// The only child called `name`; panics if there is none or several.
    pub(crate) fn one(&self, name: &str) -> &El {
        let found: Vec<_> = self.all(name).collect();
        assert_eq!(
            found.len(),
            1,
            "<{}> has {} <{name}>",
            self.name,
            found.len()
        );
        found[0]
    }

    pub(crate) fn all(&self, name: &str) -> std::vec::IntoIter<&El> {
        let found: Vec<&El> = self.children.iter().filter(|c| c.name == name).collect();
        found.into_iter()
    }

    /// Text of the path of single children below this element.
    pub(crate) fn at(&self, path: &[&str]) -> &str {
        path.iter().fold(self, |el, p| el.one(p)).text.as_str()
    }

    pub(crate) fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn child_names(&self) -> Vec<&str> {
        self.children.iter().map(|c| c.name.as_str()).collect()
    }
}

/// Parses a whole document into its root element, checking well-formedness along the way.
pub(crate) fn parse(xml: &str) -> El {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<El> = vec![El::default()];
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) => stack.push(element(&e)),
            Event::Empty(e) => {
                let el = element(&e);
                stack.last_mut().unwrap().children.push(el);
            }
            Event::End(_) => {
                let mut el = stack.pop().unwrap();
                // Whitespace between child elements is indentation, not content.
                if !el.children.is_empty() && el.text.trim().is_empty() {
                    el.text.clear();
                }
                stack.last_mut().unwrap().children.push(el);
            }
            Event::Text(t) => stack
                .last_mut()
                .unwrap()
                .text
                .push_str(&t.decode().unwrap()),
            Event::GeneralRef(r) => {
                let raw = format!("&{};", r.decode().unwrap());
                let resolved = quick_xml::escape::unescape(&raw).unwrap().into_owned();
                stack.last_mut().unwrap().text.push_str(&resolved);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(stack.len(), 1, "unbalanced document");
    stack[0].text.clear();
    let mut doc = stack.pop().unwrap();
    assert_eq!(doc.children.len(), 1, "exactly one root element");
    doc.children.pop().unwrap()
}

fn element(e: &quick_xml::events::BytesStart<'_>) -> El {
    El {
        name: String::from_utf8(e.name().as_ref().to_vec()).unwrap(),
        attrs: e
            .attributes()
            .map(|a| {
                let a = a.unwrap();
                (
                    String::from_utf8(a.key.as_ref().to_vec()).unwrap(),
                    a.unescape_value().unwrap().into_owned(),
                )
            })
            .collect(),
        ..El::default()
    }
}
